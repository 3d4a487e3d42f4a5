"""Stage `evaluate`: judge the base, SFT and tuned (preference) models on the recipe's suites with
lm-eval, and write the report.

    lathe evaluate --recipe params.yaml
    lathe evaluate --endpoint http://127.0.0.1:8000/v1 [--served-model NAME] [--tokenizer DIR]

Output: artifacts/evaluate/{<label>/results.json, report.md, report.html, metrics.json, manifest.json}.
`metrics.json` (DVC metrics) holds the tuned model's flat metrics and its deltas against the base.
When the registry has a champion, it is judged too, on the same settings, so the gate compares
like with like. Results are cached by model hash + settings under .lathe/eval-cache, so an
unchanged model is never evaluated twice (e.g. when only the preference stage changed).

With `--endpoint` it judges a model behind an OpenAI-compatible server instead (Lathe's own or vLLM),
with the recipe's suites and settings, through lm-eval's `local-completions` client; nothing of the
DVC stage is touched: the results and report go to artifacts/endpoint-eval/<served name>/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.manifest import read_manifest, stage_dir, write_manifest
from recipes.errors import LatheError
from recipes.schema import Recipe
from recipes.stages import TRAINING

CACHE = Path(".lathe/eval-cache")
ENDPOINT_OUT = "endpoint-eval"  # under artifacts/, outside every DVC output
TRAINING_STAGES = TRAINING
COMPARISONS, RETENTION, TRAINING = "Paired comparisons", "Retention: answers side by side", "Training"
"""The report's extra sections (headings), here and in the promote stage's final report."""


def models_to_judge(root: Path) -> dict[str, Path]:
    """label → model dir, in report column order (first = baseline). Each training stage that ran gets
    a column; the last one (the candidate that gets registered) is labelled `tuned`."""
    models = {"base": Path(read_manifest("base", root)["outputs"]["model_dir"])}
    outputs = {stage: read_manifest(stage, root)["outputs"] for stage in TRAINING_STAGES}
    ran = [(stage, Path(out["model_dir"])) for stage, out in outputs.items() if not out.get("skipped")]
    models.update(ran[:-1])
    models["tuned"] = ran[-1][1] if ran else models["base"]
    return models


def current_champion(recipe: Recipe) -> tuple[str, Path] | None:
    """(version, model dir) of the registry's champion, or None (no store yet, no champion)."""
    from registry import models, store, tracking

    tracking.configure(recipe.registry.tracking_uri, Path.cwd())
    db = store.current().sqlite_path
    if db is not None and not db.exists():
        return None  # first run: nothing registered yet
    info = models.get_version(recipe.registry.model_name, "champion")
    if info is None:
        return None
    return str(info.version), models.resolve(f"models:/{recipe.registry.model_name}/{info.version}")


def training_history(root: Path) -> dict[str, list[dict]]:
    """Each training stage's logged rows (step, loss, eval_loss, …) from its log_history.json."""
    return {stage: json.loads((root / stage / "log_history.json").read_text()) for stage in TRAINING_STAGES
            if (root / stage / "log_history.json").exists()}


def training_curves(root: Path) -> str:
    """A Markdown table with each training stage's logged training and validation loss."""
    lines = ["| stage | step | loss | validation loss |", "|---|---|---|---|"]
    for stage, rows in training_history(root).items():
        for row in rows:
            cells = [f"{row[k]:.4f}" if k in row else "" for k in ("loss", "eval_loss")]
            lines.append(f"| {stage} | {row.get('step')} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


FULL_SUITES = ("base", "tuned", "champion")
"""Labels judged on every suite; intermediate training stages get `eval.intermediate_suites` only."""


def suites_for(label: str, cfg) -> list:
    if label in FULL_SUITES or cfg.intermediate_suites is None:
        return cfg.suites
    return [s for s in cfg.suites if s.name in cfg.intermediate_suites]


def run_evaluate(recipe: Recipe, root: Path = Path("artifacts")) -> dict:
    from eval.harness import flat_metrics, run_suites
    from eval.report import write_report

    out = stage_dir("evaluate", root)
    data = read_manifest("data", root)["outputs"]
    skills_file = Path(data["skills_eval"]["path"]) if data["skills_eval"]["rows"] else None
    cfg = recipe.eval
    results = {}
    judged = models_to_judge(root)
    champion = current_champion(recipe)
    if champion is not None:
        judged["champion"] = champion[1]
    # The baseline (what the gate compares the candidate with) is judged first: a pairwise judge suite
    # `against: baseline` gives the other models its answers as their opponents.
    baseline = "champion" if champion is not None else "base"
    for label in [baseline] + [name for name in judged if name != baseline]:
        results[label] = run_suites(judged[label], suites_for(label, cfg), mirror_dir=cfg.mirror_dir,
                                    skills_file=skills_file, out_dir=out / label, batch_size=cfg.batch_size,
                                    seed=cfg.seed, apply_chat_template=cfg.apply_chat_template, label=label,
                                    cache_dir=CACHE, reference_dir=judged["base"],
                                    opponents=opponents(cfg, label, baseline, results, out))
    results = {label: results[label] for label in judged}  # report column order
    comparisons = paired_comparisons(results, out, recipe, champion)
    (out / "comparisons.json").write_text(json.dumps(comparisons, indent=1, sort_keys=True) + "\n")
    md, html = write_report(results, out, title=f"Lathe evaluation report — recipe '{recipe.name}'",
                            paired={"tuned": comparisons["against"]["base"]["paired"]}, curves=training_history(root),
                            extra_sections={COMPARISONS: comparisons_markdown(comparisons),
                                            RETENTION: retention_markdown(results),
                                            TRAINING: training_curves(root)})
    tuned, base = flat_metrics(results["tuned"]), flat_metrics(results["base"])
    metrics = {"tuned": tuned, "base": base,
               "delta_vs_base": {k: v - base[k] for k, v in tuned.items() if k in base}}
    if champion is not None:
        metrics["champion"] = {"version": champion[0], "metrics": flat_metrics(results["champion"])}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_manifest(out, stage="evaluate", inputs={label: r.get("model_dir") for label, r in results.items()},
                   settings=cfg.model_dump(), outputs={"report_md": str(md), "report_html": str(html),
                                                       "metrics": str(out / "metrics.json"),
                                                       "comparisons": str(out / "comparisons.json")}, metrics=metrics)
    return {"report_md": md, "report_html": html, "metrics": metrics,
            "judged": {label: flat_metrics(r) for label, r in results.items()},
            "hashes": {label: r.get("model_hash") for label, r in results.items()}}


def opponents(cfg, label: str, baseline: str, results: dict, out: Path) -> dict:
    """For each judge suite that compares answers with the baseline's (`judge.against: baseline`): "self"
    for the baseline, else the baseline's answer per row line (from its samples); none if it did not run."""
    from eval.custom import against_baseline

    found = {}
    for suite in cfg.suites:
        if not (suite.custom and against_baseline(suite)):
            continue
        if label == baseline:
            found[suite.name] = "self"
        elif (entry := results[baseline]["suites"].get(suite.name, {})).get("status") == "ok":
            # split at "\n" only: JSONL's delimiter; an answer may hold U+2028, which splitlines() also splits at
            rows = (out / baseline / entry["samples_file"]).read_text(encoding="utf-8").split("\n")
            found[suite.name] = {row["line"]: row["response"] for row in map(json.loads, filter(str.strip, rows))}
    return found


def paired_comparisons(results: dict, out: Path, recipe: Recipe, champion) -> dict:
    """The tuned model against the base ("champion zero") and against the champion, item by item
    (eval/compare.py): what the gate decides on. Written to artifacts/evaluate/comparisons.json."""
    from eval.compare import compare
    from eval.harness import flat_metrics

    alpha = recipe.gate.alpha
    record = {"candidate": {"label": "tuned", "model_hash": results["tuned"].get("model_hash"),
                            "model_dir": results["tuned"].get("model_dir")}, "against": {}}
    targets = [("base", None)] + ([("champion", champion[0])] if champion is not None else [])
    for label, version in targets:
        record["against"][label] = {
            "version": version, "model_hash": results[label].get("model_hash"),
            "metrics": flat_metrics(results[label]),
            "paired": compare(results[label], out / label, results["tuned"], out / "tuned", alpha=alpha)}
    return record


def comparisons_markdown(comparisons: dict) -> str:
    """Per comparison target, each paired metric: Δ with its SE and 95% interval, p, and the smallest
    drop the sample could have detected (80% power)."""
    lines = ["Each row compares the tuned model with the named model on the same items: Δ = tuned − other, "
             "SE of the paired difference, 95% interval, two-sided p (exact McNemar for right/wrong items, "
             "paired z otherwise) and the minimum detectable difference at 80% power (MDE): a drop smaller "
             "than the MDE may go unseen.", ""]
    for target, record in comparisons.get("against", {}).items():
        name = f"champion (version {record['version']})" if target == "champion" else "base model"
        lines += [f"**tuned vs {name}**", "", "| metric | n | other | tuned | Δ | SE | 95% interval | p | MDE |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, c in sorted(record["paired"].items()):
            if key.startswith("_"):
                continue
            lo, hi = c["ci95"]
            lines.append(f"| {key} | {c['n']} | {c['mean_a']:.3f} | {c['mean_b']:.3f} | {c['delta']:+.3f} | "
                         f"{c['se']:.3f} | [{lo:+.3f}, {hi:+.3f}] | {c['p_value']:.3g} | {c['mde']:.3f} |")
        for suite, why in record["paired"].get("_skipped", {}).items():
            lines.append(f"\n{suite}: not compared ({why}).")
        lines.append("")
    return "\n".join(lines)


def retention_markdown(results: dict) -> str:
    """Greedy answers of each judged model beside the base model's, on held-out general prompts."""
    lines = ["KL(base ‖ model) per answer token on the base model's own answers to held-out general prompts "
             "(eval/README.md): 0 = answers as the base would. Greedy answers side by side:", ""]
    entries = {label: r["suites"].get("retention", {}) for label, r in results.items()}
    entries = {label: e for label, e in entries.items() if e.get("status") == "ok" and label != "base"}
    if not entries:
        return "_The retention suite did not run._"
    first = next(iter(entries.values()))
    for i, item in enumerate(first.get("side_by_side", [])):
        lines += [f"**{item['prompt']}**", "", f"- base: {_one_line(item['base'])}"]
        for label, entry in entries.items():
            other = entry["side_by_side"][i] if i < len(entry.get("side_by_side", [])) else None
            if other:
                lines.append(f"- {label} (KL {other['kl']:.3f}): {_one_line(other['model'])}")
        lines.append("")
    return "\n".join(lines)


def _one_line(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return (text[:n] + "…") if len(text) > n else (text or "(empty)")


def endpoint_tokenizer(recipe: Recipe, served_model: str, tokenizer: str | None) -> Path:
    """--tokenizer, or the registry champion's directory when the server serves the recipe's model."""
    if tokenizer:
        return Path(tokenizer)
    if served_model != recipe.registry.model_name:
        raise LatheError(f"--tokenizer DIR is needed: the served model {served_model!r} is not the recipe's registered "
                         f"model {recipe.registry.model_name!r}, so its tokenizer cannot be taken from the registry. "
                         "Give the local Hugging Face directory holding the served model's tokenizer.")
    from registry import models

    try:
        return models.resolve("champion", default_name=recipe.registry.model_name)
    except LatheError as exc:
        raise LatheError(f"the tokenizer of {served_model!r} is taken from the registry's champion, and: {exc} "
                         "Or pass --tokenizer DIR (the served model's local Hugging Face directory).") from None


def run_endpoint_evaluate(recipe: Recipe, endpoint: str, served_model: str | None = None,
                          tokenizer: str | None = None, root: Path = Path("artifacts"),
                          cache_dir: Path | None = CACHE) -> dict:
    """The recipe's suites against `endpoint`; writes artifacts/endpoint-eval/<served name>/."""
    from eval.harness import flat_metrics, run_suites_endpoint
    from eval.report import write_report

    served_model = served_model or recipe.registry.model_name
    tokenizer_dir = endpoint_tokenizer(recipe, served_model, tokenizer)
    out = root / ENDPOINT_OUT / (re.sub(r"[^\w.-]+", "_", served_model).strip("._") or "model")
    # The held-out skills file when the data stage has run here; without it, skills is reported as not run.
    skills = read_manifest("data", root)["outputs"]["skills_eval"] if (root / "data" / "manifest.json").exists() else None
    cfg = recipe.eval
    results = run_suites_endpoint(endpoint, cfg.suites, model_name=served_model, tokenizer=tokenizer_dir,
                                  mirror_dir=cfg.mirror_dir, out_dir=out, seed=cfg.seed,
                                  skills_file=Path(skills["path"]) if skills and skills["rows"] else None,
                                  apply_chat_template=cfg.apply_chat_template, label=served_model, cache_dir=cache_dir)
    md, html = write_report({served_model: results}, out,
                            title=f"Lathe evaluation report — {served_model} served at {results['endpoint']}")
    metrics = flat_metrics(results)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return {"report_md": md, "report_html": html, "metrics": metrics, "results": results}


def main(recipe: Recipe, args) -> int:
    if getattr(args, "endpoint", None):
        return _main_endpoint(recipe, args)
    if getattr(args, "served_model", None) or getattr(args, "tokenizer", None):
        raise LatheError("--served-model and --tokenizer go with --endpoint URL (the server to evaluate)")
    from registry import tracking

    with tracking.stage_run("evaluate", params=recipe.eval.model_dump(mode="json"), experiment=recipe.registry.experiment):
        done = run_evaluate(recipe)
        tracking.log_metrics_flat(done["metrics"]["tuned"], prefix="eval.")
        tracking.log_judged_models(done["judged"], done["hashes"])
        tracking.log_artifacts([done["report_md"], done["report_html"]], "report")
    print(f"evaluate: report {done['report_html']} (and {done['report_md']})")
    for key, value in sorted(done["metrics"]["tuned"].items()):
        delta = done["metrics"]["delta_vs_base"].get(key)
        print(f"  {key:32s} {value:.3f}" + (f"  ({delta:+.3f} vs base)" if delta is not None else ""))
    return 0


def _main_endpoint(recipe: Recipe, args) -> int:
    done = run_endpoint_evaluate(recipe, args.endpoint, args.served_model, args.tokenizer)
    print(f"evaluate: {done['results']['served_model']} at {done['results']['endpoint']}: "
          f"report {done['report_html']} (and {done['report_md']})")
    for key, value in sorted(done["metrics"].items()):
        print(f"  {key:32s} {value:.3f}")
    for name, entry in done["results"]["suites"].items():
        if entry["status"] != "ok":
            print(f"  {name}: not run: {entry['reason']}")
    return 0
