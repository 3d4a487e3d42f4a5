"""Stage `promote`: the quality gate. Moves alias `champion` to the candidate when it wins.

    lathe promote --recipe params.yaml
    lathe promote --force --reason "hotfix approved by …"
    lathe rollback
    lathe report [--out DIR]       # the report again, from stored results, evaluating nothing

The decision (every check with its numbers) is printed, written to artifacts/promote/decision.json
and added to the final report (artifacts/promote/report.{html,md}: the eval report + the decision).
A refused candidate is a result, not an error: the stage succeeds and the champion stays.
When the evaluate stage re-judged the current champion on the same settings, the gate compares
against those numbers rather than the ones stored when the champion was registered.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.manifest import stage_dir
from recipes.errors import LatheError
from recipes.schema import Recipe


def candidate_version(recipe: Recipe, root: Path) -> str:
    path = root / "register" / "manifest.json"
    if path.exists():
        return json.loads(path.read_text())["version"]
    from registry import models

    info = models.get_version(recipe.registry.model_name, "candidate")
    if info is None:
        raise LatheError(f"no candidate to promote: {path} is missing and model '{recipe.registry.model_name}' has no "
                         f"'candidate' alias. Run `lathe register` first")
    return str(info.version)


def main(recipe: Recipe, args, root: Path = Path("artifacts")) -> int:
    from registry import promotion, tracking

    if args.force and not args.reason:
        raise LatheError("--force needs --reason \"...\" (it is recorded on the model version)")
    version = args.version or candidate_version(recipe, root)
    out = stage_dir("promote", root)
    with tracking.stage_run("promote", experiment=recipe.registry.experiment):
        decision = promotion.promote(recipe.registry.model_name, version, recipe.gate, force=args.force,
                                     reason=args.reason, out_json=out / "decision.json",
                                     champion_metrics=_rejudged_champion(root), judged=_judged(root, version))
        verdict = _verdict(decision.promote)
        record = json.loads((out / "decision.json").read_text())
        verdict_md = decision_markdown(recipe.registry.model_name, version, record, _comparisons(root))
        md, html = final_report(recipe, root, out, verdict_md)
        tracking.describe_pipeline(verdict_md, _headline(root, recipe.gate.primary_metric, decision.promote))
        tracking.log_artifacts([md, html], "report")
    print(f"promote: {recipe.registry.model_name} version {version}: {verdict}")
    for check in decision.checks:
        print(f"  [{'ok' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    print(f"promote: report with the decision: {html}")
    return 0


def _judged(root: Path, version: str) -> dict | None:
    """The evaluate stage's paired comparisons, when they are about this version (the one `lathe register`
    just made from the evaluated tuned model); None for any other version."""
    registered, comparisons = root / "register" / "manifest.json", _comparisons(root)
    if not registered.exists() or comparisons is None:
        return None
    if str(json.loads(registered.read_text())["version"]) != str(version):
        return None
    return comparisons["against"]


def _headline(root: Path, primary: str, promoted: bool) -> dict:
    """The parent run's metrics: the decision and every judged model's primary metric (`tuned.<metric>`)."""
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text()) if (root / "evaluate" / "metrics.json").exists() else {}
    out = {"promoted": float(promoted)}
    for label in ("base", "tuned"):
        if primary in metrics.get(label, {}):
            out[f"{label}.{primary}"] = metrics[label][primary]
    if primary in metrics.get("champion", {}).get("metrics", {}):
        out[f"champion.{primary}"] = metrics["champion"]["metrics"][primary]
    return out


def _comparisons(root: Path) -> dict | None:
    path = root / "evaluate" / "comparisons.json"
    return json.loads(path.read_text()) if path.exists() else None


def _rejudged_champion(root: Path) -> dict[str, dict[str, float]] | None:
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text()) if (root / "evaluate" / "metrics.json").exists() else {}
    champion = metrics.get("champion")
    return {champion["version"]: champion["metrics"]} if champion else None


def _verdict(promoted: bool) -> str:
    return "PROMOTED to champion" if promoted else "NOT promoted (champion unchanged)"


def decision_markdown(model_name: str, version: str, decision: dict, comparisons: dict | None = None) -> str:
    """The report's verdict, from a decision record (`Decision.to_dict()` or decision.json): who won, against
    what, under which policy, each check with its numbers, and every significant drop vs base and champion."""
    against = decision.get("compared_with")
    forced = " (forced by a person; see the reason on the version)" if decision.get("forced") else ""
    lines = [f"**{model_name} version {version}: {_verdict(decision['promote'])}**{forced}"
             + (f" — judged against the {against}" + (" model (no champion yet: champion zero)" if against == "base" else "")
                if against else ""), ""]
    if gate := decision.get("policy"):  # decision.json records the policy it was decided under
        guards = ", ".join(gate["guards"]) if gate.get("guards") is not None else "every paired headline metric"
        lines += [f"Gate policy: primary `{gate['primary_metric']}` must rise by more than {gate['min_improvement']:g} "
                  f"and significantly (p < {gate['alpha']:g}); guards ({guards}) may not drop by more than "
                  f"{gate['max_regression']:g}"
                  + (f"; {gate['retention_metric']} ≤ {gate['max_retention']:g}" if gate.get("max_retention") is not None else "")
                  + ".", ""]
    lines += [f"- {'✔ pass' if c['passed'] else '✘ FAIL'} · **{c['name']}**: {c['detail']}" for c in decision["checks"]]
    details = {c["detail"] for c in decision["checks"]}
    lines += [f"- {reason}" for reason in decision["reasons"] if reason not in details]
    for target, record in (comparisons or {}).get("against", {}).items():
        drops = [f"`{key}` {c['delta']:+.3f} (p={c['p_value']:.2g})" for key, c in sorted(record["paired"].items())
                 if not key.startswith("_") and c["delta"] < 0 and c["p_value"] < 0.05
                 and not key.startswith("retention/")]
        name = f"champion (version {record['version']})" if target == "champion" else "base"
        lines.append(f"- Significant drops vs {name}: " + (", ".join(drops) if drops else "none (p < 0.05)"))
    return "\n".join(lines)


REPORT_ORDER = ("base", "sft", "preference", "rl", "tuned", "champion")  # models_to_judge's columns


def final_report(recipe: Recipe, root: Path, out: Path, decision_md: str | None) -> tuple[Path, Path]:
    """The eval report again, with the promotion decision (when there is one): what people read after
    `dvc repro`. Reads artifacts/evaluate/<label>/results.json and the training logs only."""
    from eval.report import write_report

    from pipelines.evaluate import (COMPARISONS, RETENTION, TRAINING, comparisons_markdown, retention_markdown,
                                    training_curves, training_history)

    results = {p.parent.name: json.loads(p.read_text()) for p in sorted((root / "evaluate").glob("*/results.json"))}
    if not results:
        raise LatheError(f"no evaluation results in {root / 'evaluate'} (<label>/results.json): nothing has been "
                         "evaluated yet. Run `lathe evaluate` (or `dvc repro evaluate`) first")
    order = [label for label in REPORT_ORDER if label in results] + sorted(set(results) - set(REPORT_ORDER))
    sections = {}
    record, paired = _comparisons(root), {}
    if record is not None:
        sections[COMPARISONS] = comparisons_markdown(record)
        if order[0] == "base" and "base" in record.get("against", {}):  # the Δ columns are vs the first label
            paired = {"tuned": record["against"]["base"]["paired"]}
    sections[RETENTION] = retention_markdown(results)
    return write_report({label: results[label] for label in order}, out, paired=paired, verdict=decision_md,
                        curves=training_history(root),
                        title=f"Lathe report — recipe '{recipe.name}'",
                        extra_sections={**sections, TRAINING: training_curves(root)})


def report(recipe: Recipe, args, root: Path = Path("artifacts")) -> int:
    """`lathe report`: rebuild report.md + report.html from stored results; evaluates nothing."""
    out = Path(args.out) if getattr(args, "out", None) else root / "report"
    decision_path = root / "promote" / "decision.json"
    decision_md = None
    if decision_path.exists():
        record = json.loads(decision_path.read_text())
        decision_md = decision_markdown(record["name"], record["candidate"], record, _comparisons(root))
    md, html = final_report(recipe, root, out, decision_md)
    print(f"report: {html} (and {md})" + ("" if decision_md else "; no promotion decision yet"))
    return 0


def rollback(recipe: Recipe, args) -> int:
    from registry import promotion

    version = promotion.rollback(recipe.registry.model_name)
    print(f"rollback: {recipe.registry.model_name} champion → version {version}")
    return 0
