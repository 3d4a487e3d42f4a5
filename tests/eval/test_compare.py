"""Paired comparisons of two judged models from their samples files: the same items, matched by
(task, doc_id); suites judged with different settings are refused, not compared."""

from __future__ import annotations

import json

import pytest

from eval.compare import compare


def _judged(tmp_path, label, correct: list[int], *, limit=20, kl: list[float] | None = None) -> tuple[dict, object]:
    out = tmp_path / label
    (out / "samples").mkdir(parents=True)
    rows = [{"task": "lathe_mmlu_x", "doc_id": i, "metrics": {"acc": float(c)}} for i, c in enumerate(correct)]
    (out / "samples/mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"task": "lathe_mmlu", "num_fewshot": 0, "limit": limit, "data_files": {"t": {"sha256": "a"}}}
    suites = {"mmlu": {"status": "ok", "primary": "acc", "metrics": {"acc": sum(correct) / len(correct)},
                       "samples_file": "samples/mmlu.jsonl", "settings": settings}}
    if kl is not None:
        (out / "samples/retention.jsonl").write_text("".join(
            json.dumps({"task": "retention", "doc_id": i, "metrics": {"kl": v, "nll_gap": v / 2}}) + "\n"
            for i, v in enumerate(kl)))
        suites["retention"] = {"status": "ok", "primary": "kl", "metrics": {}, "samples_file": "samples/retention.jsonl",
                               "settings": {"task": "retention", "data_files": {}}}
    return {"suites": suites}, out


def test_items_are_paired_by_task_and_doc(tmp_path):
    base, base_dir = _judged(tmp_path, "base", [1] * 10 + [0] * 10, kl=[0.0] * 4)
    tuned, tuned_dir = _judged(tmp_path, "tuned", [1] * 6 + [0] * 4 + [0] * 9 + [1], kl=[0.1, 0.2, 0.3, 0.4])
    result = compare(base, base_dir, tuned, tuned_dir)
    mmlu = result["mmlu/acc"]
    # 4 items right → wrong, 1 item wrong → right: Δ = -3/20, exact McNemar p = 2·P(X ≤ 1 | n=5) = 0.375
    assert mmlu["n"] == 20 and mmlu["discordant"] == [4, 1] and mmlu["delta"] == pytest.approx(-0.15)
    assert mmlu["p_value"] == pytest.approx(0.375) and mmlu["primary"] and mmlu["suite"] == "mmlu"
    assert result["retention/kl"]["delta"] == pytest.approx(0.25) and result["retention/kl"]["test"] == "paired-z"
    assert result["retention/nll_gap"]["delta"] == pytest.approx(0.125)


def test_suites_judged_with_different_settings_are_not_compared(tmp_path):
    base, base_dir = _judged(tmp_path, "base", [1, 0, 1, 0], limit=4)
    tuned, tuned_dir = _judged(tmp_path, "tuned", [1, 1, 1, 0], limit=10)
    result = compare(base, base_dir, tuned, tuned_dir)
    assert "mmlu/acc" not in result and result["_skipped"] == {"mmlu": "judged with different limit"}
