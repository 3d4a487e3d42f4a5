"""Stage `sft`: instruction tuning with TRL's SFTTrainer (+ PEFT LoRA).

    lathe sft --recipe params.yaml

Input: the base model (artifacts/base/manifest.json) and artifacts/data/sft_{train,val}.jsonl.
Output: artifacts/sft/{adapter, model (merged 16-bit), log_history.json, manifest.json}.

Loss masking: every row is encoded by chat/encode.py — the encoder `lathe data inspect` shows — and
handed to TRL as input_ids + labels. With `assistant_only_loss` every assistant turn of a conversation
is trained through its end-of-turn token (<|im_end|> for ChatML, so the model learns to stop), except
turns with `weight: 0`; system, user and tool turns are not. TRL then truncates or packs as configured.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines import launch, training
from pipelines.checkpoints import checkpoint_dir, last_good_checkpoint
from pipelines.manifest import read_manifest, stage_dir, write_manifest
from recipes.errors import LatheError
from recipes.schema import Recipe


def read_jsonl(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, \x1c.. that rows may hold
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def encode_split(path: Path, tokenizer, *, assistant_only: bool) -> list:
    """Every row of a data-stage split through the training encoder; a row the chat template cannot
    render or split, or a token id the model does not have, stops the stage naming the line."""
    from chat.encode import encode_row
    from chat.templates import ChatFormatError, chat_format

    rows = read_jsonl(path)
    try:
        fmt = chat_format(tokenizer) if any("messages" in row for row in rows) else None
    except ChatFormatError as exc:
        raise LatheError(f"{path}: {exc}") from None
    vocab = len(tokenizer)
    encoded = []
    for number, row in enumerate(rows, start=1):
        try:
            enc = encode_row(tokenizer, fmt, row, assistant_only=assistant_only)
        except ChatFormatError as exc:
            raise LatheError(f"{path}, line {number}: {exc}") from None
        if max(enc.input_ids) >= vocab:
            raise LatheError(f"{path}, line {number}: token id {max(enc.input_ids)} is outside the tokenizer's "
                             f"vocabulary ({vocab} tokens)")
        encoded.append(enc)
    return encoded


def keeps_every_token(packing: bool, strategy: str) -> bool:
    """`bfd_split` and `wrapped` packing split over-long rows instead of cutting them."""
    return packing and strategy in ("bfd_split", "wrapped")


def truncation(encoded: list, max_length: int, *, packing: bool, strategy: str) -> dict[str, int]:
    """What `max_length` cuts: TRL keeps the first max_length tokens of a row (padded batches and
    `bfd` packing); `bfd_split` and `wrapped` packing keep every token. A row left with no trained
    token is dropped by TRL — counted here, so it is not a silent loss."""
    if keeps_every_token(packing, strategy):
        return {"rows_truncated": 0, "trained_tokens_cut": 0, "rows_dropped_by_truncation": 0}
    cut = [enc for enc in encoded if len(enc.input_ids) > max_length]
    lost = [sum(1 for label in enc.labels[max_length:] if label != -100) for enc in cut]
    empty = sum(1 for enc in cut if all(label == -100 for label in enc.labels[:max_length]))
    return {"rows_truncated": len(cut), "trained_tokens_cut": sum(lost), "rows_dropped_by_truncation": empty}


def load_split(path: Path, tokenizer, assistant_only: bool):
    from datasets import Dataset

    encoded = encode_split(path, tokenizer, assistant_only=assistant_only)
    rows = [{"input_ids": enc.input_ids, "labels": enc.labels} for enc in encoded]
    return (Dataset.from_list(rows) if rows else None), encoded


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
    tokenizer = training.load_tokenizer(base_dir)
    train, encoded = load_split(Path(data["sft_train"]["path"]), tokenizer, cfg.assistant_only_loss)
    val, _ = load_split(Path(data["sft_val"]["path"]), tokenizer, cfg.assistant_only_loss)
    if train is None:
        raise LatheError("sft: the training split is empty (see artifacts/data/manifest.json)")
    cut = truncation(encoded, cfg.max_seq_length, packing=cfg.packing, strategy=cfg.packing_strategy)
    if cut["trained_tokens_cut"]:
        print(f"sft: max_seq_length {cfg.max_seq_length} cuts {cut['trained_tokens_cut']} trained tokens from "
              f"{cut['rows_truncated']} rows ({cut['rows_dropped_by_truncation']} left with none and dropped); "
              f"`lathe data inspect` shows which")
    # Arguments before the model: with ZeRO-3 they make from_pretrained load each rank's shard only.
    checkpoints = checkpoint_dir("sft", cfg.model_dump(mode="json"), {"data": data["sft_train"]["sha256"]}, root,
                                 upstream="base")
    args = SFTConfig(**training.common_args(cfg, checkpoints, val is not None), **launch.deepspeed_args(recipe),
                     max_length=cfg.max_seq_length, packing=cfg.packing, packing_strategy=cfg.packing_strategy,
                     eos_token=tokenizer.eos_token)
    trainer = training.make_trainer(SFTTrainer, "sft", recipe, cfg, base_dir, args, tokenizer, train_dataset=train,
                                    eval_dataset=val)
    result = trainer.train(resume_from_checkpoint=last_good_checkpoint(checkpoints))
    return training.finish(trainer, result, stage="sft", cfg=cfg, dtype=recipe.model.dtype, base_dir=base_dir, out=out,
                           inputs={"base": str(base_dir), "train": data["sft_train"], "val": data["sft_val"]},
                           evaluate=val is not None, extra_metrics={f"data_{k}": float(v) for k, v in cut.items()})


def main(recipe: Recipe, args) -> int:
    return training.stage_main("sft", run_sft, recipe)
