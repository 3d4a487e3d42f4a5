"""Stage `preference`: preference tuning with TRL's DPOTrainer on top of the SFT model.

    lathe preference --recipe params.yaml

Input: artifacts/sft (merged model) and artifacts/data/pref_{train,val}.jsonl.
Output: artifacts/preference/{adapter, model (merged 16-bit), log_history.json, manifest.json}.

With LoRA the reference model is the same network with the adapter switched off (PEFT), so memory
is not doubled. The default loss keeps an SFT term on the chosen answer (["sigmoid", "sft"],
RPO-style): plain DPO on a small model can collapse it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines import launch, training
from pipelines.checkpoints import checkpoint_dir, last_good_checkpoint
from pipelines.manifest import read_manifest, stage_dir, write_manifest
from recipes.schema import Recipe


def load_pairs(path: Path):
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = ("prompt", "chosen", "rejected")
    return Dataset.from_list([{k: r[k] for k in keep} for r in rows]) if rows else None


def run_preference(recipe: Recipe, root: Path = Path("artifacts")) -> dict:
    cfg = recipe.preference
    out = stage_dir("preference", root)
    sft = read_manifest("sft", root)["outputs"]
    base_dir = Path(sft["model_dir"])
    data = read_manifest("data", root)["outputs"]
    train = load_pairs(Path(data["pref_train"]["path"]))
    if not cfg.enabled or train is None:
        outputs = {"model_dir": str(base_dir), "base_model_dir": str(base_dir), "skipped": True}
        write_manifest(out, stage="preference", inputs={"sft": str(base_dir)}, settings=cfg.model_dump(), outputs=outputs)
        return outputs
    from trl import DPOConfig, DPOTrainer

    val = load_pairs(Path(data["pref_val"]["path"]))
    tokenizer = training.load_tokenizer(base_dir)
    # Arguments before the model: with ZeRO-3 they make from_pretrained load each rank's shard only.
    checkpoints = checkpoint_dir("preference", cfg.model_dump(mode="json"), {"base": str(base_dir), "data": data["pref_train"]["sha256"]}, root)
    args = DPOConfig(**training.common_args(cfg, checkpoints, val is not None), **launch.deepspeed_args(recipe),
                     beta=cfg.beta, loss_type=cfg.loss_type, max_length=cfg.max_seq_length)
    model = training.load_model(base_dir, cfg, recipe.model.trust_remote_code)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, peft_config=training.lora_config(cfg))
    result = trainer.train(resume_from_checkpoint=last_good_checkpoint(checkpoints))
    metrics = training.train_metrics(trainer, result)
    if val is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    outputs = training.save_handoff(trainer, cfg, base_dir, out, recipe.model.dtype)  # every rank (ZeRO-3 gather)
    if not trainer.is_world_process_zero():
        return outputs
    training.write_log_history(trainer, out / "log_history.json")
    write_manifest(out, stage="preference", inputs={"sft_model": str(base_dir), "train": data["pref_train"],
                                                    "val": data["pref_val"]},
                   settings=cfg.model_dump(), outputs=outputs, metrics=metrics)
    return outputs


def main(recipe: Recipe, args) -> int:
    from registry import tracking

    if not launch.is_main_process():  # the other ranks of a launched run: train, record nothing
        run_preference(recipe)
        return 0
    with tracking.stage_run("preference", params=recipe.model_dump(mode="json"), experiment=recipe.registry.experiment):
        outputs = run_preference(recipe)
        if not outputs.get("skipped"):
            metrics = read_manifest("preference")["metrics"]
            training.log_stage_to_mlflow("preference", metrics, Path("artifacts"))
    print(f"preference: model {outputs.get('model_dir')}, adapter {outputs.get('adapter_dir')}")
    return 0
