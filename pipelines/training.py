"""Pieces shared by the training stages (sft, preference): model loading, LoRA config, trainer
arguments that are right on CPU and GPU, and the adapter → merged 16-bit handoff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipes.errors import LatheError
from recipes.schema import ModelConfig, TrainConfig
from registry.stack import merge_adapters, set_eos  # the one merge: the registry re-does it from adapters


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def qlora_quantization(zero3: bool) -> dict[str, Any]:
    """BitsAndBytesConfig fields for QLoRA: 4-bit NF4, double quantization, bf16 compute. Under ZeRO-3
    the packed 4-bit weights are also *stored* as bf16: ZeRO-3 flattens and shards every parameter of a
    group as one dtype, and uint8 storage next to bf16 parameters fails or goes unsharded (the set-up
    PEFT documents for "DeepSpeed ZeRO-3 and QLoRA")."""
    import torch

    fields: dict[str, Any] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                              "bnb_4bit_compute_dtype": torch.bfloat16, "bnb_4bit_use_double_quant": True}
    if zero3:
        fields["bnb_4bit_quant_storage"] = torch.bfloat16
    return fields


def load_model(model_dir: Path, cfg: TrainConfig, model: ModelConfig | None = None, *,
               zero3: bool = False):
    """Training precision: bf16 on a GPU, float32 on CPU (CPU bf16 training is slow and lossy).
    QLoRA loads the base in 4-bit NF4 and needs CUDA; `zero3` when the run shards with ZeRO-3."""
    import torch
    from transformers import AutoModelForCausalLM

    model = model or ModelConfig()
    kwargs: dict[str, Any] = {"trust_remote_code": model.trust_remote_code, "use_safetensors": True}
    if cfg.method == "qlora":
        if not has_cuda():
            raise LatheError("method: qlora needs a CUDA GPU (bitsandbytes 4-bit training); on CPU use method: lora")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**qlora_quantization(zero3))
    kwargs["dtype"] = torch.bfloat16 if has_cuda() else torch.float32
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def lora_config(cfg: TrainConfig):
    """None for full fine-tuning; else a PEFT LoraConfig from the recipe."""
    if cfg.method == "full":
        return None
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      use_rslora=lora.use_rslora, use_dora=lora.use_dora, task_type="CAUSAL_LM")


def common_args(cfg: TrainConfig, output_dir: Path, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments fields shared by SFTConfig and DPOConfig. TRL defaults to bf16=True, which
    fails on CPU ('Your setup doesn't support bf16/gpu'); use_cpu=True is required on CPU."""
    cuda = has_cuda()
    return dict(
        output_dir=str(output_dir), learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        lr_scheduler_kwargs=dict(cfg.lr_scheduler_kwargs), weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        warmup_steps=cfg.warmup_ratio, max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, activation_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps, bf16=cuda, use_cpu=not cuda,
        **_save_and_eval(cfg, has_eval), report_to=["mlflow"] if _mlflow_active() else [],
        # Real tokens, not padding: throughput (train_tokens_per_second) and the fine-tuning API's bill count them.
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, disable_tqdm=False,
    )


def _save_and_eval(cfg: TrainConfig, has_eval: bool) -> dict[str, Any]:
    """Checkpoints and validation during training. Picking the best model needs a checkpoint at every
    evaluation, so `load_best_model_at_end` saves every `eval_steps` (and keeps the best one too)."""
    if cfg.eval_steps and not has_eval:
        raise LatheError("eval_steps needs a validation split: set data.validation_fraction above 0, or give "
                         "data.sft_validation / data.preference_validation")
    out: dict[str, Any] = {"save_strategy": "steps" if cfg.save_steps else "no", "save_steps": cfg.save_steps or 500,
                           "save_total_limit": 2, "eval_strategy": "no"}
    if cfg.eval_steps:
        out |= {"eval_strategy": "steps", "eval_steps": cfg.eval_steps}
    if cfg.load_best_model_at_end:
        out |= {"save_strategy": "steps", "save_steps": cfg.eval_steps, "load_best_model_at_end": True,
                "metric_for_best_model": "eval_loss", "greater_is_better": False}
    return out


def make_trainer(trainer_cls, stage: str, recipe, cfg: TrainConfig, base_dir: Path, args, tokenizer, **data):
    """The stage's TRL trainer: the model to train (each rank's ZeRO-3 shard only, so build `args` first), its
    LoRA config, and the callback that writes the stage's structured events."""
    from pipelines import launch

    model = load_model(base_dir, cfg, recipe.model, zero3=launch.zero_stage(recipe) == 3)
    peft_config = lora_config(cfg)
    if cfg.init_adapter:  # continue a fine-tune: its adapter, trainable, instead of a fresh one
        from peft import PeftModel

        adapter = Path(cfg.init_adapter)
        if not (adapter / "adapter_config.json").is_file() or not (adapter / "adapter_model.safetensors").is_file():
            raise LatheError(f"{stage}.init_adapter {adapter}: not a LoRA adapter folder (adapter_config.json + "
                             "adapter_model.safetensors)")
        model, peft_config = PeftModel.from_pretrained(model, adapter, is_trainable=True), None
    return trainer_cls(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                       callbacks=[stage_events(stage)], **data)


def stage_events(stage: str):
    """A Trainer callback writing the stage's progress as structured events (recipes/events.py): start with the
    total steps, each log with the step and its numbers, each checkpoint, the end with the run's summary."""
    from transformers import TrainerCallback

    from recipes import events

    class StageEvents(TrainerCallback):
        def __init__(self) -> None:
            self.summary: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                events.emit("train_begin", stage, step=state.global_step, total_steps=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "train_loss" in logs and "loss" not in logs:  # the closing summary (mean loss), not a step
                self.summary = events.metric_names(logs)
                return
            events.emit("log", stage, step=state.global_step, total_steps=state.max_steps, epoch=state.epoch,
                        metrics=events.metric_names(logs))

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                events.emit("checkpoint", stage, step=state.global_step,
                            path=str(Path(args.output_dir) / f"checkpoint-{state.global_step}"))

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                events.emit("train_end", stage, step=state.global_step, total_steps=state.max_steps,
                            metrics=self.summary)

    return StageEvents()


def _mlflow_active() -> bool:
    import mlflow

    return mlflow.active_run() is not None


def save_handoff(trainer, cfg: TrainConfig, base_dir: Path, out_dir: Path, dtype: str) -> dict[str, str]:
    """Write the adapter (or full weights) and, when asked, merged 16-bit weights.
    Merging reloads the base in 16-bit, never a 4-bit one."""
    tokenizer = trainer.processing_class
    outputs: dict[str, str] = {"base_model_dir": str(base_dir)}
    # trainer.save_model on EVERY rank: under ZeRO-3 it gathers the sharded weights (collective) and
    # rank 0 writes consolidated 16-bit safetensors; model.save_pretrained would write empty shards.
    if cfg.method == "full":
        model_dir = out_dir / "model"
        trainer.save_model(str(model_dir))
        outputs["model_dir"] = str(model_dir)
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(model_dir)
            set_eos(model_dir, tokenizer)
        return outputs
    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # a PeftModel saves the adapter only
    outputs["adapter_dir"] = str(adapter_dir)
    if cfg.merge:
        outputs["model_dir"] = str(out_dir / "model")
    if not trainer.is_world_process_zero():
        return outputs
    tokenizer.save_pretrained(adapter_dir)
    (adapter_dir / "lathe_base.json").write_text(json.dumps({"base_model_dir": str(base_dir)}) + "\n")
    if cfg.merge:
        from pipelines.launch import end_zero3_init

        end_zero3_init()  # the merge loads a whole base model, not ZeRO-3 shards
        outputs["model_dir"] = str(merge_adapters(base_dir, [adapter_dir], out_dir / "model", dtype))
    return outputs


def train_metrics(trainer, result) -> dict[str, float]:
    """Final loss, throughput and the last logged training values."""
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    tokens = float(trainer.state.num_input_tokens_seen or 0)
    runtime = metrics.get("train_runtime") or 0.0
    if tokens and runtime:
        metrics["train_tokens_per_second"] = tokens / runtime
    metrics["train_tokens"] = tokens
    import resource

    import torch

    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    history = [h for h in trainer.state.log_history if "loss" in h]
    if history:
        metrics["first_logged_loss"] = float(history[0]["loss"])
        metrics["last_logged_loss"] = float(history[-1]["loss"])
    return metrics


def finish(trainer, result, *, stage: str, cfg: TrainConfig, dtype: str, base_dir: Path, out: Path,
           inputs: dict[str, Any], evaluate: bool, extra_metrics: dict[str, float] | None = None) -> dict[str, str]:
    """After `trainer.train()`: metrics (+ validation loss), the handoff on every rank (ZeRO-3 gathers
    weights collectively), then on rank 0 only the log history and the manifest."""
    metrics = train_metrics(trainer, result) | (extra_metrics or {})
    if evaluate:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    outputs = save_handoff(trainer, cfg, base_dir, out, dtype)
    if not trainer.is_world_process_zero():
        return outputs
    write_log_history(trainer, out / "log_history.json")
    from pipelines.manifest import write_manifest

    write_manifest(out, stage=stage, inputs=inputs, settings=cfg.model_dump(), outputs=outputs, metrics=metrics)
    return outputs


def stage_main(stage: str, run, recipe) -> int:
    """The `lathe <stage>` entry of a training stage: one MLflow stage run on rank 0; the other ranks
    of a launched run train and record nothing."""
    from pipelines import launch
    from pipelines.manifest import read_manifest
    from registry import tracking

    if not launch.is_main_process():
        run(recipe)
        return 0
    if not getattr(recipe, stage).enabled:  # a disabled stage hands its input on and records no MLflow run
        outputs = run(recipe)
    else:
        with tracking.stage_run(stage, params=recipe.model_dump(mode="json"), experiment=recipe.registry.experiment):
            outputs = run(recipe)
            if not outputs.get("skipped"):
                log_stage_to_mlflow(stage, read_manifest(stage)["metrics"], Path("artifacts"))
    print(f"{stage}: model {outputs.get('model_dir')}, adapter {outputs.get('adapter_dir')}"
          + (f" (skipped: {stage}.enabled is false)" if outputs.get("skipped") else ""))
    return 0


def log_stage_to_mlflow(stage: str, metrics: dict[str, float], root: Path) -> None:
    """Final metrics and the manifests (data hashes, settings, outputs) of a training stage."""
    import mlflow

    from registry import tracking

    tracking.log_metrics_flat(metrics, prefix=f"{stage}.")
    tracking.log_artifacts([root / "data" / "manifest.json", root / stage / "manifest.json",
                            root / stage / "log_history.json"], "manifests")
    if stage == "sft":  # the data the chain trains and is judged on, on the stage run and the pipeline's
        outputs = json.loads((root / "data" / "manifest.json").read_text())["outputs"]
        parent = tracking.parent_run_id()
        tracking.log_datasets(outputs, [mlflow.active_run().info.run_id] + ([parent] if parent else []))


def write_log_history(trainer, path: Path) -> None:
    """Per-step training (and validation, with eval_steps) log as a DVC plots file (JSON list)."""
    rows = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history
            if "loss" in h or "eval_loss" in h]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    # DVC's plots need every row of a file to carry the plotted field (a row without it: "argument of type
    # 'NoneType' is not iterable"): the training and validation curves go to one file each as well.
    for name, key in (("train_loss.json", "loss"), ("eval_loss.json", "eval_loss")):
        (path.parent / name).write_text(json.dumps([{"step": r["step"], key: r[key]} for r in rows if key in r and "step" in r],
                                                   indent=1) + "\n")
