"""The tools suite: BFCL's rule on hand-made calls, the held-out split, training rows, and a run on
the tiny model through the same prompt the server builds."""

from __future__ import annotations

import json

import pytest

from chat.tool_calls import extract_calls, format_calls
from eval import tools

TRUTH = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]


@pytest.mark.parametrize("calls, reason", [
    ([("calculate_triangle_area", {"base": 10, "height": 5})], None),                    # optional omitted
    ([("calculate_triangle_area", {"base": 10.0, "height": 5, "unit": "Units"})], None),  # 10.0 == 10, case
    ([("calculate_triangle_area", {"base": 10})], "missing height"),
    ([("calculate_triangle_area", {"base": 11, "height": 5})], "base=11 not in [10]"),
    ([("calculate_triangle_area", {"base": 10, "height": 5, "color": "red"})], "unexpected argument color"),
    ([("triangle_area", {"base": 10, "height": 5})], "called triangle_area, expected calculate_triangle_area"),
    ([], "no tool call"),
    ([("calculate_triangle_area", {"base": 10, "height": 5})] * 2, "2 calls, expected 1"),
])
def test_bfcl_rule_on_hand_made_calls(calls, reason):
    assert tools.check(calls, TRUTH) == reason


def test_strings_compare_as_bfcl_does_and_booleans_are_not_numbers():
    truth = [{"f": {"city": ["San Francisco, CA"], "flag": [True]}}]
    assert tools.check([("f", {"city": "san francisco CA", "flag": True})], truth) is None
    assert tools.check([("f", {"city": "San Francisco, CA", "flag": 1})], truth) == "flag=1 not in [true]"


def test_parallel_calls_match_in_any_order():
    truth = [{"f": {"x": [1]}}, {"f": {"x": [2]}}]
    assert tools.check([("f", {"x": 2}), ("f", {"x": 1})], truth) is None
    assert tools.check([("f", {"x": 2}), ("f", {"x": 2})], truth) == "x=2 not in [1]"


def test_bfcl_items_become_openai_tools_and_training_rows_never_hold_out_items(shared_data):
    items = tools.load_items(shared_data, "simple_python")
    assert len(items) == 400 and items[0].tools[0]["function"]["parameters"]["type"] == "object"
    held = [i.id for i in items if tools.held_out(i.id)]
    assert 150 < len(held) < 250  # about half
    rows = tools.training_rows(shared_data, "simple_python")
    assert len(rows) == 400 - len(held)
    first = next(i for i in items if not tools.held_out(i.id))
    call = rows[0]["messages"][-1]["tool_calls"][0]["function"]
    (name, params), = first.ground_truth[0].items()
    assert call["name"] == name and set(call["arguments"]) == {a for a, v in params.items() if "" not in v}
    # the training answer is right by the rule the suite scores with
    assert tools.check([(call["name"], call["arguments"])], first.ground_truth) is None


def test_calls_are_read_back_from_the_answer_text():
    calls = [{"function": {"name": "f", "arguments": {"x": 1}}}]
    assert extract_calls("Sure. " + format_calls(calls)) == ("Sure. ", [("f", {"x": 1})])
    assert extract_calls("<tool_call>nope</tool_call>") == ("<tool_call>nope</tool_call>", [])


def test_the_suite_runs_on_a_local_model_with_per_item_samples(tiny_model_dir, shared_data, tmp_path):
    samples = tmp_path / "samples" / "tools.jsonl"
    entry = tools.evaluate(tiny_model_dir, shared_data, ["simple_python", "multiple"], limit=2,
                           samples_path=samples, max_new_tokens=8)
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert entry["n"] == len(rows) == 4 and {r["task"] for r in rows} == {"tools_simple_python", "tools_multiple"}
    assert all(tools.held_out(r["doc_id"]) for r in rows)
    right = sum(r["metrics"]["acc"] for r in rows)
    assert entry["metrics"]["acc"] == right / 4 and all(r["reason"] for r in rows)


def test_the_harness_runs_and_caches_the_tools_suite(tiny_model_dir, shared_data, tmp_path):
    from eval.harness import run_suites
    from recipes.schema import SuiteConfig

    suite = [SuiteConfig(name="tools", subjects=["multiple"], limit=2, max_gen_toks=8)]
    first = run_suites(tiny_model_dir, suite, mirror_dir=shared_data, skills_file=None, out_dir=tmp_path / "a",
                       cache_dir=tmp_path / "cache")["suites"]["tools"]
    assert first["status"] == "ok" and first["cache"] == "miss" and first["settings"]["n_samples"]["scored"] == 2
    again = run_suites(tiny_model_dir, suite, mirror_dir=shared_data, skills_file=None, out_dir=tmp_path / "b",
                       cache_dir=tmp_path / "cache")["suites"]["tools"]
    assert again["cache"] == "hit" and again["metrics"] == first["metrics"]
