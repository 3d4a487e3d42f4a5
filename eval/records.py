"""Turn one lm-eval result into Lathe's suite entry: metrics with stderr, breakdowns, samples, examples.

Metric names: lm-eval's `<metric>,<filter>` keys become `<metric>` when the task has one filter
(`acc,none` → `acc`, `pass_at_1,create_test` → `pass_at_1`) and `<metric>_<filter>` when it has
several (`exact_match,strict-match` → `exact_match_strict-match`); the stderr of `X` is `X_stderr`.
No commas or `@`: the names are valid MLflow metric names as they are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from eval.suites import PreparedSuite

_NOT_METRICS = {"alias", "name", "sample_len", "sample_count"}
EXAMPLES_PER_KIND = 3


def clean_name(metric: str, filter_name: str, several_filters: bool) -> str:
    stderr = metric.endswith("_stderr")
    base = metric.removesuffix("_stderr")
    name = f"{base}_{filter_name}" if several_filters and filter_name != "none" else base
    return name + ("_stderr" if stderr else "")


def task_metrics(task_result: dict) -> dict[str, float | None]:
    """lm-eval's per-task (or per-group) result → {clean metric name: value}; "N/A" stderr → None."""
    keys = [k for k in task_result if k not in _NOT_METRICS and "," in k]
    several = len({k.rsplit(",", 1)[1] for k in keys}) > 1
    out = {}
    for key in keys:
        metric, filter_name = key.rsplit(",", 1)
        out[clean_name(metric, filter_name, several)] = _number(task_result[key])
    return dict(sorted(out.items()))


def suite_entry(prepared: PreparedSuite, raw: dict) -> dict:
    """The `metrics`, `primary` and `breakdown` parts of a suite entry."""
    results = raw["results"]
    entry = {"metrics": task_metrics(results[prepared.task]), "primary": prepared.primary}
    if prepared.paired_metrics:
        entry["paired_metrics"] = list(prepared.paired_metrics)
    if prepared.subtasks:  # MMLU: per category and per subject
        n = {t: raw["n-samples"][t]["effective"] for t in prepared.subtasks}
        entry["breakdown"] = {
            "category": {name: {**task_metrics(results[g]), "n": results[g].get("sample_len")}
                         for g, name in prepared.groups.items() if g in results},
            "subject": {name: {**task_metrics(results[t]), "n": n[t]}
                        for t, name in prepared.subtasks.items() if t in results},
        }
        entry["metrics"].update(_macro_average(entry["breakdown"]["subject"], "acc"))
    return entry


def _macro_average(parts: dict[str, dict], metric: str) -> dict[str, float | None]:
    """Unweighted mean over subjects (`acc_macro`), as the Open LLM Leaderboard v1 averaged MMLU;
    lm-eval's group `acc` weights each subject by its size. stderr = sqrt(sum of se²) / k."""
    values = [p[metric] for p in parts.values() if p.get(metric) is not None]
    errors = [p.get(f"{metric}_stderr") for p in parts.values()]
    if not values:
        return {}
    stderr = math.sqrt(sum(e * e for e in errors)) / len(errors) if None not in errors else None
    return {f"{metric}_macro": sum(values) / len(values), f"{metric}_macro_stderr": stderr}


def normalize_samples(prepared: PreparedSuite, raw: dict) -> list[dict]:
    """One row per (document, filter): prompt, target, response, per-sample metrics, `correct`."""
    rows = []
    for task, samples in raw["samples"].items():
        multiple_choice = raw["configs"][task]["output_type"] == "multiple_choice"
        filters = {s["filter"] for s in samples}
        for s in samples:
            args = s["arguments"]
            part = s["doc"].get("part") or None if prepared.part_kind else prepared.subtasks.get(task)
            row = {"task": task, "part": part, "doc_id": s["doc_id"], "filter": s["filter"], "prompt": args[0][0],
                   "target": s["target"]}
            if "_row" in s["doc"]:
                row["line"] = s["doc"]["_row"]  # the custom suite file's line
            if multiple_choice:
                delimiter = raw["configs"][task].get("target_delimiter", " ")
                row.update(_choice_fields(s, args, prepared.primary, delimiter))
            else:
                row.update(response=s["resps"][0][0], filtered=_unwrap(s["filtered_resps"]))
            row["metrics"] = {clean_name(m, s["filter"], len(filters) > 1): _number(s[m]) for m in s["metrics"]}
            primary = row["metrics"].get(prepared.primary)
            row["correct"] = None if primary is None else primary == 1.0
            rows.append(row)
    return rows


def _choice_fields(sample: dict, args: list, primary: str, delimiter: str) -> dict:
    """Choices, their log-likelihoods, the gold choice and the model's pick under the primary metric
    (acc: highest log-likelihood; acc_norm: highest log-likelihood per character, as lm-eval does)."""
    lls = [float(r[0]) for r in sample["filtered_resps"]]
    # Each continuation is target_delimiter + choice text; acc_norm divides by the text's length.
    choices = [a[1].removeprefix(delimiter) for a in args]
    scores = [ll / max(1, len(c)) for ll, c in zip(lls, choices)] if primary == "acc_norm" else lls
    gold = sample["target"]
    gold = int(gold) if str(gold).isdigit() else gold
    return {"choices": choices, "loglikelihoods": lls, "gold": gold,
            "target": choices[gold] if isinstance(gold, int) and 0 <= gold < len(choices) else gold,
            "response": choices[scores.index(max(scores))]}


def generation_failures(rows: list[dict], max_tokens: int | None, count_tokens) -> dict:
    """How many answers explain a low score by their shape: empty (stopped at once) and cut at
    `max_gen_toks` (e.g. a code answer stopped before it began)."""
    empty = sum(1 for r in rows if not str(r["response"]).strip())
    cut = sum(1 for r in rows if max_tokens and str(r["response"]).strip() and count_tokens(str(r["response"])) >= max_tokens)
    return {"n": len(rows), "empty": empty, "hit_max_tokens": cut, "max_gen_toks": max_tokens}


def attach_verdicts(rows: list[dict], verdicts_file: Path) -> None:
    """Put each judge prompt and raw reply (eval/judge.py) beside the answer it grades."""
    by_line = {}
    if verdicts_file.is_file():
        for line in filter(str.strip, verdicts_file.read_text(encoding="utf-8").split("\n")):  # JSONL: "\n" only
            record = json.loads(line)
            by_line[record.pop("row")] = record
    for row in rows:
        row["judge"] = by_line.get(row.get("line"))


def breakdown_by_part(rows: list[dict], primary: str, kind: str) -> dict:
    """Mean of the primary metric per `part` (e.g. per skill), from the sample rows."""
    parts: dict[str, list[float]] = {}
    for row in rows:
        if row["part"] is not None and row["metrics"].get(primary) is not None:
            parts.setdefault(row["part"], []).append(row["metrics"][primary])
    return {kind: {p: {primary: sum(v) / len(v), "n": len(v)} for p, v in sorted(parts.items())}}


def examples(rows: list[dict]) -> dict[str, list[dict]]:
    """A few right and wrong samples, shortened, for the report."""
    out = {"right": [], "wrong": []}
    for row in rows:
        if row["correct"] is None:
            continue
        kind = "right" if row["correct"] else "wrong"
        if len(out[kind]) < EXAMPLES_PER_KIND:
            out[kind].append({"part": row["part"], "prompt": _tail(row["prompt"], 600),
                              "target": _head(str(row["target"]), 300),
                              "response": _head(str(row["response"]), 400),
                              **({"filtered": _head(str(row["filtered"]), 200)} if "filtered" in row else {}),
                              **({"judge": _verdict(row["judge"])} if row.get("judge") else {})})
    return out


def _verdict(judged: dict) -> str:
    """A judge's verdict as the report shows it: `7 (reference-first): <the start of its reply>`."""
    order = f" ({judged['order']})" if judged.get("order") else ""
    return f"{judged.get('verdict') or 'unreadable'}{order}: {_head(' '.join(str(judged.get('raw')).split()), 200)}"


def write_samples(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _unwrap(value):
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" for a stderr it cannot compute (e.g. one sample)
    return None if math.isnan(number) else number


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-n:]


def _head(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "…"
