"""A job's workspace and recipe.

Why a workspace of stage commands and not `dvc exp run`: an experiment needs a copy of the whole
repository (git + DVC cache) per job, and reruns nothing the job does not already know it must run. A
job is always a fresh run of the same stages on new data, so the server runs them directly — the
stage commands of dvc.yaml (`lathe base|sft|preference|rl|evaluate|register`), with cwd = the job's
workspace. The stages write `./artifacts/<stage>/manifest.json` and `./.lathe/checkpoints/` relative
to cwd, so each job has its own, and nothing in the project's artifacts/ is touched:

    <state_dir>/jobs/<job id>/
        files/<file id>.jsonl    the uploaded training (and validation) file
        recipe.yaml              base recipe + the request's settings + the server's overrides
        logs/<stage>.log         each stage's output
        artifacts/, .lathe/checkpoints/   what the stages write; .lathe/eval-cache is shared by all jobs
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from recipes import LatheError, Recipe, apply_overrides
from recipes.identity import file_sha256
from recipes.loader import load_recipe, resolve_recipe_path

SUPPORTED_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet")


def fine_tuned_model_name(base: str, suffix: str | None, job_id: str) -> str:
    """`<base>:ft-<suffix>-<id>` (the served name), unique per job by the tail of its id."""
    tail = job_id.rsplit("-", 1)[-1][-8:]
    return f"{base}:ft-{suffix}-{tail}" if suffix else f"{base}:ft-{tail}"


def registry_name(fine_tuned_model: str) -> str:
    """MLflow refuses '/' and ':' in registered model names (and Lathe '@' and quotes)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", fine_tuned_model)


def file_name(file_id: str, uploaded_name: str) -> str:
    """The data stage picks the reader by extension: keep the upload's, .jsonl when it has none we read."""
    suffix = next((s for s in SUPPORTED_SUFFIXES if uploaded_name.lower().endswith(s)), ".jsonl")
    return f"{file_id}{suffix}"


def base_recipe(path_or_name: str, project_root: Path) -> dict[str, Any]:
    """The base recipe as a plain mapping: a path (relative ones against the project root) or a name under
    recipes/. Validated here, so a broken base recipe stops the server at start, naming file, line and key."""
    path = Path(path_or_name)
    if not path.is_absolute() and (project_root / path).exists():
        path = project_root / path
    path = resolve_recipe_path(path)
    load_recipe(path)
    return yaml.safe_load(path.read_text()) or {}


def job_recipe(base: dict[str, Any], *, job_id: str, spec: dict[str, Any], seed: int, base_model_dir: Path,
               train_file: str, validation_file: str | None,
               model_name: str, tracking_uri: str, project_root: Path, overrides: list[str],
               full_learning_rate: float = 1e-5) -> dict[str, Any]:
    """The recipe a job runs: `base` with the served model, the uploaded file (and nothing else) as data,
    the request's settings on the training stage, and `overrides` last. Raises LatheError (bad values)."""
    recipe = apply_overrides(base, [])  # a deep copy
    dpo = spec["method"] == "dpo"
    stage = "preference" if dpo else "sft"
    recipe["name"] = job_id
    recipe["model"] = {**recipe.get("model", {}), "id": str(base_model_dir), "revision": None}
    data = recipe.setdefault("data", {})
    files = {"sft": [{"path": train_file}], "sft_validation": [{"path": validation_file}] if validation_file else []}
    if dpo:
        files = {"preference": files["sft"], "preference_validation": files["sft_validation"]}
    data.update({"sft": [], "preference": [], "sft_validation": [], "preference_validation": [], **files,
                 "validation_fraction": 0.0, "seed": seed,
                 "on_bad_row": "skip"})  # skip: every bad row is found and named, not only the first
    data["skills"] = {**data.get("skills", {}), "enabled": False}
    data["replay"] = {**data.get("replay", {}), "enabled": False}  # a job trains the user's file as written
    train = recipe.setdefault(stage, {})
    train.update({"enabled": True, "logging_steps": 1, "merge": True, "seed": seed})  # merged: evaluate, register
    if not dpo:
        train["packing"] = False  # a job's batch_size counts the user's examples, as OpenAI and Together mean it
    # Full: every weight trained, the result a whole model (served beside the base); else the base recipe's adapter
    # method (lora or qlora), its `full` turned into lora: the result is served as an adapter on the loaded base
    if spec.get("full"):
        train["method"] = "full"
        if spec.get("learning_rate") is None:
            train["learning_rate"] = full_learning_rate  # the base recipe's rate is a LoRA one
    elif train.get("method") in (None, "full"):
        train["method"] = "lora"
    _apply_spec(train, spec, stage)
    if dpo:
        recipe.setdefault("sft", {})["enabled"] = False  # the sft stage passes the base through
    else:
        recipe.setdefault("preference", {})["enabled"] = False
    recipe.setdefault("rl", {})["enabled"] = False
    evaluation = recipe.setdefault("eval", {})
    mirror = Path(evaluation.get("mirror_dir", "../shared/data"))
    evaluation["mirror_dir"] = str(mirror if mirror.is_absolute() else (project_root / mirror).resolve())
    recipe["registry"] = {**recipe.get("registry", {}), "model_name": registry_name(model_name),
                          "tracking_uri": tracking_uri}
    recipe = apply_overrides(recipe, overrides)
    method = recipe[stage].get("method")
    if (method == "full") != bool(spec.get("full")):
        raise LatheError(f"the server's fine_tuning.overrides set {stage}.method={method}, but this is a "
                         f"{'Full' if spec.get('full') else 'LoRA'} job")
    check(recipe)
    return recipe


def _apply_spec(train: dict[str, Any], spec: dict[str, Any], stage: str) -> None:
    lora = train.setdefault("lora", {})
    for key, target in (("lora_r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                        ("target_modules", "target_modules")):
        if spec.get(key) is not None:
            lora[target] = spec[key]
    if spec.get("n_epochs") is not None:
        train["epochs"], train["max_steps"] = spec["n_epochs"], -1
    if spec.get("batch_size") is not None:
        train["batch_size"] = spec["batch_size"]
    if spec.get("learning_rate") is not None:
        train["learning_rate"] = spec["learning_rate"]
    elif spec.get("learning_rate_multiplier") is not None:
        base_lr = train.get("learning_rate") or Recipe().model_dump()[stage]["learning_rate"]
        train["learning_rate"] = float(base_lr) * spec["learning_rate_multiplier"]
    if spec.get("init_adapter"):  # from_checkpoint: that job's adapter, continued
        train["init_adapter"] = spec["init_adapter"]
    if spec.get("warmup_ratio") is not None:
        train["warmup_ratio"] = spec["warmup_ratio"]
    for key in ("lr_scheduler", "weight_decay", "max_grad_norm", "beta"):
        if spec.get(key) is not None:
            train[key] = spec[key]
    if spec.get("lr_scheduler") is not None:  # the request's scheduler with its own arguments, none of the base's
        train["lr_scheduler_kwargs"] = spec.get("lr_scheduler_kwargs") or {}
    if stage == "preference" and (spec.get("length_normalized") or spec.get("rpo_alpha") is not None):
        # Together's DPO options, as TRL's loss list: RPO = DPO + alpha x SFT on the chosen
        losses = list(train.get("loss_type") or Recipe().preference.loss_type)
        weights = train.get("loss_weights") or [1.0] * len(losses)
        if spec.get("length_normalized"):
            losses = ["sigmoid_norm" if loss == "sigmoid" else loss for loss in losses]
        if spec.get("rpo_alpha") is not None:
            kept = [(loss, w) for loss, w in zip(losses, weights) if loss != "sft"]
            if spec["rpo_alpha"] > 0:
                kept.append(("sft", float(spec["rpo_alpha"])))
            losses, weights = [loss for loss, _ in kept], [w for _, w in kept]
        train["loss_type"], train["loss_weights"] = losses, weights
    if spec.get("train_on_inputs") is not None and stage == "sft":
        train["assistant_only_loss"] = not spec["train_on_inputs"]


def check(recipe: dict[str, Any]) -> Recipe:
    from pydantic import ValidationError

    try:
        return Recipe.model_validate(recipe)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise LatheError(f"the job's recipe is not valid: {problems}") from None


def save_steps(recipe: dict[str, Any], train_rows: int, n_checkpoints: int) -> int:
    """Steps between checkpoints so that a run saves `n_checkpoints` of them (the last one at its end)."""
    parsed = check(recipe)
    train = parsed.preference if parsed.data.preference else parsed.sft
    devices = parsed.distributed.gpus_per_node * parsed.distributed.nodes
    if train.max_steps > 0:
        total = train.max_steps
    else:
        total = math.ceil(math.ceil(train_rows / (train.batch_size * train.grad_accum * devices)) * train.epochs)
    return max(1, math.ceil(total / n_checkpoints))


def write_recipe(path: Path, recipe: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(recipe, sort_keys=False))
    tmp.replace(path)


def read_recipe(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def tag_version(job: dict[str, Any], registered: dict, folder: Path) -> None:
    """Lineage on the version: the job, its files (ids and content hashes) and the served name."""
    from registry import models

    tags = {"lathe.fine_tuning_job": job["id"], "lathe.fine_tuned_model": job["fine_tuned_model"],
            "lathe.base_model_dir": job["base_model_dir"]}
    for param in ("training_file", "validation_file"):
        if job[param]:
            path = next((folder / "files").glob(f"{job[param]}.*"))
            tags[f"lathe.{param}"] = job[param]
            tags[f"lathe.{param}_sha256"] = file_sha256(path)
    models.set_alias(registered["name"], "candidate", registered["version"], tags)  # register already set it
