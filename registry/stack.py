"""A LoRA-tuned version as what it is: its adapters, in the order they were trained, on a base stored once.

A chain `base → sft (LoRA) → preference (LoRA) → rl (LoRA)` trains each adapter on the previous stage's merged
weights, so the tuned model is "base, then merge each adapter in order". A registered version stores exactly
that (`lathe_stack.json` + `adapters/<i>-<stage>/`, a few MB) and points at its base by content hash: the base
is registered once as a version of `<name>-base` and shared by every version trained on it. Before, every
version copied the merged weights (≈ 28 GB per version for a 14B recipe).

`merge_adapters` is the one definition of the merge: the training stages' handoff (`model/` next to each
`adapter/`) and `materialise` (what `resolve()` returns for a stacked version) both call it, so the weights
served and re-judged from the registry are the weights that were evaluated, bit for bit. Materialised stacks
are cached under `<project>/.lathe/merged/<sha of the stored files>/` (one merge per content, not per call).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from recipes.errors import LatheError

STACK_FILE = "lathe_stack.json"
FORMAT = 1
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class AdapterStack:
    base_dir: Path
    """The full-weights model the first adapter was trained on (the base model, or a full fine-tune's output)."""
    adapters: list[tuple[str, Path]]
    """(stage, adapter dir), in training order; each was trained on the merge of the ones before it."""
    dtype: str
    """The dtype the merges ran in (the recipe's model.dtype)."""


def is_stack(model_dir: Path) -> bool:
    return (Path(model_dir) / STACK_FILE).is_file()


def pack(stack: AdapterStack, base_ref: dict, folder: Path) -> Path:
    """Write the version's files into `folder`: each adapter (weights + config), the last adapter's tokenizer
    (the tuned model's), and `lathe_stack.json` naming the base by registry URI and content hash."""
    entries = []
    for index, (stage, adapter_dir) in enumerate(stack.adapters):
        missing = [name for name in _ADAPTER_FILES if not (adapter_dir / name).is_file()]
        if missing:
            raise LatheError(f"{stage} adapter {adapter_dir}: missing {', '.join(missing)} (only safetensors "
                             "adapters are registered); rerun the stage")
        target = folder / "adapters" / f"{index}-{stage}"
        target.mkdir(parents=True)
        for name in _ADAPTER_FILES:
            shutil.copy2(adapter_dir / name, target / name)
        entries.append({"stage": stage, "path": target.relative_to(folder).as_posix()})
    last = stack.adapters[-1][1]
    for path in last.iterdir():  # the tokenizer's files (whatever they are) and chat template: what the merge saves
        if path.is_file() and path.name not in (*_ADAPTER_FILES, "lathe_base.json", "README.md"):
            shutil.copy2(path, folder / path.name)
    record = {"format": FORMAT, "base": base_ref, "adapters": entries, "dtype": stack.dtype}
    (folder / STACK_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def read(folder: Path) -> dict:
    record = json.loads((folder / STACK_FILE).read_text())
    if record.get("format") != FORMAT:
        raise LatheError(f"{folder / STACK_FILE}: stack format {record.get('format')!r}, this Lathe reads {FORMAT}; "
                         "upgrade Lathe")
    return record


def materialise(folder: Path, base_dir: Path, cache_root: Path, key: str) -> Path:
    """The merged model of a stacked version: `cache_root/key/`, merged once (atomically, so concurrent
    callers either merge it or find it)."""
    target = cache_root / key
    if (target / "config.json").is_file():
        return target
    record = read(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{key[:12]}-"))
    try:
        merge_adapters(base_dir, [folder / a["path"] for a in record["adapters"]], staging, record["dtype"],
                       tokenizer_dir=folder)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def merge_adapters(base_dir: Path, adapter_dirs: list[Path], out_dir: Path, dtype: str,
                   tokenizer_dir: Path | None = None) -> Path:
    """Load `base_dir` in `dtype` (16-bit, never 4-bit), merge each adapter in order, save safetensors with the
    tokenizer of `tokenizer_dir` (default: the last adapter's) and generation stopping at its end of turn."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype), use_safetensors=True)
    for adapter_dir in adapter_dirs:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or adapter_dirs[-1])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out_dir)
    set_eos(Path(out_dir), tokenizer)
    return Path(out_dir)


def set_eos(model_dir: Path, tokenizer) -> None:
    """Keep generation stopping at the turn end (<|im_end|> for ChatML) in the saved model."""
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(model_dir) if (model_dir / "generation_config.json").exists() else GenerationConfig()
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(model_dir)
