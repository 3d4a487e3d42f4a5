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

CACHE = Path(".lathe/eval-cache")
ENDPOINT_OUT = "endpoint-eval"  # under artifacts/, outside every DVC output
TRAINING_STAGES = ("sft", "preference", "rl")


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


def training_curves(root: Path) -> str:
    """A Markdown section with each training stage's logged loss (the report's training curves)."""
    lines = ["## Training", "", "| stage | step | loss |", "|---|---|---|"]
    for stage in TRAINING_STAGES:
        path = root / stage / "log_history.json"
        if path.exists():
            for row in json.loads(path.read_text()):
                lines.append(f"| {stage} | {row.get('step')} | {row.get('loss', float('nan')):.4f} |")
    return "\n".join(lines)


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
    for label, model_dir in judged.items():
        results[label] = run_suites(model_dir, cfg.suites, mirror_dir=cfg.mirror_dir, skills_file=skills_file,
                                    out_dir=out / label, batch_size=cfg.batch_size, seed=cfg.seed,
                                    apply_chat_template=cfg.apply_chat_template, label=label, cache_dir=CACHE)
    md, html = write_report(results, out, title=f"Lathe evaluation report — recipe '{recipe.name}'",
                            extra_sections={"training": training_curves(root)})
    tuned, base = flat_metrics(results["tuned"]), flat_metrics(results["base"])
    metrics = {"tuned": tuned, "delta_vs_base": {k: v - base[k] for k, v in tuned.items() if k in base}}
    if champion is not None:
        metrics["champion"] = {"version": champion[0], "metrics": flat_metrics(results["champion"])}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_manifest(out, stage="evaluate", inputs={label: r.get("model_dir") for label, r in results.items()},
                   settings=cfg.model_dump(), outputs={"report_md": str(md), "report_html": str(html),
                                                       "metrics": str(out / "metrics.json")}, metrics=metrics)
    return {"report_md": md, "report_html": html, "metrics": metrics}


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
