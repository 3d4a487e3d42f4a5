"""The retention suite on the tiny model: KL(base ‖ candidate) on the base's own answers, checked
against an independent computation; 0 for the base itself; reference answers cached per base model."""

from __future__ import annotations

import json

import pytest
import torch

from eval import retention
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1)


def test_prompt_splits_are_disjoint_and_hold_the_two_user_checks():
    replay = {p["prompt"].lower() for p in retention.load_prompts("replay")}
    heldout = [p["prompt"] for p in retention.load_prompts("heldout")]
    assert len(replay) == 136 and len(heldout) == 64
    assert not replay & {p.lower() for p in heldout}
    assert heldout[:2] == ["Say hi.", "What is the capital of France?"]  # shown first in the report


def test_kl_matches_an_independent_computation(tiny_model_dir, other_model_dir, tmp_path):
    base, tok = retention.load(tiny_model_dir)
    other, _ = retention.load(other_model_dir)
    ref = [{"id": "x", "category": "fact", "prompt": "what is the capital of france", "answer": "paris is the answer"}]
    row = retention.score(base, other, tok, ref)[0]
    # independent: run the whole sequence once, slice the answer positions, KL via torch.nn.functional
    prompt = tok.apply_chat_template([{"role": "user", "content": ref[0]["prompt"]}], tokenize=False,
                                     add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(ref[0]["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + a_ids])
    with torch.no_grad():
        lb = torch.log_softmax(base(ids).logits[0].float(), -1)[len(p_ids) - 1:-1]
        lc = torch.log_softmax(other(ids).logits[0].float(), -1)[len(p_ids) - 1:-1]
    expected = torch.nn.functional.kl_div(lc, lb, log_target=True, reduction="none").sum(-1).mean().item()
    assert row["metrics"]["kl"] == pytest.approx(expected, rel=1e-4) and expected > 0.01
    nll = -lc.gather(-1, torch.tensor(a_ids).unsqueeze(-1)).mean().item()
    assert row["metrics"]["nll"] == pytest.approx(nll, rel=1e-4)
    assert row["tokens"] == len(a_ids)
    same = retention.score(base, base, tok, ref)[0]["metrics"]
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["nll_gap"] == pytest.approx(0.0, abs=1e-6)
    itself = retention.score(base, None, tok, ref)[0]["metrics"]  # the base judged against itself: one pass
    assert itself["kl"] == 0.0 and itself["nll"] == pytest.approx(same["nll"])


def test_evaluate_writes_metrics_samples_and_side_by_side(tiny_model_dir, other_model_dir, tmp_path):
    cache = tmp_path / "cache"
    kw = dict(limit=4, max_new_tokens=6, cache_dir=cache)
    same = retention.evaluate(tiny_model_dir, tiny_model_dir, samples_path=tmp_path / "a.jsonl", **kw)
    moved = retention.evaluate(tiny_model_dir, other_model_dir, samples_path=tmp_path / "b.jsonl", **kw)
    assert same["metrics"]["kl"] == pytest.approx(0.0, abs=1e-6) and moved["metrics"]["kl"] > 0.01
    assert moved["n"] == 4 and moved["metrics"]["kl_stderr"] is not None
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows[:2]] == ["Say hi.", "What is the capital of France?"]
    assert sum(r["metrics"]["kl"] for r in rows) / 4 == pytest.approx(moved["metrics"]["kl"])
    assert moved["side_by_side"][0]["base"] == rows[0]["reference"].strip() and "model" in moved["side_by_side"][0]
    assert len(list(cache.glob("heldout-*.jsonl"))) == 1  # the base's answers: generated once, then reused


def test_reference_answers_come_from_the_cache(tiny_model_dir, tmp_path):
    first = retention.base_answers(tiny_model_dir, "heldout", 4, tmp_path, limit=2)
    (cached,) = tmp_path.glob("heldout-*.jsonl")
    cached.write_text("".join(json.dumps({**r, "answer": "from the cache"}) + "\n" for r in first))
    again = retention.base_answers(tiny_model_dir, "heldout", 4, tmp_path, limit=2)
    assert [r["answer"] for r in again] == ["from the cache"] * 2
    assert retention.base_answers(tiny_model_dir, "heldout", 5, tmp_path, limit=2) != again  # other settings
