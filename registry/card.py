"""The model card: a Markdown page stored with every registered version (MODEL_CARD.md and the
version description). Pure text from the recipe, the metrics and the data manifest; no MLflow."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_MANIFEST_ROWS = 40


def model_card(name: str, version: str | None = None, *, recipe: Mapping[str, Any] | Any, metrics: Mapping[str, float],
               data_manifest: Mapping[str, Any] | None = None,
               baseline_metrics: Mapping[str, float] | None = None) -> str:
    """Markdown card: base model, data, training recipe, evaluation table (with the base model's
    scores and the change when `baseline_metrics` is given), intended use and limitations.
    `version` may be None: the card is usually written before the version number exists."""
    if hasattr(recipe, "model_dump"):
        recipe = recipe.model_dump(mode="json")
    model = recipe.get("model", {})
    title = f"# {name}" + (f" — version {version}" if version else "")
    lines = [title, "", f"Fine-tuned from `{model.get('id', 'unknown')}` by the Lathe recipe `{recipe.get('name', '?')}`.", ""]
    lines += _section("Base model", [f"- id: `{model.get('id')}`", f"- revision: `{model.get('revision') or 'default'}`",
                                     f"- saved dtype: `{model.get('dtype')}`"])
    lines += _section("Data", _data_lines(recipe.get("data", {}), data_manifest))
    lines += _section("Training", _training_lines(recipe))
    lines += _section("Evaluation", _eval_lines(metrics, baseline_metrics))
    lines += _section("Intended use", [
        "A small instruction-following model produced by an automated fine-tuning pipeline, for "
        "experiments and for demonstrating the model lifecycle (train → evaluate → gate → serve).",
        "Use it where its measured scores above are good enough; re-evaluate on your own data first."])
    lines += _section("Limitations", [
        "- Scores come from the benchmark subsets listed above (often limited item counts): small samples, wide error bars.",
        "- The model inherits the base model's biases and knowledge limits; fine-tuning data can add its own.",
        "- It can state wrong things confidently. Do not use it for medical, legal or financial advice "
        "or for decisions about people without human review.",
    ])
    return "\n".join(lines).rstrip() + "\n"


def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", *body, ""]


def _data_lines(data: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> list[str]:
    skills = data.get("skills", {})
    lines = []
    if skills.get("enabled"):
        lines.append(f"- generated skills set: {skills.get('n_train')} SFT rows, {skills.get('n_preference')} "
                     f"preference pairs, {skills.get('n_eval')} held-out eval rows (seed {skills.get('seed')})")
    for kind in ("sft", "preference"):
        for spec in data.get(kind, []) or []:
            lines.append(f"- {kind}: `{spec.get('path')}` (format {spec.get('format')}, weight {spec.get('weight')})")
    if not lines:
        lines.append("- no training data listed in the recipe")
    if manifest:
        flat = _flatten(manifest)
        lines += ["", "From the data manifest:", "", "| key | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in list(flat.items())[:MAX_MANIFEST_ROWS]]
        if len(flat) > MAX_MANIFEST_ROWS:
            lines.append(f"| … | {len(flat) - MAX_MANIFEST_ROWS} more entries in the manifest |")
    return lines


def _training_lines(recipe: Mapping[str, Any]) -> list[str]:
    lines = []
    for stage in ("sft", "preference"):
        cfg = recipe.get(stage) or {}
        if not cfg.get("enabled", False):
            lines.append(f"- {stage}: skipped")
            continue
        steps = cfg.get("max_steps", -1)
        length = f"{steps} steps" if steps and steps > 0 else f"{cfg.get('epochs')} epochs"
        text = (f"- {stage}: {cfg.get('method')}, lr {cfg.get('learning_rate')}, {length}, "
                f"batch {cfg.get('batch_size')} × accum {cfg.get('grad_accum')}, seed {cfg.get('seed')}")
        if cfg.get("method") in ("lora", "qlora"):
            lora = cfg.get("lora", {})
            text += f"; LoRA r={lora.get('r')} alpha={lora.get('alpha')} targets {lora.get('target_modules')}"
        if stage == "preference":
            text += f"; loss {cfg.get('loss_type')}, beta {cfg.get('beta')}"
        lines.append(text)
    return lines


def _eval_lines(metrics: Mapping[str, float], baseline: Mapping[str, float] | None) -> list[str]:
    if not metrics:
        return ["No evaluation results were recorded."]
    if not baseline:
        return ["| metric | value |", "|---|---|", *(f"| {k} | {_number(v)} |" for k, v in sorted(metrics.items()))]
    rows = ["| metric | base model | this model | change |", "|---|---|---|---|"]
    for key, value in sorted(metrics.items()):
        old = baseline.get(key)
        change = f"{value - old:+.4f}" if isinstance(old, (int, float)) and isinstance(value, (int, float)) else "—"
        rows.append(f"| {key} | {_number(old)} | {_number(value)} | {change} |")
    return rows


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return (text[:117] + "…" if len(text) > 120 else text).replace("|", "\\|")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
