"""A stage's finished checkpoints, from `<workspace>/.lathe/checkpoints/artifacts/<stage>-<hash>/checkpoint-N`.

The stage's progress (losses, steps, its error) comes as structured events (recipes/events.py); the checkpoint
folders are read from disk because they outlive the process that wrote them (a restarted server finds them).
A checkpoint is finished once its `trainer_state.json` is written (the Trainer writes it last) and names the
same step as the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from recipes.events import OPENAI_NAMES

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class Checkpoint:
    stage: str
    step: int
    path: Path
    metrics: dict[str, float]


def finished_checkpoints(workspace: Path, stage: str) -> list[Checkpoint]:
    """The stage's complete checkpoints, oldest first (unfinished or half-written ones are left out)."""
    root = workspace / ".lathe" / "checkpoints" / "artifacts"
    found = []
    for folder in root.glob(f"{stage}-*/checkpoint-*"):
        match = _CHECKPOINT.match(folder.name)
        if not match or not any((folder / name).is_file() for name in _WEIGHTS):
            continue
        try:
            state = json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        step = int(match.group(1))
        if state.get("global_step") != step:
            continue
        found.append(Checkpoint(stage, step, folder, _metrics_at(state.get("log_history", []), step)))
    return sorted(found, key=lambda c: c.step)


def _metrics_at(history: list[dict], step: int) -> dict[str, float]:
    """The last training (and validation) numbers logged at or before `step`."""
    metrics: dict[str, float] = {}
    for entry in history:
        if entry.get("step", 0) > step:
            continue
        for key, name in OPENAI_NAMES.items():
            if isinstance(entry.get(key), (int, float)):
                metrics[name] = float(entry[key])
    return metrics
