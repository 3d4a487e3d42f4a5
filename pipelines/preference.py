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

    # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, \x1c.. that rows may hold
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
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
    checkpoints = checkpoint_dir("preference", cfg.model_dump(mode="json"), {"data": data["pref_train"]["sha256"]},
                                 root, upstream="sft")
    args = DPOConfig(**training.common_args(cfg, checkpoints, val is not None), **launch.deepspeed_args(recipe),
                     beta=cfg.beta, loss_type=cfg.loss_type, max_length=cfg.max_seq_length)
    zero3 = launch.zero_stage(recipe) == 3
    model = training.load_model(base_dir, cfg, recipe.model, zero3=zero3)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, peft_config=training.lora_config(cfg))
    result = trainer.train(resume_from_checkpoint=last_good_checkpoint(checkpoints))
    return training.finish(trainer, result, stage="preference", cfg=cfg, dtype=recipe.model.dtype, base_dir=base_dir,
                           out=out, inputs={"sft_model": str(base_dir), "train": data["pref_train"], "val": data["pref_val"]},
                           evaluate=val is not None)


def main(recipe: Recipe, args) -> int:
    return training.stage_main("preference", run_preference, recipe)
