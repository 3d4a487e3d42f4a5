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
from recipes.errors import LatheError
from recipes.schema import Recipe


def load_pairs(path: Path, tokenizer):
    """TRL's conversational prompt/chosen/rejected, with tool conversations in the chat format the
    model is served with (chat/templates.py): inlined for a template without tool syntax; for one
    with its own, the tools go in TRL's `tools` column (as JSON text)."""
    from datasets import Dataset

    from chat.templates import ChatFormatError, chat_format
    from pipelines.sft import read_jsonl

    rows = read_jsonl(path)
    if not rows:
        return None
    try:
        fmt = chat_format(tokenizer)
    except ChatFormatError as exc:
        raise LatheError(f"{path}: {exc}") from None
    pairs = []
    for number, row in enumerate(rows, start=1):
        prompt, tools = fmt.conversation(row["prompt"], row.get("tools"))
        chosen, _ = fmt.conversation(row["chosen"], None)
        rejected, _ = fmt.conversation(row["rejected"], None)
        if fmt.native_tools and any(m.get("tool_calls") for m in prompt + chosen + rejected):
            # Arrow would merge every call's arguments into one struct type, filling absent keys with null.
            raise LatheError(f"{path}, line {number}: preference rows with tool calls are trained only for chat "
                             "templates without tool syntax of their own (SmolLM2's ChatML); this model's "
                             "template renders tool calls itself")
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        pairs.append(pair | ({"tools": json.dumps(tools)} if fmt.native_tools else {}))
    if fmt.native_tools:
        for pair in pairs:
            pair.setdefault("tools", "null")
    return Dataset.from_list(pairs)


def run_preference(recipe: Recipe, root: Path = Path("artifacts")) -> dict:
    cfg = recipe.preference
    out = stage_dir("preference", root)
    sft = read_manifest("sft", root)["outputs"]
    base_dir = Path(sft["model_dir"])
    data = read_manifest("data", root)["outputs"]
    tokenizer = training.load_tokenizer(base_dir)
    train = load_pairs(Path(data["pref_train"]["path"]), tokenizer)
    if not cfg.enabled or train is None:
        outputs = {"model_dir": str(base_dir), "base_model_dir": str(base_dir), "skipped": True}
        write_manifest(out, stage="preference", inputs={"sft": str(base_dir)}, settings=cfg.model_dump(), outputs=outputs)
        return outputs
    from trl import DPOConfig, DPOTrainer

    val = load_pairs(Path(data["pref_val"]["path"]), tokenizer)
    # Arguments before the model: with ZeRO-3 they make from_pretrained load each rank's shard only.
    checkpoints = checkpoint_dir("preference", cfg.model_dump(mode="json"), {"data": data["pref_train"]["sha256"]},
                                 root, upstream="sft")
    args = DPOConfig(**training.common_args(cfg, checkpoints, val is not None), **launch.deepspeed_args(recipe),
                     beta=cfg.beta, loss_type=cfg.loss_type, loss_weights=cfg.loss_weights,
                     max_length=cfg.max_seq_length)
    trainer = training.make_trainer(DPOTrainer, "preference", recipe, cfg, base_dir, args, tokenizer,
                                    train_dataset=train, eval_dataset=val)
    result = trainer.train(resume_from_checkpoint=last_good_checkpoint(checkpoints))
    return training.finish(trainer, result, stage="preference", cfg=cfg, dtype=recipe.model.dtype, base_dir=base_dir,
                           out=out, inputs={"sft_model": str(base_dir), "train": data["pref_train"], "val": data["pref_val"]},
                           evaluate=val is not None)


def main(recipe: Recipe, args) -> int:
    return training.stage_main("preference", run_preference, recipe)
