"""Custom evaluation suites from the user's own JSONL file, built as lm-eval tasks (offline), so the same
harness, cache, settings record, paired comparisons, gate and report serve them as any benchmark.

    eval.suites: [{name: support-tickets, file: data/eval.jsonl, kind: generate, metric: exact_match}]

A row is OpenAI's chat format plus the reference: `{"messages": [...], "answer": ...}`, or `{"prompt":
"...", "answer": ...}` for one user message; `tools` (OpenAI function tools) when the model may call
them; a row whose last message is the assistant's takes that message as its answer (an OpenAI
fine-tuning validation file works as it is). Per kind and metric:
- generate / exact_match, contains: `answer` a string; regex: `answer` a Python regex; json_schema: the
  row's `schema` (or the suite's `json_schema`); tool_call: `answer` the expected call(s)
  `{"name", "arguments"}` (or the last assistant message's `tool_calls`).
- choice: `choices` (two or more strings) and `answer` (the right one's index or text).
- judge: `answer` optional for single (shown to the judge as a reference), required for pairwise against
  the reference; pairwise against the baseline compares with the baseline model's answer to the row.
The conversation is rendered with the model's chat template, tools as `lathe serve` renders them
(chat/templates.py), so the model is asked what it is asked when served. Bad rows stop the run with
`file:line: why` for each (like the data stage); nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from chat import messages as m
from recipes.errors import LatheError
from recipes.schema import SuiteConfig

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MAX_ERRORS_SHOWN = 10
DEFAULT_MAX_GEN_TOKS = 256


def read_rows(path: Path, suite: SuiteConfig) -> list[dict]:
    """The file's rows, checked and normalised: {line, messages, tools, answer, choices, gold, schema, calls, part}."""
    if not path.is_file():
        raise LatheError(f"eval.suites[{suite.name}].file: {path} does not exist")
    rows, errors = [], []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise m.RowError(f"a row must be a JSON object, got {type(raw).__name__}")
                rows.append({"line": line_no, **_row(raw, suite)})
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{line_no}: not valid JSON: {exc.msg} at column {exc.colno}")
            except m.RowError as exc:
                errors.append(f"{path}:{line_no}: {exc}")
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  … and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise LatheError(f"eval.suites[{suite.name}]: {len(errors)} bad row(s) in {path}; fix them (nothing is "
                         f"skipped: a suite scores every row it is given):\n  {shown}{more}")
    if not rows:
        raise LatheError(f"eval.suites[{suite.name}]: {path} has no rows")
    return rows


def _row(raw: dict, suite: SuiteConfig) -> dict:
    if ("messages" in raw) == ("prompt" in raw):
        raise m.RowError('a row needs "messages" (OpenAI chat format) or "prompt" (one user message), not both')
    if "prompt" in raw:
        conversation = [{"role": "user", "content": m.text(raw["prompt"], "prompt")}]
    else:
        if not isinstance(raw["messages"], list):
            raise m.RowError("messages must be a list")
        conversation = [m.message(msg, i) for i, msg in enumerate(raw["messages"])]
        m.conversation(conversation, must_end_with_assistant=False)
    tools = m.tools(raw["tools"]) if raw.get("tools") is not None else None
    answer = raw.get("answer")
    if conversation[-1]["role"] == "assistant":  # a fine-tuning row: its last assistant message is the reference
        last = conversation.pop()
        if answer is None:
            answer = last.get("tool_calls") if suite.metric == "tool_call" else last.get("content")
        if not conversation or conversation[-1]["role"] == "assistant":
            raise m.RowError("nothing for the model to answer before the last assistant message")
    out = {"messages": conversation, "tools": tools, "answer": answer, "part": None}
    if suite.group_by:
        if raw.get(suite.group_by) is None:
            raise m.RowError(f"no {suite.group_by!r} field (eval.suites[{suite.name}].group_by)")
        out["part"] = str(raw[suite.group_by])
    _check_answer(raw, out, suite)
    return out


def _check_answer(raw: dict, out: dict, suite: SuiteConfig) -> None:
    answer = out["answer"]
    if suite.kind == "choice":
        choices = raw.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise m.RowError('"choices" must be a list of two or more non-empty strings')
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
            out["gold"] = answer
        elif isinstance(answer, str) and answer in choices:
            out["gold"] = choices.index(answer)
        else:
            raise m.RowError(f'"answer" must be the index (0–{len(choices) - 1}) or the text of one of the choices, '
                             f"got {answer!r}")
        out["choices"] = choices
    elif suite.metric == "json_schema":
        schema = raw.get("schema", suite.json_schema)
        if not isinstance(schema, dict):
            raise m.RowError('no JSON schema: give the row a "schema" object or the suite a json_schema')
        import jsonschema

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise m.RowError(f'"schema" is not a valid JSON schema: {exc.message}') from None
        out["schema"] = schema
    elif suite.metric == "tool_call":
        from eval.scoring import expected_calls

        if answer is None:
            raise m.RowError('no expected call: give "answer" {"name", "arguments"} (or end with the assistant\'s tool_calls)')
        try:
            out["calls"] = expected_calls(answer)
        except ValueError as exc:
            raise m.RowError(str(exc)) from None
        if out["tools"] is None:
            raise m.RowError('a tool_call row needs "tools" (the functions the model may call)')
    elif suite.kind == "generate" or (suite.kind == "judge" and (answer is not None or _needs_reference(suite))):
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if answer is None:
            raise m.RowError('no "answer" (the reference the answer is scored against)')
        out["answer"] = m.text(answer, "answer")
        if suite.metric == "regex":
            import re

            try:
                re.compile(out["answer"])
            except re.error as exc:
                raise m.RowError(f'"answer" is not a valid regex: {exc}') from None


def _needs_reference(suite: SuiteConfig) -> bool:
    return suite.judge.mode == "pairwise" and suite.judge.against == "reference"


def against_baseline(suite: SuiteConfig) -> bool:
    return suite.kind == "judge" and suite.judge.mode == "pairwise" and suite.judge.against == "baseline"


def prepare(suite: SuiteConfig, path: Path, tokenizer_dir: Path, task_dir: Path, *, seed: int,
            opponent: dict[int, str] | str | None = None):
    """Write the suite's data and wrapper YAML into `task_dir`; returns the PreparedSuite for the harness.
    `opponent`: for a pairwise judge against the baseline, the baseline's answer per row line, or "self"
    when this model is the baseline."""
    from transformers import AutoTokenizer

    from chat.templates import ChatFormatError, chat_format
    from eval.suites import PreparedSuite, SuiteUnavailable

    rows = read_rows(path, suite)
    if against_baseline(suite):
        if opponent is None:
            raise SuiteUnavailable(f"{suite.name}: judge.against: baseline needs the baseline model's answers",
                                   "run it in the evaluate stage (`lathe evaluate`), which judges the baseline first.")
        if opponent != "self" and (missing := [r["line"] for r in rows if r["line"] not in opponent]):
            raise SuiteUnavailable(f"{suite.name}: the baseline has no answer for line(s) {missing[:5]} of {path}",
                                   "rerun the evaluate stage: the baseline is judged on the same file first.")
    fmt = chat_format(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    task = f"lathe_{suite.name.replace('-', '_')}"
    task_dir.mkdir(parents=True, exist_ok=True)
    spec = {**suite.model_dump(mode="json"), "metrics": list(suite.metrics), "seed": seed,
            "verdicts_file": str(task_dir / "verdicts.jsonl")}
    if against_baseline(suite):  # the opponent's answers change the scores: they are part of the settings
        spec["opponent_sha256"] = "self" if opponent == "self" else hashlib.sha256(
            json.dumps(sorted(opponent.items())).encode()).hexdigest()
    (task_dir / "suite.json").write_text(json.dumps(spec))
    docs = []
    for row in rows:
        try:
            msgs, tools = fmt.conversation(row["messages"], row["tools"])
            prompt = fmt.render(msgs, tools, add_generation_prompt=True)
        except ChatFormatError as exc:
            raise LatheError(f"eval.suites[{suite.name}]: {path}:{row['line']}: {exc}") from None
        answer = row["calls"] if "calls" in row else row["answer"]
        docs.append({"_row": row["line"], "_suite": str(task_dir / "suite.json"), "prompt": prompt,
                     "target": answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False) if answer else "",
                     "part": row["part"] or "", "conversation": _transcript(row["messages"]),
                     "choices_json": json.dumps(row.get("choices")), "gold": row.get("gold", 0),
                     "schema_json": json.dumps(row.get("schema")), "calls_json": json.dumps(row.get("calls")),
                     "opponent": opponent.get(row["line"], "") if isinstance(opponent, dict) else "",
                     "_self": opponent == "self"})
    data = task_dir / f"{task}.data.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    base = "custom_choice.yaml" if suite.kind == "choice" else "custom_generate.yaml"
    config = {"include": str(TASKS_DIR / base), "task": task, "dataset_kwargs": {"data_files": {"test": str(data)}}}
    if suite.kind != "choice":
        config["metric_list"] = [{"metric": name, "aggregation": "mean", "higher_is_better": name != "judge_unparsed"}
                                 for name in suite.metrics]
        config["generation_kwargs"] = {"until": [], "do_sample": False,
                                       "max_gen_toks": suite.max_gen_toks or DEFAULT_MAX_GEN_TOKS}
    (task_dir / f"{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return PreparedSuite(suite.name, task, {"test": path.resolve()}, f"file {path.resolve()}", 0,
                         primary=suite.metrics[0], part_kind=suite.group_by, rendered=True,
                         paired_metrics=suite.metrics[:1] if suite.kind == "judge" else suite.metrics,
                         spec=spec)


def _transcript(conversation: list[dict]) -> str:
    """The conversation as the judge reads it: one `role: text` paragraph per message."""
    lines = []
    for msg in conversation:
        body = msg.get("content") or ""
        if msg.get("tool_calls"):
            body += " " + json.dumps(msg["tool_calls"], ensure_ascii=False)
        lines.append(f"{msg['role']}: {body.strip()}")
    return "\n\n".join(lines)
