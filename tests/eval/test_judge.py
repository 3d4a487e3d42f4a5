"""The LLM judge of custom `judge` suites (eval/judge.py): a real `lathe serve` acts as the judge; every judge
prompt and raw reply lands in the samples, and each score is recomputed here from the raw reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import judge
from eval.harness import run_suites
from recipes.schema import SuiteConfig
from tests.eval.conftest import write_jsonl

ROWS = [{"prompt": "Say hi.", "answer": "Hello!"}, {"prompt": "What is 2+2?", "answer": "4"},
        {"prompt": "Name a colour.", "answer": "Blue."}]
RUBRIC = "The answer is short, friendly and correct."


def _spec(mode="single", scale="score10", structured=True) -> dict:
    return {"seed": 1234, "judge": {"mode": mode, "scale": scale, "structured": structured, "rubric": RUBRIC}}


@pytest.mark.parametrize("spec,reply,verdict,score", [
    (_spec(), '{"reason": "fine", "verdict": 7}', "7", 0.7),
    (_spec(), '{"reason": "cut sh', None, 0.0),                        # a reply cut before its verdict
    (_spec(), '{"reason": "x", "verdict": 11}', None, 0.0),            # outside the scale
    (_spec(structured=False), "Good answer. [[9]]", "9", 0.9),
    (_spec(scale="pass_fail"), '{"reason": "ok", "verdict": "PASS"}', "PASS", 1.0),
    (_spec(scale="pass_fail", structured=False), "Wrong. [[fail]]", "FAIL", 0.0),
])
def test_verdicts_are_read_from_json_or_double_brackets_and_unreadable_ones_score_worst(spec, reply, verdict, score):
    assert judge.parse(spec, reply) == verdict
    assert judge.score(spec, verdict, None) == score


def test_pairwise_order_is_seeded_per_item_and_a_win_counts_for_the_candidate_wherever_it_was_shown():
    spec = _spec(mode="pairwise")
    orders = {judge.candidate_first(1234, row) for row in range(1, 40)}
    assert orders == {True, False}  # both positions occur
    assert judge.candidate_first(1234, 7) == judge.candidate_first(1234, 7)
    assert judge.score(spec, "A", "candidate-first") == 1.0 and judge.score(spec, "B", "candidate-first") == 0.0
    assert judge.score(spec, "B", "reference-first") == 1.0 and judge.score(spec, "tie", "reference-first") == 0.5
    doc = {"_row": 3, "conversation": "user: hi", "target": "REFERENCE"}
    text, order = judge.prompt({**spec, "judge": {**spec["judge"]}}, doc, "CANDIDATE")
    first, second = ("CANDIDATE", "REFERENCE") if order == "candidate-first" else ("REFERENCE", "CANDIDATE")
    assert text.index(first) < text.index(second) and RUBRIC in text


@pytest.fixture(scope="module")
def judge_url(tiny_model_dir):
    from tests.serving.conftest import running_server

    with running_server(model_dir=tiny_model_dir, model_name="judge") as base:
        yield f"{base}/v1"


@pytest.mark.parametrize("mode,scale,metric", [("single", "score10", "judge_score"), ("pairwise", "score10", "win_rate")])
def test_a_served_judge_grades_every_answer_and_its_prompts_and_raw_replies_are_recorded(
        judge_url, tiny_model_dir, tmp_path, mode, scale, metric):
    suite = SuiteConfig(name="helpful", file=str(write_jsonl(tmp_path / "rows.jsonl", ROWS)), kind="judge",
                        max_gen_toks=8, judge={"endpoint": judge_url, "model": "judge", "rubric": RUBRIC,
                                               "mode": mode, "scale": scale, "max_tokens": 600})
    results = run_suites(tiny_model_dir, [suite], mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "out")
    entry = results["suites"]["helpful"]
    assert entry["status"] == "ok", entry.get("reason")
    assert entry["settings"]["custom"]["judge"]["endpoint"] == judge_url  # the judge is recorded with the score
    assert entry["settings"]["custom"]["judge"]["model"] == "judge"
    rows = [json.loads(line) for line in (tmp_path / "out" / entry["samples_file"]).read_text().splitlines()]
    assert len(rows) == len(ROWS)
    spec = {"seed": 1234, "judge": {"mode": mode, "scale": scale, "structured": True, "rubric": RUBRIC}}
    for row in rows:
        verdict = row["judge"]
        assert RUBRIC in verdict["judge_prompt"] and row["response"] in verdict["judge_prompt"]
        assert verdict["raw"]  # the judge's reply as it came
        parsed = judge.parse(spec, verdict["raw"])
        assert parsed is not None  # structured output: the verdict always parses
        assert row["metrics"][metric] == judge.score(spec, parsed, verdict["order"]) == verdict["score"]
        assert row["metrics"]["judge_unparsed"] == 0.0
    assert entry["metrics"][metric] == pytest.approx(sum(r["metrics"][metric] for r in rows) / len(rows))
    assert entry["paired_metrics"] == [metric]  # judge_unparsed is reported, not compared as a guard would
    shown = entry["examples"]["right"] + entry["examples"]["wrong"]
    assert shown and all(ex["judge"].startswith(tuple(judge.verdicts(spec))) for ex in shown)  # the report shows the verdict


def test_an_unreachable_judge_is_reported_with_its_address_not_scored(tiny_model_dir, tmp_path):
    suite = SuiteConfig(name="helpful", file=str(write_jsonl(tmp_path / "rows.jsonl", ROWS[:1])), kind="judge",
                        max_gen_toks=4, judge={"endpoint": "http://127.0.0.1:9/v1", "model": "gpt-judge", "rubric": RUBRIC})
    entry = run_suites(tiny_model_dir, [suite], mirror_dir=tmp_path, skills_file=None,
                       out_dir=tmp_path / "out")["suites"]["helpful"]
    assert entry["status"] == "not_run"
    assert "judge gpt-judge at http://127.0.0.1:9/v1" in entry["reason"]


def test_judge_prompts_ship_with_the_package():
    for mode in ("single", "pairwise"):
        text = Path(judge.template_path(mode)).read_text()
        assert "{rubric}" in text and "{conversation}" in text and "{instruction}" in text


def test_pairwise_against_the_baseline_uses_its_answers_and_the_baseline_itself_ties(judge_url, tiny_model_dir, tmp_path):
    from pipelines.evaluate import opponents
    from recipes.schema import EvalConfig

    suite = SuiteConfig(name="helpful", file=str(write_jsonl(tmp_path / "rows.jsonl", [{"prompt": r["prompt"]} for r in ROWS])),
                        kind="judge", max_gen_toks=8,
                        judge={"endpoint": judge_url, "model": "judge", "rubric": RUBRIC, "mode": "pairwise",
                               "against": "baseline", "max_tokens": 600})
    cfg = EvalConfig(suites=[suite])
    base = run_suites(tiny_model_dir, [suite], mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "base",
                      opponents=opponents(cfg, "base", "base", {}, tmp_path))
    entry = base["suites"]["helpful"]
    assert entry["metrics"]["win_rate"] == 0.5 and entry["settings"]["custom"]["opponent_sha256"] == "self"
    rows = [json.loads(line) for line in (tmp_path / "base" / entry["samples_file"]).read_text().splitlines()]
    assert all(r["judge"]["verdict"] == "tie" and r["judge"]["judge_prompt"] is None for r in rows)  # no judge call

    # The candidate meets the baseline's answers (from its samples); different answers go to the judge.
    theirs = opponents(cfg, "tuned", "base", {"base": base}, tmp_path)["helpful"]
    assert theirs == {r["line"]: r["response"] for r in rows}
    different = {line: f"A different answer to row {line}." for line in theirs}
    tuned = run_suites(tiny_model_dir, [suite], mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "tuned",
                       opponents={"helpful": different})
    entry = tuned["suites"]["helpful"]
    rows = [json.loads(line) for line in (tmp_path / "tuned" / entry["samples_file"]).read_text().splitlines()]
    spec = {"seed": 1234, "judge": {"mode": "pairwise", "scale": "score10", "structured": True, "rubric": RUBRIC}}
    for row in rows:
        assert different[row["line"]] in row["judge"]["judge_prompt"] and row["response"] in row["judge"]["judge_prompt"]
        assert row["metrics"]["win_rate"] == judge.score(spec, judge.parse(spec, row["judge"]["raw"]), row["judge"]["order"])
    assert entry["settings"]["custom"]["opponent_sha256"] not in ("self", None)
    # Without the baseline's answers (e.g. `--endpoint`), the suite is not run, and says why.
    alone = run_suites(tiny_model_dir, [suite], mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "alone")
    assert alone["suites"]["helpful"]["status"] == "not_run" and "baseline" in alone["suites"]["helpful"]["reason"]


def test_a_judges_reply_holding_a_unicode_line_separator_stays_with_its_answer(tmp_path):
    """The verdicts file is JSONL, split at "\\n" only: a reply quoting U+2028 (JSON keeps it raw) is one record."""
    from eval.records import attach_verdicts

    path = tmp_path / "verdicts.jsonl"
    path.write_text(json.dumps({"row": 1, "reply": "PASS\u2028because"}, ensure_ascii=False) + "\n"
                    + json.dumps({"row": 2, "reply": "FAIL"}) + "\n", encoding="utf-8")
    rows = [{"line": 1}, {"line": 2}]
    attach_verdicts(rows, path)
    assert rows[0]["judge"]["reply"] == "PASS\u2028because" and rows[1]["judge"]["reply"] == "FAIL"
