"""Structured events of a stage process: the contract between a running stage and whoever watches it
(the fine-tuning jobs plane), instead of scraping what the stage prints.

A stage appends JSON lines to the file named by `$LATHE_EVENTS` (nothing is written when it is unset):

    {"type": "train_begin", "stage": "sft", "step": 0, "total_steps": 40, "at": 1765...}
    {"type": "log", "stage": "sft", "step": 3, "total_steps": 40, "epoch": 0.25,
     "metrics": {"train_loss": 2.31, "learning_rate": 1e-4, "grad_norm": 0.9, "num_tokens": 1536}, "at": ...}
    {"type": "log", ..., "metrics": {"valid_loss": 2.1, ...}}                  # a validation pass
    {"type": "checkpoint", "stage": "sft", "step": 10, "path": ".lathe/checkpoints/.../checkpoint-10", "at": ...}
    {"type": "train_end", "stage": "sft", "step": 40, "at": ...}
    {"type": "error", "stage": "sft", "kind": "user" | "internal" | "interrupted", "message": "...", "at": ...}

Metric names are OpenAI's (`train_loss`, `valid_loss`, `*_mean_token_accuracy`); other trainer numbers keep
the trainer's name. A line is written whole with one `write` of a line (O_APPEND), so a reader sees complete
lines only, or none.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "LATHE_EVENTS"
TYPES = ("train_begin", "log", "checkpoint", "train_end", "error")
OPENAI_NAMES = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy", "eval_loss": "valid_loss",
                "eval_mean_token_accuracy": "valid_mean_token_accuracy"}
"""Trainer log keys → the names OpenAI's metrics events and checkpoints use."""


def emit(type: str, stage: str, **fields: Any) -> None:
    """Append one event to `$LATHE_EVENTS`, if set."""
    path = os.environ.get(ENV)
    if not path:
        return
    assert type in TYPES, type
    line = json.dumps({"type": type, "stage": stage, **fields, "at": time.time()}, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def metric_names(logs: dict[str, Any]) -> dict[str, float]:
    """A trainer log's numbers under the event names."""
    return {OPENAI_NAMES.get(key, key): float(value) for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class EventReader:
    """Reads the events appended since the last call (a partial last line waits for the next call)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = []
        for line in complete.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not ours (the file is ours alone; a torn write cannot happen with O_APPEND lines)
            if isinstance(event, dict) and event.get("type") in TYPES:
                events.append(event)
        return events
