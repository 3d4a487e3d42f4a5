"""Custom suites from the user's own JSONL (eval/custom.py): each kind run through the real harness — generate
suites on the embedded SmolLM2-135M (it answers in words), choice on the tiny model — and every score
recomputed here from the model's answers (or a direct forward pass), not read back."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

from eval.harness import flat_metrics, run_suites, run_suites_endpoint
from recipes.errors import LatheError
from recipes.schema import SuiteConfig
from tests.eval.conftest import write_jsonl
from tests.eval.test_scoring import loglikelihood

PROMPTS = ["Say hi", "What is 2+2?", "Name a colour.", "Count to three.", "Spell cat."]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def _samples(out: Path, entry: dict) -> list[dict]:
    return [json.loads(line) for line in (out / entry["samples_file"]).read_text().splitlines()]


def _norm(text: str) -> str:  # the suite defaults, written out again: case, punctuation, whitespace
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def _suite(tmp: Path, name: str, rows: list[dict], **options) -> SuiteConfig:
    return SuiteConfig(name=name, file=str(write_jsonl(tmp / f"{name}.jsonl", rows)), max_gen_toks=8, **options)


@pytest.fixture(scope="module")
def answers(smollm2_dir, tmp_path_factory) -> list[str]:
    """What SmolLM2 answers to PROMPTS (greedy, 8 tokens), read from a first run."""
    tmp = tmp_path_factory.mktemp("probe")
    suite = _suite(tmp, "probe", [{"prompt": p, "answer": "zzz"} for p in PROMPTS], kind="generate", metric="contains")
    results = run_suites(smollm2_dir, [suite], mirror_dir=tmp, skills_file=None, out_dir=tmp / "out", batch_size=4)
    rows = sorted(_samples(tmp / "out", results["suites"]["probe"]), key=lambda r: r["line"])
    assert all(r["response"].strip() for r in rows), "the probe needs non-empty answers"
    return [r["response"] for r in rows]


@pytest.fixture(scope="module")
def judged(smollm2_dir, tiny_model_dir, answers, tmp_path_factory) -> tuple[Path, dict]:
    """One run of every generate metric and the choice kind, on rows built from the model's own answers."""
    tmp = tmp_path_factory.mktemp("custom")
    exact = [answers[0].upper() + "  !", "  " + answers[1].replace(" ", "   "), "wrong", answers[3], "nope"]
    suites = [
        _suite(tmp, "exact", [{"prompt": p, "answer": a, "topic": "even" if i % 2 == 0 else "odd"}
                              for i, (p, a) in enumerate(zip(PROMPTS, exact))], kind="generate",
               metric="exact_match", group_by="topic"),
        _suite(tmp, "strict", [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, exact)], kind="generate",
               metric="exact_match", ignore_case=False, ignore_punctuation=False, ignore_whitespace=False),
        _suite(tmp, "pattern", [{"prompt": PROMPTS[0], "answer": re.escape(answers[0].strip()[:2])},
                                {"prompt": PROMPTS[1], "answer": "^NEVER$"}], kind="generate", metric="regex"),
        _suite(tmp, "shape", [{"prompt": PROMPTS[2], "schema": {"type": "object"}}], kind="generate",
               metric="json_schema"),
        _suite(tmp, "calls", [{"messages": [{"role": "user", "content": "Weather in Paris?"},
                                            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}],
                               "tools": TOOLS}], kind="generate", metric="tool_call"),
        SuiteConfig(name="pick", file=str(write_jsonl(tmp / "pick.jsonl", [
            {"messages": [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Sky colour?"}],
             "choices": ["blue", "green", "red"], "answer": "blue"},
            {"prompt": "2+2?", "choices": ["3", "4"], "answer": 1}])), kind="choice"),
    ]
    results = run_suites(smollm2_dir, suites[:-1], mirror_dir=tmp, skills_file=None, out_dir=tmp / "out", batch_size=4)
    tiny = run_suites(tiny_model_dir, suites[-1:], mirror_dir=tmp, skills_file=None, out_dir=tmp / "out", batch_size=4)
    results["suites"].update(tiny["suites"])
    return tmp / "out", results


def test_exact_match_normalises_case_punctuation_and_whitespace_as_documented(judged, answers):
    out, results = judged
    entry = results["suites"]["exact"]
    rows = sorted(_samples(out, entry), key=lambda r: r["line"])
    exact = [answers[0].upper() + "  !", "  " + answers[1].replace(" ", "   "), "wrong", answers[3], "nope"]
    expected = [float(_norm(resp) == _norm(ref)) for resp, ref in zip(answers, exact)]
    assert [r["response"] for r in rows] == answers  # same prompts, same greedy answers as the probe
    assert [r["metrics"]["exact_match"] for r in rows] == expected
    assert 0 < sum(expected) < len(expected)
    assert entry["metrics"]["exact_match"] == pytest.approx(sum(expected) / len(expected))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(results["model_dir"])
    cut = sum(len(tok(a, add_special_tokens=False).input_ids) >= 8 for a in answers)
    assert entry["generation"] == {"n": 5, "empty": 0, "hit_max_tokens": cut, "max_gen_toks": 8}
    by_topic = entry["breakdown"]["topic"]
    assert by_topic["even"] == {"exact_match": pytest.approx(sum(expected[0::2]) / 3), "n": 3}
    flat = flat_metrics(results)
    assert flat["exact/exact_match"] == entry["metrics"]["exact_match"] and "exact.odd/exact_match" in flat
    # Without normalisation only the untouched answer matches.
    strict = sorted(_samples(out, results["suites"]["strict"]), key=lambda r: r["line"])
    assert [r["metrics"]["exact_match"] for r in strict] == [float(a.strip() == e.strip()) for a, e in zip(answers, exact)]


def test_regex_json_schema_and_tool_call_scores_match_an_independent_check(judged, answers):
    out, results = judged
    pattern = sorted(_samples(out, results["suites"]["pattern"]), key=lambda r: r["line"])
    assert [r["metrics"]["regex"] for r in pattern] == [
        float(re.search(r["target"], r["response"].strip()) is not None) for r in pattern] == [1.0, 0.0]

    (shape,) = _samples(out, results["suites"]["shape"])
    try:
        json.loads(shape["response"])
        parses = True
    except ValueError:
        parses = False
    assert shape["metrics"]["json_schema"] == float(parses)  # {"type": "object"} holds for any JSON object

    (call,) = _samples(out, results["suites"]["calls"])
    assert "get_weather" in call["prompt"] and "Weather in a city" in call["prompt"]  # the tools the model was shown
    assert call["target"] == '[{"get_weather": {"city": ["Paris"]}}]'  # the assistant's tool call is the reference
    assert call["metrics"]["tool_call"] == float("<tool_call>" in call["response"] and "Paris" in call["response"])


def test_choice_scores_each_option_by_its_loglikelihood_after_the_chat_template(judged, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, results = judged
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = sorted(_samples(out, results["suites"]["pick"]), key=lambda r: r["line"])
    conversations = [[{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Sky colour?"}],
                     [{"role": "user", "content": "2+2?"}]]
    golds = [0, 1]
    for row, conversation, gold in zip(rows, conversations, golds):
        prompt = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert row["prompt"] == prompt
        # lm-eval moves the context's trailing whitespace (the template's "\n" after `assistant`) into each
        # continuation: a term shared by every choice, so the pick is the choice's own log-likelihood's.
        stripped = prompt.rstrip()
        direct = [loglikelihood(model, tok, stripped, prompt[len(stripped):] + choice) for choice in row["choices"]]
        assert row["loglikelihoods"] == pytest.approx(direct, abs=2e-3)
        assert row["metrics"]["acc"] == float(max(range(len(direct)), key=direct.__getitem__) == gold)
    assert results["suites"]["pick"]["metrics"]["acc"] == pytest.approx(sum(r["metrics"]["acc"] for r in rows) / 2)


def test_bad_rows_are_refused_with_file_and_line_before_any_model_is_loaded(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "fine", "answer": "ok"}),
        "{not json",
        json.dumps({"prompt": "no answer"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "prompt": "both"}),
        json.dumps({"prompt": "x", "choices": ["a"], "answer": 0}),
    ]) + "\n")
    suite = SuiteConfig(name="mine", file=str(path), kind="generate", metric="exact_match")
    with pytest.raises(LatheError) as err:  # tmp_path is no model: the rows are checked first
        run_suites(tmp_path, [suite], mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "out")
    message = str(err.value)
    assert "3 bad row(s)" in message
    assert f"{path}:2: not valid JSON" in message
    assert f'{path}:3: no "answer"' in message
    assert f"{path}:4: a row needs" in message
    choice = SuiteConfig(name="mine", file=str(path), kind="choice")
    with pytest.raises(LatheError, match=rf"{re.escape(str(path))}:5: \"choices\" must be a list of two or more"):
        run_suites(tmp_path, [choice], mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "out")


def test_a_recipe_names_custom_metrics_in_the_gate_and_refuses_what_no_suite_reports(tmp_path):
    from pydantic import ValidationError

    from recipes import load_recipe

    suite = f"{{name: tickets, file: {tmp_path / 'e.jsonl'}, kind: generate, metric: regex}}"
    recipe = load_recipe("default", [f"eval.suites=[{suite}]", "gate.primary_metric=tickets/regex", "gate.guards=null",
                                     "gate.required=[tickets/regex]", "gate.max_retention=null",
                                     "eval.intermediate_suites=null"])
    assert recipe.eval.suites[0].metrics == ("regex",)
    with pytest.raises((ValidationError, LatheError), match="tickets reports regex"):
        load_recipe("default", [f"eval.suites=[{suite}]", "gate.primary_metric=tickets/acc", "gate.guards=null",
                                "gate.required=[]", "gate.max_retention=null", "eval.intermediate_suites=null"])
    with pytest.raises(ValueError, match="needs `file`"):
        SuiteConfig(name="tickets")
    with pytest.raises(ValueError, match="built-in suite"):
        SuiteConfig(name="mmlu", file="x.jsonl")
    with pytest.raises(ValueError, match="kind judge needs `judge`"):
        SuiteConfig(name="t", file="x.jsonl", kind="judge")


def test_custom_suites_score_the_same_through_a_server(smollm2_dir, answers, tmp_path):
    """`lathe evaluate --endpoint`: the served model is asked the same rendered prompt and answers the same."""
    from tests.serving.conftest import MODEL_NAME, running_server

    suite = _suite(tmp_path, "probe", [{"prompt": p, "answer": answers[i]} for i, p in enumerate(PROMPTS)],
                   kind="generate", metric="exact_match")
    local = run_suites(smollm2_dir, [suite], mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "local")
    with running_server(model_dir=smollm2_dir, model_name=MODEL_NAME) as base:
        served = run_suites_endpoint(f"{base}/v1", [suite], model_name=MODEL_NAME, tokenizer=smollm2_dir,
                                     mirror_dir=tmp_path, skills_file=None, out_dir=tmp_path / "served")
    entry = served["suites"]["probe"]
    assert entry["settings"]["backend"] == "local-completions"
    by_line = lambda out, e: {r["line"]: (r["prompt"], r["response"]) for r in _samples(out, e)}  # noqa: E731
    assert by_line(tmp_path / "served", entry) == by_line(tmp_path / "local", local["suites"]["probe"])
    assert entry["metrics"]["exact_match"] == local["suites"]["probe"]["metrics"]["exact_match"] == 1.0
