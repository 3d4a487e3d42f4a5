"""Paired comparisons of two judged models, item by item, from the samples every suite writes.

    compare(base_results, base_dir, tuned_results, tuned_dir)  # {"mmlu/acc": {...Paired, suite, metric}, ...}

Both models answered the same items (same suite settings, same data hashes), so each headline metric
is compared pairwise (eval/paired.py): the mean per-item difference, its standard error, a p-value
(exact McNemar for right/wrong scores) and the smallest drop the sample could have detected. A metric
without per-item values (MMLU's macro average) is not compared here. When the two models were judged
with different settings or data, the suite is left out and the reason recorded, never compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from recipes.schema import SUITE_METRICS

from eval.paired import paired

_MUST_MATCH = ("task", "num_fewshot", "limit", "subjects", "apply_chat_template", "seed", "max_gen_toks")


def item_scores(out_dir: Path, entry: dict, metric: str) -> dict[tuple, float]:
    """{(task, doc_id): score} of one metric from a suite's samples file (written beside results.json)."""
    path = Path(out_dir) / entry["samples_file"]
    scores = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            value = row.get("metrics", {}).get(metric)
            if value is not None:
                scores[(row["task"], row["doc_id"])] = float(value)
    return scores


def compare(results_a: dict, dir_a: Path, results_b: dict, dir_b: Path, *, alpha: float = 0.05) -> dict:
    """`{"<suite>/<metric>": {...Paired.to_dict(), suite, metric, primary}}` for b (candidate) against a
    (baseline), plus `"_skipped": {suite: reason}` for suites that cannot be paired."""
    out: dict = {}
    skipped: dict[str, str] = {}
    for suite, entry_b in results_b.get("suites", {}).items():
        entry_a = results_a.get("suites", {}).get(suite, {})
        if entry_b.get("status") != "ok" or entry_a.get("status") != "ok":
            continue
        differs = _settings_differ(entry_a, entry_b)
        if differs:
            skipped[suite] = f"judged with different {', '.join(differs)}"
            continue
        for metric in entry_b.get("paired_metrics") or SUITE_METRICS.get(suite, (entry_b["primary"],)):
            a, b = item_scores(dir_a, entry_a, metric), item_scores(dir_b, entry_b, metric)
            if not (set(a) & set(b)):
                continue
            result = paired(a, b, alpha=alpha)
            out[f"{suite}/{metric}"] = {**result.to_dict(), "suite": suite, "metric": metric,
                                        "primary": metric == entry_b["primary"]}
    if skipped:
        out["_skipped"] = skipped
    return out


def _settings_differ(entry_a: dict, entry_b: dict) -> list[str]:
    sa, sb = entry_a.get("settings", {}), entry_b.get("settings", {})
    keys = [k for k in _MUST_MATCH if sa.get(k) != sb.get(k)]
    hashes = lambda s: {k: v.get("sha256") for k, v in s.get("data_files", {}).items()}  # noqa: E731
    if hashes(sa) != hashes(sb):
        keys.append("data files")
    return keys
