"""Stage `sft`: instruction tuning with TRL's SFTTrainer (+ PEFT LoRA).

    lathe sft --recipe params.yaml

Input: the base model (artifacts/base/manifest.json) and artifacts/data/sft_{train,val}.jsonl.
Output: artifacts/sft/{adapter, model (merged 16-bit), log_history.json, manifest.json}.

Loss masking: rows are given to TRL as prompt/completion pairs (prompt = every turn before the
last assistant answer), so with `assistant_only_loss` the loss covers the answer only. The chat
template closes the answer with its end-of-turn token (<|im_end|> for ChatML), which stays in the
labels, so the tuned model learns to stop.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import launch, training
from pipelines.checkpoints import checkpoint_dir, last_good_checkpoint
from pipelines.manifest import read_manifest, stage_dir, write_manifest
from recipes.schema import Recipe


def to_trl_rows(rows: list[dict], assistant_only: bool) -> list[dict]:
    if not assistant_only:
        return [{"messages": r["messages"]} for r in rows]
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def load_split(path: Path, assistant_only: bool):
    import json

    from datasets import Dataset

    # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, \x1c.. that rows may hold
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return Dataset.from_list(to_trl_rows(rows, assistant_only)) if rows else None


def run_sft(recipe: Recipe, root: Path = Path("artifacts")) -> dict:
    from trl import SFTConfig, SFTTrainer

    cfg = recipe.sft
    out = stage_dir("sft", root)
    base_dir = Path(read_manifest("base", root)["outputs"]["model_dir"])
    data = read_manifest("data", root)["outputs"]
    if not cfg.enabled:
        outputs = {"model_dir": str(base_dir), "base_model_dir": str(base_dir), "skipped": True}
        write_manifest(out, stage="sft", inputs={"base": str(base_dir)}, settings=cfg.model_dump(), outputs=outputs)
        return outputs
    train = load_split(Path(data["sft_train"]["path"]), cfg.assistant_only_loss)
    val = load_split(Path(data["sft_val"]["path"]), cfg.assistant_only_loss)
    tokenizer = training.load_tokenizer(base_dir)
    # Arguments before the model: with ZeRO-3 they make from_pretrained load each rank's shard only.
    checkpoints = checkpoint_dir("sft", cfg.model_dump(mode="json"), {"data": data["sft_train"]["sha256"]}, root,
                                 upstream="base")
    args = SFTConfig(**training.common_args(cfg, checkpoints, val is not None), **launch.deepspeed_args(recipe),
                     max_length=cfg.max_seq_length, packing=cfg.packing, packing_strategy=cfg.packing_strategy,
                     completion_only_loss=cfg.assistant_only_loss, eos_token=tokenizer.eos_token)
    zero3 = launch.zero_stage(recipe) == 3
    model = training.load_model(base_dir, cfg, recipe.model, zero3=zero3)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, peft_config=training.lora_config(cfg))
    result = trainer.train(resume_from_checkpoint=last_good_checkpoint(checkpoints))
    return training.finish(trainer, result, stage="sft", cfg=cfg, dtype=recipe.model.dtype, base_dir=base_dir, out=out,
                           inputs={"base": str(base_dir), "train": data["sft_train"], "val": data["sft_val"]},
                           evaluate=val is not None)


def main(recipe: Recipe, args) -> int:
    return training.stage_main("sft", run_sft, recipe)
