"""The evaluation report: `report.md` and a self-contained `report.html` (inline CSS and SVG, no
scripts, no external links) comparing several results dicts, the first being the baseline.

Values are fractions (0-1) shown with three decimals, each with its 95% interval and n (the items scored):
Wilson's interval for right/wrong scores, ±1.96 standard errors for the others (KL, judge ratings, macro
averages). Δ is the difference to the first label: with the paired comparison's 95% interval and p-value
where one exists (the same items, eval/compare.py), else with the combined standard error sqrt(s1² + s2²);
it is marked significant only when p < 0.05. A suite scored on a limited or small sample gets a warning
that says how wide its interval is: what that sample can and cannot detect.
"""

from __future__ import annotations

import math
from pathlib import Path

from eval.report_html import LEGEND, render_html, text


CONTINUOUS = {"kl", "nll", "nll_base", "nll_gap", "judge_score", "win_rate", "judge_unparsed", "acc_macro"}
"""Metrics that are not a share of right answers: their interval is ±1.96 SE, not Wilson's."""
SMALL_SAMPLE = 100
"""Fewer items than this, or a `limit`, and the suite gets a warning with its interval's width."""


def write_report(results_by_label: dict[str, dict], out_dir: str | Path, *, title: str = "Lathe evaluation report",
                 extra_sections: dict[str, str] | None = None, paired: dict[str, dict] | None = None,
                 verdict: str | None = None, curves: dict[str, list[dict]] | None = None) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `out_dir`; returns both paths. `paired`: per label, the
    paired comparisons (eval/compare.py) of that label against the first one, `{"suite/metric": {...}}`.
    `verdict` (Markdown): the promotion decision, shown first, in a box. `curves`: per training stage, its
    logged rows (`step`, `loss`, `eval_loss`), drawn as loss curves in the HTML."""
    if not results_by_label:
        raise ValueError("write_report needs at least one results dict")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(results_by_label, paired or {})
    model["verdict"], model["curves"] = verdict, curves or {}
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(render_markdown(model, title, extra_sections or {}), encoding="utf-8")
    html_path.write_text(render_html(model, title, extra_sections or {}), encoding="utf-8")
    return md_path, html_path


# ---- the report's content, independent of the output format -------------------------------------

def build_model(results_by_label: dict[str, dict], paired: dict[str, dict] | None = None) -> dict:
    labels = list(results_by_label)
    suites: list[str] = []
    for results in results_by_label.values():
        suites += [s for s in results.get("suites", {}) if s not in suites]

    def entry(label, suite):
        return results_by_label[label].get("suites", {}).get(suite, {})

    summary = []
    for suite in suites:
        ran = [entry(lb, suite) for lb in labels if entry(lb, suite).get("status") == "ok"]
        if not ran:
            continue
        primary = ran[0]["primary"]
        names = [primary] + sorted({m for e in ran for m in e["metrics"]
                                    if not m.endswith("_stderr") and m != primary})
        for metric in names:
            summary.append({"suite": suite, "metric": metric, "primary": metric == primary,
                            "cells": [_cell(entry(lb, suite), metric) for lb in labels]})
    _add_deltas(summary, [(paired or {}).get(lb, {}) for lb in labels[1:]])
    return {
        "warnings": _sample_warnings(labels, suites, entry, summary),
        "labels": labels,
        "models": [{"label": lb, "model_dir": r.get("model_dir") or _served(r), "model_hash": r.get("model_hash"),
                    "lm_eval_version": r.get("lm_eval_version"), "created": r.get("created")}
                   for lb, r in results_by_label.items()],
        "summary": summary,
        "not_run": [{"label": lb, "suite": s, "reason": entry(lb, s).get("reason", ""), "fix": entry(lb, s).get("fix", "")}
                    for lb in labels for s in suites if entry(lb, s).get("status") == "not_run"],
        "settings": _settings(labels, suites, entry),
        "breakdowns": _breakdowns(labels, suites, entry),
        "examples": [{"suite": s, "label": lb, **entry(lb, s).get("examples", {})}
                     for s in suites for lb in labels if entry(lb, s).get("status") == "ok"],
    }


def _served(results: dict) -> str | None:
    """Where an endpoint run's model was: `<served name> at <base URL>` (there is no model dir)."""
    if not results.get("endpoint"):
        return None
    version = f" (registry version {results['served_version']})" if results.get("served_version") else ""
    return f"{results.get('served_model')} at {results['endpoint']}{version}"


def scored(entry: dict) -> int | None:
    """How many items a suite entry scored."""
    return (entry.get("settings", {}).get("n_samples") or {}).get("scored") or entry.get("n")


def _cell(entry: dict, metric: str) -> dict | None:
    if entry.get("status") != "ok" or entry["metrics"].get(metric) is None:
        return None
    return _with_text({"value": entry["metrics"][metric], "stderr": entry["metrics"].get(f"{metric}_stderr"),
                       "n": scored(entry), "proportion": metric not in CONTINUOUS})


def interval(cell: dict) -> tuple[float, float] | None:
    """The 95% interval of a cell: Wilson's for a share of right answers, ±1.96 SE otherwise."""
    from eval.paired import Z_95, wilson

    if cell.get("proportion") and cell.get("n"):
        return wilson(cell["value"] * cell["n"], cell["n"])
    if cell.get("stderr") is not None:
        return cell["value"] - Z_95 * cell["stderr"], cell["value"] + Z_95 * cell["stderr"]
    return None


def _add_deltas(rows: list[dict], paired: list[dict] | None = None) -> None:
    """Δ of every label to the first one, on each row that has both values: from the paired comparison
    where there is one (its interval and p), else with the combined standard error and no verdict."""
    for row in rows:
        base = row["cells"][0]
        row["deltas"] = []
        for i, cell in enumerate(row["cells"][1:]):
            if base is None or cell is None:
                row["deltas"].append(None)
                continue
            pair = (paired[i] if paired else {}).get(f"{row.get('suite')}/{row.get('metric')}")
            if pair:
                lo, hi = pair["ci95"]
                delta = {"value": pair["delta"], "stderr": pair["se"], "p": pair["p_value"],
                         "significant": pair["p_value"] < 0.05}
                delta["text"] = (f"{pair['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={pair['p_value']:.2g}"
                                 + ("" if delta["significant"] else " (n.s.)"))
            else:
                errs = [c["stderr"] for c in (base, cell)]
                combined = math.sqrt(sum(e * e for e in errs)) if None not in errs else None
                delta = {"value": cell["value"] - base["value"], "stderr": combined, "significant": None}
                delta["text"] = f"{delta['value']:+.3f}" + (f" (±{combined:.3f})" if combined is not None else "")
            row["deltas"].append(delta)


def _failure_notes(suite: str, labels, entry) -> list[str]:
    """Generation failures that explain a score, per model: empty answers and answers cut at max_gen_toks."""
    notes = []
    for label in labels:
        g = entry(label, suite).get("generation") if entry(label, suite).get("status") == "ok" else None
        if g and (g["empty"] or g["hit_max_tokens"]) and (g["empty"] + g["hit_max_tokens"]) * 10 >= g["n"]:
            notes.append(f"{suite} ({label}): {g['empty']} of {g['n']} answers empty, {g['hit_max_tokens']} cut at "
                         f"max_gen_toks={g['max_gen_toks']}: the score may say more about the generation settings "
                         "than the model (see the samples).")
    return notes


def _sample_warnings(labels, suites, entry, summary) -> list[str]:
    """One line per suite scored on a limited or small sample (n, the limit, its interval's width), and one
    per model whose answers failed in shape (at least 10% empty or cut at max_gen_toks)."""
    out = []
    for suite in suites:
        entries = [entry(lb, suite) for lb in labels if entry(lb, suite).get("status") == "ok"]
        cells = [r["cells"] for r in summary if r["suite"] == suite and r["primary"]]
        if not entries or not cells:
            continue
        out += _failure_notes(suite, labels, entry)
        n, limit = scored(entries[0]), entries[0].get("settings", {}).get("limit")
        available = (entries[0].get("settings", {}).get("n_samples") or {}).get("available")
        if n is None or (limit is None and n >= SMALL_SAMPLE):
            continue
        first = next((c for c in cells[0] if c is not None), None)
        bounds = interval(first) if first else None
        width = f"; its 95% interval is {bounds[1] - bounds[0]:.2f} wide" if bounds else ""
        cut = f" (limit {limit}{f' of {available} available' if available else ''})" if limit else ""
        out.append(f"{suite}: scored on {n} items{cut}{width}: a difference smaller than that cannot be told "
                   "from noise; compare the paired MDE below before trusting a small Δ.")
    return out


_SETTING_KEYS = ("backend", "num_fewshot", "limit", "apply_chat_template", "batch_size", "seed", "filters", "gen_kwargs",
                 "n_samples", "data_source")


def _settings(labels, suites, entry) -> list[dict]:
    """Per suite: the settings that change a score, and whether the labels used different ones."""
    out = []
    for suite in suites:
        per_label = {lb: entry(lb, suite)["settings"] for lb in labels if entry(lb, suite).get("status") == "ok"}
        if not per_label:
            continue
        first = next(iter(per_label.values()))
        shown = {k: first.get(k) for k in _SETTING_KEYS}
        shown["data sha256"] = ", ".join(f"{k}: {v['sha256'][:12]}" for k, v in list(first["data_files"].items())[:4])
        if len(first["data_files"]) > 4:
            shown["data sha256"] += f", … ({len(first['data_files'])} files)"
        shown["lm_eval"] = first.get("versions", {}).get("lm_eval")
        compare = ("backend", "num_fewshot", "limit", "apply_chat_template", "seed", "filters", "gen_kwargs", "data_files", "versions")
        differs = [k for k in compare if len({repr(s.get(k)) for s in per_label.values()}) > 1]
        out.append({"suite": suite, "settings": shown, "differs": differs})
    return out


def _breakdowns(labels, suites, entry) -> list[dict]:
    """Tables of per-part scores (MMLU categories and subjects, skills) with deltas to the first label."""
    tables = []
    for suite in suites:
        kinds: list[str] = []
        for lb in labels:
            kinds += [k for k in entry(lb, suite).get("breakdown", {}) if k not in kinds]
        for kind in kinds:
            parts: list[str] = []
            metric = None
            for lb in labels:
                table = entry(lb, suite).get("breakdown", {}).get(kind, {})
                parts += [p for p in table if p not in parts]
                metric = metric or entry(lb, suite).get("primary")
            rows = []
            for part in parts:
                cells = []
                for lb in labels:
                    values = entry(lb, suite).get("breakdown", {}).get(kind, {}).get(part)
                    cells.append(None if values is None or values.get(metric) is None else _with_text(
                        {"value": values[metric], "stderr": values.get(f"{metric}_stderr"), "n": values.get("n"),
                         "proportion": metric not in CONTINUOUS}))
                rows.append({"part": part, "cells": cells})
            _add_deltas(rows)
            tables.append({"suite": suite, "kind": kind, "metric": metric, "rows": rows})
    return tables


# ---- Markdown --------------------------------------------------------------------------------------

def _with_text(cell: dict) -> dict:
    bounds, n = interval(cell), cell.get("n")
    cell["ci"] = bounds
    cell["text"] = (f"{cell['value']:.3f}" + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "")
                    + (f" n={n}" if n else ""))
    return cell


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(model: dict, title: str, extra: dict[str, str]) -> str:
    labels, base = model["labels"], model["labels"][0]
    out = [f"# {title}", ""]
    if model.get("verdict"):
        out += ["## Verdict", "", *[f"> {line}" if line else ">" for line in model["verdict"].splitlines()], ""]
    out += [LEGEND.format(base=f"**{base}**"), "", "## Models", ""]
    out.append(_md_table(["label", "model dir", "model hash", "lm-eval"],
                         [[m["label"], m["model_dir"], (m["model_hash"] or "")[:12], m["lm_eval_version"]]
                          for m in model["models"]]))
    out += ["", "## Summary", ""]
    header = ["suite", "metric"] + labels + [f"Δ {lb} vs {base}" for lb in labels[1:]]
    rows = [[r["suite"], f"**{r['metric']}**" if r["primary"] else r["metric"]]
            + [text(c) for c in r["cells"]] + [text(d) for d in r["deltas"]] for r in model["summary"]]
    out.append(_md_table(header, rows) if rows else "_No suite ran._")
    out += [""] + [f"> ⚠ {w}" for w in model["warnings"]] if model["warnings"] else []
    if model["not_run"]:
        out += ["", "## Not run", ""]
        out += [f"- **{n['suite']}** ({n['label']}): {n['reason']}  \n  Fix: {n['fix']}" for n in model["not_run"]]
    out += ["", "## Settings", ""]
    for s in model["settings"]:
        out.append(f"**{s['suite']}**: " + "; ".join(f"{k}: {v}" for k, v in s["settings"].items()))
        if s["differs"]:
            out.append(f"  \n⚠ The labels were evaluated with different {', '.join(s['differs'])}: "
                       "the scores are not directly comparable.")
        out.append("")
    for table in model["breakdowns"]:
        out += [f"## {table['suite']} by {table['kind']} ({table['metric']})", ""]
        out.append(_md_table([table["kind"], *labels] + [f"Δ {lb}" for lb in labels[1:]],
                             [[r["part"]] + [text(c) for c in r["cells"]] + [text(d) for d in r["deltas"]]
                              for r in table["rows"]]))
        out.append("")
    out += ["## Sample outputs", ""]
    for ex in model["examples"]:
        for kind in ("right", "wrong"):
            for item in ex.get(kind, []):
                part = f" [{item['part']}]" if item.get("part") else ""
                out += [f"**{ex['suite']} / {ex['label']} / {kind}**{part} — target: `{_inline(item['target'])}`, "
                        f"response: `{_inline(item['response'])}`"
                        + (f", extracted: `{_inline(item['filtered'])}`" if "filtered" in item else "")
                        + (f", judge: `{_inline(item['judge'])}`" if "judge" in item else ""), "",
                        "```text", item["prompt"].replace("```", "ʼʼʼ"), "```", ""]
    for heading, body in extra.items():
        out += [f"## {heading}", "", body.rstrip(), ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    return str(text).replace("`", "ʼ").replace("\n", "⏎")
