"""How a custom `generate` suite scores one answer (eval/custom.py builds the suite; lm-eval calls
`score` through eval/tasks/custom_utils.py). Pure functions: the tests compute the same scores by hand.

    score(spec, doc, response) -> {"<metric>": 0.0 | 1.0}, reason

`spec` is the suite's options (SuiteConfig fields: metric, extract, ignore_*, json_schema); `doc` the
normalised row (eval/custom.py: `target`, `answer_json`, `schema_json`, `calls_json`).
"""

from __future__ import annotations

import json
import re
import string

from chat import messages

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.S)


def normalise(text: str, spec: dict) -> str:
    text = str(text).strip()
    if spec.get("ignore_case"):
        text = text.lower()
    if spec.get("ignore_punctuation"):
        text = text.translate(_PUNCTUATION)
    if spec.get("ignore_whitespace"):
        text = " ".join(text.split())
    return text.strip()


def extracted(response: str, pattern: str | None) -> str | None:
    """The part of the answer that is scored: the first group (or the whole match) of `extract`; None when
    the pattern does not match."""
    if not pattern:
        return response
    match = re.search(pattern, response)
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


def parse_json(text: str):
    """The answer as JSON, allowing one ```json fence around it; raises ValueError."""
    text = text.strip()
    if fenced := _FENCE.match(text):
        text = fenced.group(1).strip()
    return json.loads(text)


def score(spec: dict, doc: dict, response: str) -> tuple[float, str]:
    """(1.0 or 0.0, why) for one answer under the suite's metric."""
    metric = spec["metric"]
    answer = extracted(response, spec.get("extract"))
    if answer is None:
        return 0.0, f"extract {spec['extract']!r} found nothing"
    if metric == "exact_match":
        right = normalise(answer, spec) == normalise(doc["target"], spec)
        return float(right), "right" if right else "differs from the reference"
    if metric == "contains":
        right = normalise(doc["target"], spec) in normalise(answer, spec)
        return float(right), "right" if right else "the reference is not in the answer"
    if metric == "regex":
        right = re.search(doc["target"], answer.strip()) is not None
        return float(right), "right" if right else "the pattern does not match"
    if metric == "json_schema":
        return _json_schema(answer, json.loads(doc["schema_json"]))
    if metric == "tool_call":
        from chat.tool_calls import extract_calls
        from eval.tools import check

        _, calls = extract_calls(answer)
        reason = check(calls, json.loads(doc["calls_json"]))
        return float(reason is None), reason or "right"
    raise ValueError(f"unknown metric {metric!r}")


def _json_schema(answer: str, schema: dict) -> tuple[float, str]:
    import jsonschema

    try:
        value = parse_json(answer)
    except ValueError as exc:
        return 0.0, f"not JSON: {exc}"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return 0.0, f"invalid at {where}: {exc.message}"
    return 1.0, "right"


def expected_calls(answer) -> list[dict]:
    """A row's expected tool calls — `{"name", "arguments"}` or a list of them, arguments as an object or
    a JSON string — as BFCL ground truth (`[{name: {argument: [accepted value]}}]`) for eval/tools.check."""
    calls = answer if isinstance(answer, list) else [answer]
    truth = []
    for i, call in enumerate(calls):
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]  # an OpenAI tool_calls entry
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError(f"answer[{i}] must be {{\"name\": ..., \"arguments\": {{...}}}}")
        arguments = messages.arguments(call.get("arguments", {}), f"answer[{i}].arguments")  # RowError is a ValueError
        truth.append({call["name"]: {k: [v] for k, v in arguments.items()}})
    if not truth:
        raise ValueError("answer lists no tool call")
    return truth
