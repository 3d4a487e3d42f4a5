"""The events file: a reader sees whole lines only, each once, in order; nothing is written without $LATHE_EVENTS."""

import json

from recipes import events


def test_events_are_read_once_and_a_partial_line_waits(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.delenv(events.ENV, raising=False)
    events.emit("log", "sft", step=1)
    assert not path.exists()
    monkeypatch.setenv(events.ENV, str(path))
    reader = events.EventReader(path)
    assert reader.read() == []  # no file yet
    events.emit("train_begin", "sft", step=0, total_steps=4)
    events.emit("log", "sft", step=1, metrics=events.metric_names({"loss": 2.5, "eval_loss": 2.0, "flag": True}))
    with open(path, "a") as handle:
        handle.write(json.dumps({"type": "log", "stage": "sft", "step": 2})[:10])  # being written
    first = reader.read()
    assert [(e["type"], e["step"]) for e in first] == [("train_begin", 0), ("log", 1)]
    assert first[1]["metrics"] == {"train_loss": 2.5, "valid_loss": 2.0}
    assert reader.read() == []
    with open(path, "a") as handle:
        handle.write(json.dumps({"type": "log", "stage": "sft", "step": 2})[10:] + "\n")
    assert [e["step"] for e in reader.read()] == [2]
