"""MLflow runs for pipeline executions: one parent run per execution, one nested run per stage.

How a stage finds its parent run
--------------------------------
Every parent run carries the tag `lathe.pipeline_id`. A stage run nests under:

1. the run active in this process (the stage was called from inside `pipeline_run`), else
2. the parent whose `lathe.pipeline_id` equals `$LATHE_PIPELINE_ID`. `pipeline_run` exports that
   variable (with MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME) for its duration, so every stage
   that `dvc repro` spawns from inside it lands under the same parent; else
3. the parent for `auto-<hash>`, the hash of the git commit + `dvc.yaml` + `params.yaml`. So stages
   run by hand (`dvc repro` alone) group under one parent per code-and-parameters state; a new commit
   or new parameters starts a new parent. (`dvc.lock` is not hashed: it changes after every stage.)

A parent created by a stage is created once (under the store lock) and carries the status of the
last stage that ran under it; a parent created by `pipeline_run` gets its status from pipeline_run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from recipes.errors import LatheError
from registry.store import configure, current, ensure_experiment, store_lock, client

__all__ = ["configure", "pipeline_run", "stage_run", "log_params_flat", "log_metrics_flat", "log_artifacts",
           "log_judged_models", "log_datasets", "parent_run_id", "describe_pipeline", "runtime_tags", "pipeline_id"]

PIPELINE_ID_ENV = "LATHE_PIPELINE_ID"
PIPELINE_ID_TAG = "lathe.pipeline_id"
ROLE_TAG = "lathe.role"
OWNER_TAG = "lathe.parent_owner"
"""`pipeline_run` (it sets the parent's status) or `stage` (each stage run sets it when it ends)."""
STAGE_TAG = "lathe.stage"
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3.17
TRUNCATED = "...[truncated]"
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # MLflow names: alphanumerics, _ - . space / :
TRACKED_PACKAGES = ("lm-eval", "transformers", "trl", "peft", "torch", "mlflow", "dvc")


def pipeline_id(project_root: Path | None = None) -> str:
    """The id that groups the stage runs of one pipeline execution (see the module docstring)."""
    explicit = os.environ.get(PIPELINE_ID_ENV)
    if explicit:
        return explicit
    root = Path(project_root or current().project_root)
    digest = hashlib.sha256(_git(root, "rev-parse", "HEAD").encode())
    for name in ("dvc.yaml", "params.yaml"):
        path = root / name
        digest.update(name.encode() + (path.read_bytes() if path.exists() else b"<absent>"))
    return "auto-" + digest.hexdigest()[:12]


@contextmanager
def pipeline_run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """The parent run of one pipeline execution (resumed if a run with the same pipeline id exists)."""
    import mlflow

    tags = dict(tags or {})
    pid = tags.get(PIPELINE_ID_TAG) or os.environ.get(PIPELINE_ID_ENV) or uuid.uuid4().hex[:12]
    experiment_id = ensure_experiment(experiment)
    with store_lock():
        found = _find_parent(experiment_id, pid)
        existing = found.info.run_id if found else None
        run = mlflow.start_run(
            run_id=existing,
            experiment_id=None if existing else experiment_id,
            run_name=None if existing else run_name,
            tags={**tags, PIPELINE_ID_TAG: pid, ROLE_TAG: "pipeline", OWNER_TAG: "pipeline_run"},
        )
    exported = {PIPELINE_ID_ENV: pid, "MLFLOW_TRACKING_URI": current().uri, "MLFLOW_EXPERIMENT_NAME": experiment}
    saved = {key: os.environ.get(key) for key in exported}
    os.environ.update(exported)  # inherited by the stage processes dvc spawns
    try:
        with run:
            yield run
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any] | None = None, *, experiment: str | None = None) -> Iterator[Any]:
    """A nested run named after the stage, under the pipeline's parent run (found or created)."""
    import mlflow

    active = mlflow.active_run()
    own_parent: str | None = None
    if active is not None:
        parent_id, experiment_id = active.info.run_id, active.info.experiment_id
        pid = active.data.tags.get(PIPELINE_ID_TAG) or mlflow.get_run(parent_id).data.tags.get(PIPELINE_ID_TAG, "")
    else:
        experiment_id = ensure_experiment(experiment)
        pid = pipeline_id()
        parent_id, manages_parent = _find_or_create_parent(experiment_id, pid)
        own_parent = parent_id if manages_parent else None
    tags = {STAGE_TAG: stage, PIPELINE_ID_TAG: pid, ROLE_TAG: "stage"}
    status = "FAILED"
    try:
        with mlflow.start_run(
            run_name=stage,
            experiment_id=experiment_id,
            nested=active is not None,
            parent_run_id=None if active is not None else parent_id,
            tags=tags,
        ) as run:
            if params:
                log_params_flat(params)
            yield run
        status = "FINISHED"
    finally:
        if own_parent:
            client(must_exist=False).set_terminated(own_parent, status)


def _find_parent(experiment_id: str, pid: str):
    """The parent Run of pipeline `pid`, or None."""
    runs = client(must_exist=False).search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_ID_TAG}` = '{pid}' and tags.`{ROLE_TAG}` = 'pipeline'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def _find_or_create_parent(experiment_id: str, pid: str) -> tuple[str, bool]:
    """(parent run id, whether this stage sets its status: not when a pipeline_run owns it)."""
    mlflow_client = client(must_exist=False)
    with store_lock():
        parent = _find_parent(experiment_id, pid)
        if parent is None:
            tags = {**runtime_tags(current().project_root), PIPELINE_ID_TAG: pid, ROLE_TAG: "pipeline", OWNER_TAG: "stage"}
            return mlflow_client.create_run(experiment_id, tags=tags, run_name=f"pipeline-{pid}").info.run_id, True
        if parent.data.tags.get(OWNER_TAG) == "pipeline_run":
            return parent.info.run_id, False
        mlflow_client.update_run(parent.info.run_id, status="RUNNING")
        return parent.info.run_id, True


def _walk(d: Mapping[str, Any], prefix: str):
    """(flat key, leaf value) pairs: nested mappings joined with '.', lists of mappings indexed."""
    if hasattr(d, "model_dump"):
        d = d.model_dump(mode="json")
    for key, value in d.items():
        name = f"{prefix}{_BAD_KEY_CHARS.sub('_', str(key))}"
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        if isinstance(value, Mapping) and value:
            yield from _walk(value, f"{name}.")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value):
                yield from _walk(item, f"{name}.{index}.")
        else:
            yield name, value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'sft': {'lora': {'r': 16}}} → {'sft.lora.r': '16'}: MLflow param strings, truncated to its limit.
    Characters MLflow refuses in names (e.g. lm-eval's `acc,none`) become '_'."""
    flat = {}
    for name, value in _walk(d, prefix):
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        flat[name] = text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - len(TRUNCATED)] + TRUNCATED
    return flat


def log_params_flat(d: Mapping[str, Any], prefix: str = "", *, run_id: str | None = None) -> dict[str, str]:
    """Log a nested dict (a recipe) as flat MLflow params on `run_id` or the active run; returns them."""
    run_id = _run_id(run_id, "log_params_flat")
    flat = flatten(d, prefix)
    from mlflow.entities import Param

    client(must_exist=False).log_batch(run_id, params=[Param(k, v) for k, v in flat.items()])  # chunks by 100
    return flat


def log_metrics_flat(d: Mapping[str, Any], prefix: str = "", *, step: int | None = None,
                     run_id: str | None = None) -> dict[str, float]:
    """Log the numbers of a nested dict as MLflow metrics (`eval.skills/exact_match`); returns them.
    Other values (strings, None, NaN) are not metrics and are left out: keep them in params or artifacts."""
    import math
    import time

    from mlflow.entities import Metric

    run_id = _run_id(run_id, "log_metrics_flat")
    numbers = {}
    for key, value in _walk(d, prefix):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[key] = float(value)
    now = int(time.time() * 1000)
    client(must_exist=False).log_batch(run_id, metrics=[Metric(k, v, now, step or 0) for k, v in numbers.items()])
    return numbers


def log_artifacts(paths: list[str | Path], artifact_path: str | None = None, *, run_id: str | None = None) -> None:
    """Log files and folders (folders keep their name) under `artifact_path` of the run."""
    run_id = _run_id(run_id, "log_artifacts")
    mlflow_client = client(must_exist=False)
    for path in map(Path, paths):
        if not path.exists():
            raise LatheError(f"cannot log {path} to MLflow: it does not exist")
        if path.is_dir():
            mlflow_client.log_artifacts(run_id, str(path), "/".join(p for p in (artifact_path, path.name) if p))
        else:
            mlflow_client.log_artifact(run_id, str(path), artifact_path)


def log_judged_models(metrics_by_label: Mapping[str, Mapping[str, float]], hashes: Mapping[str, str | None]) -> None:
    """One run per judged model (base, sft, tuned, champion) nested under the active stage run, each with the
    same metric names, so MLflow's run comparison view shows the models side by side."""
    import mlflow

    for label, metrics in metrics_by_label.items():
        tags = {ROLE_TAG: "judged", "lathe.model_label": label, "lathe.model_hash": hashes.get(label) or ""}
        with mlflow.start_run(run_name=f"judged: {label}", nested=True, tags=tags) as run:
            log_metrics_flat(metrics, run_id=run.info.run_id)


DATASET_CONTEXT = {"sft_train": "training", "sft_val": "validation", "pref_train": "training",
                   "pref_val": "validation", "skills_eval": "evaluation", "eval_split": "evaluation"}


def log_datasets(outputs: Mapping[str, Mapping[str, Any]], run_ids: list[str]) -> int:
    """The data stage's files (`artifacts/data/manifest.json` outputs: path, rows, sha256) as MLflow dataset
    inputs of each run, with their role as the context; empty files are left out. Returns how many."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for name, context in DATASET_CONTEXT.items():
        info = outputs.get(name)
        if info and info.get("rows"):
            with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(Path(info["path"]).resolve().as_uri())
            dataset = MetaDataset(source, name=name, digest=str(info["sha256"])[:36])
            inputs.append(DatasetInput(dataset._to_mlflow_entity(),
                                       [InputTag("mlflow.data.context", context), InputTag("lathe.rows", str(info["rows"]))]))
    for run_id in run_ids:
        client(must_exist=False).log_inputs(run_id, datasets=inputs)
    return len(inputs)


def parent_run_id() -> str | None:
    """The pipeline's parent run of the active stage run (None outside a nested stage run)."""
    import mlflow

    active = mlflow.active_run()
    return active.data.tags.get("mlflow.parentRunId") if active else None


def describe_pipeline(text: str, metrics: Mapping[str, Any] | None = None) -> str | None:
    """Put `text` (Markdown: the verdict) on the pipeline's parent run as its description, with headline
    metrics; returns the parent's id (None outside a stage run)."""
    parent = parent_run_id()
    if parent is None:
        return None
    client(must_exist=False).set_tag(parent, "mlflow.note.content", text)
    if metrics:
        log_metrics_flat(metrics, run_id=parent)
    return parent


def _run_id(run_id: str | None, what: str) -> str:
    import mlflow

    run_id = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
    if run_id is None:
        raise LatheError(f"{what} needs a run: call it inside pipeline_run()/stage_run() or pass run_id")
    return run_id


def runtime_tags(project_root: Path) -> dict[str, str]:
    """Lineage tags: git commit + dirty flag, dvc.lock hash, Python and library versions."""
    root = Path(project_root)
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain")
    lock = root / "dvc.lock"
    tags = {
        "lathe.git_commit": commit,
        "lathe.git_dirty": "unknown" if commit == "unknown" else str(bool(status.strip())).lower(),
        "lathe.dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else "absent",
        "lathe.version.python": platform.python_version(),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
    for package in TRACKED_PACKAGES:
        try:
            tags[f"lathe.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"lathe.version.{package}"] = "not-installed"
    return tags


LINEAGE_TAGS = ("lathe.git_commit", "lathe.git_dirty", "lathe.dvc_lock_sha256", "mlflow.source.git.commit")


def lineage_tags(project_root: Path) -> dict[str, str]:
    """`runtime_tags`, with the lineage (git commit, dirty flag, dvc.lock hash) of the pipeline's parent run
    when there is one: the state the chain started from. Recomputed mid-chain they would disagree with the
    parent (the chain itself rewrites dvc.lock), and a version must name the same lineage as its run."""
    tags = runtime_tags(project_root)
    parent = parent_run_id()
    if parent:
        recorded = client(must_exist=False).get_run(parent).data.tags
        tags.update({key: recorded[key] for key in LINEAGE_TAGS if key in recorded})
    return tags


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"
