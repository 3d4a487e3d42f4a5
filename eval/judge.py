"""An LLM judge for custom `judge` suites, behind any OpenAI-compatible endpoint (recipes/eval_schema.py
`JudgeConfig`). lm-eval generates the model's answers; `judge` grades each one (eval/tasks/custom_utils.py).

- single: the judge rates the answer against the rubric (and the row's reference answer when given):
  1–10 (`judge_score` = rating / 10) or PASS/FAIL (`judge_pass`).
- pairwise: the judge picks the better of the model's answer and its opponent's — the row's reference
  answer, or the baseline model's answer (the champion, else the base; `against: baseline`); which one
  is shown first is decided per item by a seeded hash, so a judge's position bias cancels over a suite.
  `win_rate`: win 1, tie ½, loss 0; the baseline itself, and an answer identical to the baseline's, tie.
- The verdict is asked with `response_format: json_schema` (a short reason, then the verdict) unless
  `structured: false`; otherwise, or when the reply is not JSON, it is read from "[[…]]" in the text.
  A verdict that cannot be read scores as the worst verdict and counts in `judge_unparsed`.
- Every judge prompt and raw reply is appended to the suite's verdicts file; the harness puts them in
  the samples beside the answer they grade.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from recipes.errors import LatheError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
REASON_CHARS = 400  # the reason comes first (a judge that explains grades better) but must leave room for the verdict

_clients: dict = {}


def template_path(mode: str) -> Path:
    return PROMPTS_DIR / f"judge_{mode}.txt"


def verdicts(spec: dict) -> list[str]:
    judge = spec["judge"]
    if judge["mode"] == "pairwise":
        return ["A", "B", "tie"]
    return [str(n) for n in range(1, 11)] if judge["scale"] == "score10" else ["PASS", "FAIL"]


def _instruction(spec: dict) -> str:
    judge, allowed = spec["judge"], verdicts(spec)
    if judge["mode"] == "pairwise":
        what = 'the better answer: "A", "B", or "tie" when neither is better'
    elif judge["scale"] == "score10":
        what = "a rating from 1 (useless) to 10 (perfect) as an integer"
    else:
        what = '"PASS" if the answer meets the rubric, else "FAIL"'
    if judge["structured"]:
        return (f'Reply with a JSON object: "reason" (one or two sentences) and then "verdict": {what}.')
    return f"Explain briefly, then give your verdict, {what}, in double brackets, e.g. [[{allowed[0]}]]."


def response_format(spec: dict) -> dict:
    if spec["judge"]["scale"] == "score10" and spec["judge"]["mode"] == "single":
        verdict = {"type": "integer", "minimum": 1, "maximum": 10}
    else:
        verdict = {"type": "string", "enum": verdicts(spec)}
    schema = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": REASON_CHARS},
                                               "verdict": verdict},
              "required": ["reason", "verdict"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}


def candidate_first(seed: int, row: int) -> bool:
    """Whether the model's answer is shown as A (seeded per item, so reruns ask the same way)."""
    return hashlib.sha256(f"{seed}:{row}".encode()).digest()[0] % 2 == 0


def prompt(spec: dict, doc: dict, response: str) -> tuple[str, str | None]:
    """(the judge prompt, the order "candidate-first" / "reference-first" for pairwise, else None)."""
    judge = spec["judge"]
    text = template_path(judge["mode"]).read_text(encoding="utf-8")
    fields = {"rubric": judge["rubric"].strip(), "conversation": doc["conversation"], "instruction": _instruction(spec)}
    if judge["mode"] == "pairwise":
        first = candidate_first(spec["seed"], doc["_row"])
        other = doc["opponent"] if judge.get("against") == "baseline" else doc["target"]
        a, b = (response, other) if first else (other, response)
        return text.format(**fields, answer_a=a, answer_b=b), "candidate-first" if first else "reference-first"
    reference = f"\n[A reference answer]\n{doc['target']}\n[End of the reference answer]\n" if doc["target"] else ""
    return text.format(**fields, reference_block=reference, answer=response), None


def parse(spec: dict, content: str) -> str | None:
    """The verdict in the judge's reply, or None when it cannot be read."""
    allowed = verdicts(spec)
    found = None
    try:
        value = json.loads(content)
        found = str(value.get("verdict")) if isinstance(value, dict) and "verdict" in value else None
    except ValueError:
        match = (re.search(r'"verdict"\s*:\s*"?([A-Za-z0-9]+)', content)  # a JSON reply cut short
                 or re.search(r"\[\[\s*([A-Za-z0-9]+)\s*\]\]", content))
        found = match.group(1) if match else None
    if found is None:
        return None
    for verdict in allowed:
        if found.strip().lower() == verdict.lower():
            return verdict
    return None


def score(spec: dict, verdict: str | None, order: str | None) -> float:
    """The item's score in [0, 1] (unreadable: the worst)."""
    judge = spec["judge"]
    if verdict is None:
        return 0.0
    if judge["mode"] == "pairwise":
        if verdict == "tie":
            return 0.5
        return float((verdict == "A") == (order == "candidate-first"))
    if judge["scale"] == "score10":
        return int(verdict) / 10
    return float(verdict == "PASS")


def judge(spec: dict, doc: dict, response: str) -> tuple[float, bool]:
    """(score, unparsed) for one answer; appends the prompt and raw reply to the suite's verdicts file.
    Against the baseline, the baseline itself and an answer identical to the baseline's are ties (½)
    without a judge call."""
    if spec["judge"].get("against") == "baseline" and (doc["_self"] or response.strip() == doc["opponent"].strip()):
        text, order, verdict, value = None, None, "tie", 0.5
        content = "the baseline itself: a tie by definition" if doc["_self"] else "identical to the baseline's answer: a tie"
    else:
        text, order = prompt(spec, doc, response)
        content = ask(spec, text)
        verdict = parse(spec, content)
        value = score(spec, verdict, order)
    with open(spec["verdicts_file"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"row": doc["_row"], "judge_prompt": text, "raw": content, "verdict": verdict,
                             "order": order, "score": value}, ensure_ascii=False) + "\n")
    return value, verdict is None


def ask(spec: dict, text: str) -> str:
    import openai

    judge = spec["judge"]
    key = os.environ.get(judge["api_key_env"]) if judge.get("api_key_env") else None
    if judge.get("api_key_env") and not key:
        raise LatheError(f"judge: the environment variable {judge['api_key_env']} (judge.api_key_env) is not set")
    client_key = (judge["endpoint"], key)
    if client_key not in _clients:
        _clients[client_key] = openai.OpenAI(base_url=judge["endpoint"], api_key=key or "none", max_retries=2, timeout=300)
    extra = {"response_format": response_format(spec)} if judge["structured"] else {}
    try:
        reply = _clients[client_key].chat.completions.create(
            model=judge["model"], messages=[{"role": "user", "content": text}], temperature=0,
            max_tokens=judge["max_tokens"], **extra)
    except openai.APIError as exc:
        raise LatheError(f"judge {judge['model']} at {judge['endpoint']}: {exc}") from None
    return reply.choices[0].message.content or ""
