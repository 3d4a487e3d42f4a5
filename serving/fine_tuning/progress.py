"""What a running stage tells: the trainer's logged metrics (from its output) and its finished
checkpoints (from `<workspace>/.lathe/checkpoints/artifacts/<stage>-<hash>/checkpoint-N`).

The HF Trainer prints each log as a Python dict, `{'loss': '6.25', 'grad_norm': '3.1', ...,
'epoch': '0.5'}` (values as strings), between tqdm redraws that use carriage returns; evaluation logs
start with `'eval_loss'`. A checkpoint is finished once its `trainer_state.json` is written (the Trainer
writes it last) and names the same step as the folder.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

_LOG_DICT = re.compile(r"\{'(?:loss|eval_loss)':[^{}]*\}")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
# Trainer log keys -> the names OpenAI's metrics events and checkpoints use.
_NAMES = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy", "eval_loss": "valid_loss",
          "eval_mean_token_accuracy": "valid_mean_token_accuracy"}


def split_lines(text: str) -> list[str]:
    """Output chunks -> lines, treating tqdm's carriage returns as line ends."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def logged_metrics(line: str) -> dict[str, float] | None:
    """The numbers of a trainer log line (`{'loss': '6.25', ...}`), or None for any other line."""
    match = _LOG_DICT.search(line)
    if not match:
        return None
    try:
        raw = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        return None
    out = {}
    for key, value in raw.items():
        try:
            out[_NAMES.get(key, key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


@dataclass
class StepCounter:
    """Numbers the trainer's training logs (the jobs log every step); a resumed run starts after its checkpoint."""

    step: int = 0
    total: int | None = None

    def event(self, metrics: dict[str, float]) -> tuple[str, dict]:
        """(message, data) of the metrics event for one log."""
        if "train_loss" not in metrics:  # an evaluation log: about the step just done
            return f"Step {self.step}: validation loss={metrics.get('valid_loss', float('nan')):.4f}", \
                {"step": self.step, **metrics}
        self.step += 1
        of = f"/{self.total}" if self.total else ""
        return f"Step {self.step}{of}: training loss={metrics['train_loss']:.4f}", \
            {"step": self.step, "total_steps": self.total, **metrics}


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
        for key, name in _NAMES.items():
            if isinstance(entry.get(key), (int, float)):
                metrics[name] = float(entry[key])
    return metrics
