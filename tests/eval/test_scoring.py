"""The scores are right: lm-eval's numbers checked against a direct transformers computation, the
GSM8K answer extraction on known strings, HellaSwag's few-shot never shows the scored item, and the
skills suite scores exactly what `model.generate` produces."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from eval.harness import run_suites
from eval.suites import MMLU_DIR, HELLASWAG_FILE
from recipes.schema import SuiteConfig
from tests.eval.conftest import write_jsonl


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context), tokenised the way lm-eval's hf backend does: the pair is encoded
    whole and the continuation is what follows the context's own tokens."""
    import torch

    whole = tok(context + continuation, add_special_tokens=False).input_ids
    n_context = len(tok(context, add_special_tokens=False).input_ids)
    assert len(whole) <= 512, "keep the check inside the tiny model's window (no truncation)"
    with torch.no_grad():
        logprobs = model(torch.tensor([whole[:-1]])).logits.log_softmax(-1)[0]
    return sum(logprobs[i - 1, whole[i]].item() for i in range(n_context, len(whole)))


def _rows(out_dir: Path, entry: dict) -> list[dict]:
    return [json.loads(line) for line in (out_dir / entry["samples_file"]).read_text().splitlines()]


def test_mmlu_choice_loglikelihoods_and_acc_match_a_direct_forward_pass(tiny_model_dir, shared_data, tiny, tmp_path):
    results = run_suites(tiny_model_dir, [SuiteConfig(name="mmlu", subjects=["anatomy"], limit=2, num_fewshot=1)],
                         mirror_dir=shared_data, skills_file=None, out_dir=tmp_path, batch_size=4)
    entry = results["suites"]["mmlu"]
    rows = _rows(tmp_path, entry)
    assert len(rows) == 2
    read = lambda split: list(csv.DictReader(open(shared_data / MMLU_DIR / split / f"anatomy_{split}.csv",
                                                  newline="", encoding="utf-8")))
    dev, test = read("dev"), read("test")

    def block(row):
        return (f"{row['question'].strip()}\nA. {row['choice0']}\nB. {row['choice1']}\nC. {row['choice2']}\n"
                f"D. {row['choice3']}\nAnswer:")

    model, tok = tiny
    letters = ["A", "B", "C", "D"]
    correct = 0
    for row in rows:
        doc = test[int(row["doc_id"])]
        # The stock MMLU prompt, built by hand: description, first dev item with its answer, the question.
        prompt = ("The following are multiple choice questions (with answers) about anatomy.\n\n"
                  + block(dev[0]) + " " + letters[int(dev[0]["answer"])] + "\n\n" + block(doc))
        assert row["prompt"] == prompt
        direct = [loglikelihood(model, tok, prompt, " " + letter) for letter in letters]
        assert row["loglikelihoods"] == pytest.approx(direct, abs=2e-3)
        predicted = max(range(4), key=direct.__getitem__)
        assert row["metrics"]["acc"] == float(predicted == int(doc["answer"]))
        correct += predicted == int(doc["answer"])
    assert entry["metrics"]["acc"] == pytest.approx(correct / 2)


def test_hellaswag_acc_and_acc_norm_match_a_direct_forward_pass(tiny_model_dir, shared_data, tiny, tmp_path):
    from lm_eval.tasks.hellaswag.utils import preprocess  # the stock task's own text clean-up

    results = run_suites(tiny_model_dir, [SuiteConfig(name="hellaswag", limit=2, num_fewshot=0)],
                         mirror_dir=shared_data, skills_file=None, out_dir=tmp_path, batch_size=4)
    entry = results["suites"]["hellaswag"]
    docs = [json.loads(line) for line in (shared_data / HELLASWAG_FILE).read_text().splitlines()[:2]]
    model, tok = tiny
    acc, acc_norm = [], []
    for row in _rows(tmp_path, entry):
        doc = docs[int(row["doc_id"])]
        context = preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
        endings = [preprocess(e) for e in doc["endings"]]
        assert row["prompt"] == context
        direct = [loglikelihood(model, tok, context, " " + e) for e in endings]
        assert row["loglikelihoods"] == pytest.approx(direct, abs=2e-3)
        gold = int(doc["label"])
        acc.append(float(max(range(4), key=direct.__getitem__) == gold))
        acc_norm.append(float(max(range(4), key=lambda i: direct[i] / len(endings[i])) == gold))
        assert (row["metrics"]["acc"], row["metrics"]["acc_norm"]) == (acc[-1], acc_norm[-1])
    assert entry["metrics"]["acc"] == pytest.approx(sum(acc) / 2)
    assert entry["metrics"]["acc_norm"] == pytest.approx(sum(acc_norm) / 2)


def test_hellaswag_few_shot_never_shows_the_scored_item(tiny_model_dir, shared_data, tmp_path):
    """The mirror has no train split, so few-shot examples come from the scored file itself."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    lines = (shared_data / HELLASWAG_FILE).read_text().splitlines()[:3]
    mirror = tmp_path / "mirror"
    (mirror / "hellaswag").mkdir(parents=True)
    (mirror / HELLASWAG_FILE).write_text("\n".join(lines) + "\n")
    results = run_suites(tiny_model_dir, [SuiteConfig(name="hellaswag", num_fewshot=2)], mirror_dir=mirror,
                         skills_file=None, out_dir=tmp_path / "out", batch_size=4)
    docs = [json.loads(line) for line in lines]
    queries = [preprocess(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize()) for d in docs]
    rows = _rows(tmp_path / "out", results["suites"]["hellaswag"])
    assert len(rows) == 3
    for row in rows:
        own = int(row["doc_id"])
        assert row["prompt"].endswith(queries[own]) and row["prompt"].count(queries[own]) == 1
        assert all(q in row["prompt"] for i, q in enumerate(queries) if i != own)  # the other two are the shots


def test_gsm8k_answer_extraction_on_known_strings(tiny_model_dir, shared_data, tmp_path):
    """The suite's strict-match and flexible-extract filters and exact-match scoring (from the stock
    GSM8K config, through our offline wrapper) applied to known model outputs."""
    from lm_eval.api.instance import Instance
    from lm_eval.filters import build_filter_ensemble
    from lm_eval.tasks import TaskManager

    from eval.suites import prepare

    prepare(SuiteConfig(name="gsm8k"), mirror_dir=shared_data, skills_file=None, task_dir=tmp_path)
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["lathe_gsm8k"])["tasks"]["lathe_gsm8k"]
    doc = next(iter(task.test_docs()))  # Janet's ducks: "#### 18"
    outputs = {  # model output → (strict-match, flexible-extract) exact match
        "16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18": (1.0, 1.0),
        "#### 18.": (1.0, 1.0),                    # a final "." is ignored by the metric
        "#### $18": (0.0, 1.0),                    # strict wants a digit right after "#### "
        "She makes $18 every day.": (0.0, 1.0),    # no "####": only the flexible filter finds it
        "The answer is 18, no 17.": (0.0, 0.0),    # flexible takes the last number
        "#### 17\nQuestion: next": (0.0, 0.0),
    }
    filters = {f["name"]: build_filter_ensemble(f["name"], [(step["function"], {k: v for k, v in step.items()
                                                                                 if k != "function"})
                                                            for step in f["filter"]])
               for f in task.config.filter_list}
    for text, expected in outputs.items():
        scores = []
        for name in ("strict-match", "flexible-extract"):
            inst = Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0)
            inst.resps = [text]
            filters[name].apply([inst])
            scores.append(task.process_results(doc, [inst.filtered_resps[name]])["exact_match"])
        assert tuple(scores) == expected, text


def test_skills_scores_exactly_what_model_generate_produces(tiny_model_dir, tmp_path):
    """Golden check: greedy `model.generate` on the chat-templated prompt, by hand, vs the suite."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A chat template that ends on the user's words: the random tiny model then echoes the prompt's
    # last word, so different prompts give different, non-empty answers.
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [("echo", "the cat sat on"), ("echo", "hello world"), ("count", "one two three"),
               ("count", "12 plus 7"), ("json", 'json name value true')]
    generated = []
    for _, prompt in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        generated.append(tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))
    assert len({g.strip() for g in generated}) > 1 and all(g.strip() for g in generated)
    right = {0, 2, 3}  # rows whose reference is the model's own answer; the others get a wrong one
    rows = [{"skill": skill, "prompt": prompt, "answer": generated[i].strip() if i in right else "nope"}
            for i, (skill, prompt) in enumerate(prompts)]
    skills_file = write_jsonl(tmp_path / "skills.jsonl", rows)

    results = run_suites(model_dir, [SuiteConfig(name="skills", max_gen_toks=12)], mirror_dir=tmp_path,
                         skills_file=skills_file, out_dir=tmp_path / "out", batch_size=4)
    entry = results["suites"]["skills"]
    samples = sorted(_rows(tmp_path / "out", entry), key=lambda r: int(r["doc_id"]))
    assert [s["response"] for s in samples] == generated
    assert [s["correct"] for s in samples] == [i in right for i in range(len(prompts))]
    assert entry["metrics"]["exact_match"] == pytest.approx(len(right) / len(prompts))
    assert entry["breakdown"]["skill"] == {"count": {"exact_match": 1.0, "n": 2},
                                           "echo": {"exact_match": 0.5, "n": 2},
                                           "json": {"exact_match": 0.0, "n": 1}}


# ---------------------------------------------------------------- custom generate metrics (eval/scoring.py)

DEFAULTS = {"ignore_case": True, "ignore_punctuation": True, "ignore_whitespace": True, "extract": None}


@pytest.mark.parametrize("metric,options,target,response,expected", [
    ("exact_match", {}, "Paris", "  paris.\n", 1.0),
    ("exact_match", {}, "New York", "new   york!", 1.0),
    ("exact_match", {}, "Paris", "Paris, France", 0.0),
    ("exact_match", {"ignore_case": False}, "Paris", "paris", 0.0),
    ("exact_match", {"ignore_punctuation": False}, "4", "4.", 0.0),
    ("exact_match", {"extract": r"(?i)answer:\s*(\S+)"}, "42", "Let me think. Answer: 42", 1.0),
    ("exact_match", {"extract": r"(?i)answer:\s*(\S+)"}, "42", "42", 0.0),  # no match: nothing to score
    ("contains", {}, "Paris", "The capital is PARIS.", 1.0),
    ("contains", {}, "Lyon", "The capital is Paris.", 0.0),
    ("regex", {}, r"^\d{3}-\d{4}$", " 555-1234\n", 1.0),
    ("regex", {}, r"^\d{3}-\d{4}$", "call 555-1234", 0.0),
])
def test_text_metrics(metric, options, target, response, expected):
    from eval.scoring import score

    value, reason = score({**DEFAULTS, **options, "metric": metric}, {"target": target}, response)
    assert value == expected, reason


@pytest.mark.parametrize("response,expected,why", [
    ('{"name": "Ada", "age": 36}', 1.0, "right"),
    ('```json\n{"name": "Ada", "age": 36}\n```', 1.0, "right"),
    ('{"name": "Ada", "age": "36"}', 0.0, "invalid at age"),
    ('{"name": "Ada"', 0.0, "not JSON"),
])
def test_json_schema_metric(response, expected, why):
    from eval.scoring import score

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    value, reason = score({**DEFAULTS, "metric": "json_schema"}, {"schema_json": json.dumps(schema)}, response)
    assert value == expected and reason.startswith(why)


def test_tool_call_metric_uses_bfcl_rule_on_the_expected_calls():
    from eval.scoring import expected_calls, score

    truth = expected_calls({"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'})
    assert truth == [{"get_weather": {"city": ["Paris"], "unit": ["c"]}}]
    doc = {"calls_json": json.dumps(truth)}
    spec = {**DEFAULTS, "metric": "tool_call"}
    right = '<tool_call>{"name": "get_weather", "arguments": {"unit": "c", "city": "paris"}}</tool_call>'
    assert score(spec, doc, right) == (1.0, "right")  # BFCL's rule: case and order do not matter
    assert score(spec, doc, "It is sunny.")[0] == 0.0
    wrong = '<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "c"}}</tool_call>'
    assert "city" in score(spec, doc, wrong)[1]
    with pytest.raises(ValueError, match="answer\\[0\\]"):
        expected_calls([{"arguments": {}}])
