"""Which checkpoint to resume from after a crash.

The HF Trainer writes a checkpoint in order (weights, optimizer, scheduler, RNG states) and
`trainer_state.json` last, so a process killed mid-save leaves a `checkpoint-N` directory without a
readable trainer state. transformers' `get_last_checkpoint` picks the highest N regardless, and resuming
from a half-written directory crashes (or loads a truncated optimizer). `last_good_checkpoint` skips
such directories and says so.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it looks complete."""
    match = CHECKPOINT_RE.match(path.name)
    if not match:
        return "not a checkpoint-N directory"
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json (the save was interrupted)"
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is not valid JSON (the save was interrupted)"
    if state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json says global_step {state.get('global_step')}, the name says {match.group(1)}"
    # DeepSpeed keeps its own shards in global_stepN/ instead of the HF weight files.
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob("global_step*")):
        return "no model weights"
    return None


def last_good_checkpoint(directory: str | Path) -> str | None:
    """The newest complete `checkpoint-N` under `directory` (None when there is none), reporting any newer
    incomplete one it skips on stderr."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = sorted((p for p in directory.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)),
                        key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)), reverse=True)
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            print(f"resuming from {path}", file=sys.stderr)
            return str(path)
        print(f"skipping checkpoint {path}: {problem}", file=sys.stderr)
    return None


def checkpoint_dir(stage: str, settings: dict, inputs: dict, artifacts: Path = Path("artifacts"), *,
                   upstream: str) -> Path:
    """Where a stage's checkpoints go (`.lathe/checkpoints/artifacts/<stage>-<hash>` beside the artifacts
    folder): outside its DVC output (DVC deletes outputs before re-running a
    stage, which would throw away the checkpoints a crashed run needs), keyed by a hash of the stage's
    settings, its inputs and the manifest of the `upstream` stage whose model it trains, so that a changed
    recipe or a re-trained upstream model never resumes an old run. (The upstream model's *path* does not
    change when it is re-trained; its manifest does, and a finished run's last checkpoint would otherwise
    be "resumed" into zero steps of training on the old model.)"""
    import hashlib

    from recipes.identity import file_sha256

    upstream_manifest = file_sha256(Path(artifacts) / upstream / "manifest.json")
    key = hashlib.sha256(json.dumps({"settings": settings, "inputs": inputs, "upstream": upstream_manifest},
                                    sort_keys=True, default=str).encode())
    artifacts = Path(artifacts)
    return artifacts.parent / ".lathe" / "checkpoints" / artifacts.name / f"{stage}-{key.hexdigest()[:12]}"
