"""Registered models: register a model directory, read versions back, move aliases, resolve a
reference (`champion`, `models:/name@alias`, `models:/name/3`, a folder) to a local directory.

A version's metrics are stored on the version: the gate needs them per version, and run metrics
belong to runs. `lathe.metrics` holds them as JSON with their exact names and values (MLflow tag keys
refuse characters such as `@` in `humaneval/pass@1`); `metric.<key>` tags repeat each headline metric
(not per-part breakdowns or standard errors) for the UI, with such characters replaced by `_`. Aliases, not
stages: `candidate` (the latest registration) and `champion` (what serving uses; moved only by
registry.promotion).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from recipes.errors import LatheError
from recipes.identity import model_hash
from registry import stack as stacks
from registry import store
from registry.stack import AdapterStack

CANDIDATE, CHAMPION = "candidate", "champion"
METRIC_PREFIX = "metric."
METRICS_TAG = "lathe.metrics"
_BAD_TAG_CHARS = re.compile(r"[^/\w.\- :]")  # what MLflow accepts in tag keys
CONTENT_TAG = "lathe.content_sha256"
REGISTRATION_TAG = "lathe.registration_key"
BASE_TAG = "lathe.base_version"  # a stacked version's base: models:/<name>-base/<n>
BASE_SUFFIX = "-base"
_VERSION_RE = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    source: str
    """Artifact URI of the model directory (file:///… for local stores)."""
    metrics: dict[str, float]
    tags: dict[str, str]
    """Version tags other than the `metric.*` ones."""
    run_id: str | None = None
    aliases: list[str] = field(default_factory=list)
    description: str | None = None

    @property
    def model_dir(self) -> Path | None:
        """Local directory of the files, for local stores; None when they must be downloaded."""
        return store.local_path(self.source)


def register(name: str, model_dir: Path, *, metrics: dict[str, float], tags: dict[str, str],
             run_id: str | None = None, card_text: str | None = None,
             stack: AdapterStack | None = None) -> ModelVersionInfo:
    """Register a model as a new version of `name` with the metrics as tags, and point alias `candidate` at
    it. Identical inputs (same files and metrics) return the existing version (and re-point `candidate` at
    it) instead of creating a duplicate.

    `model_dir` is stored as is, unless `stack` says it is the merge of LoRA adapters on a base: then the
    version stores the adapters (registry/stack.py) and the base is registered once as a version of
    `<name>-base`, found again by its content hash.

    The run: `run_id`, else the active run, else a new `register-<name>` run in the experiment
    $MLFLOW_EXPERIMENT_NAME (default `lathe`)."""
    _check_name(name)
    if stack is None:
        return _register_dir(name, Path(model_dir), metrics, tags, run_id, card_text)
    base = _register_dir(name + BASE_SUFFIX, stack.base_dir, {}, {"lathe.role": "base"}, run_id, None,
                         move_candidate=False)
    ref = {"uri": f"models:/{base.name}/{base.version}", "content_sha256": base.tags[CONTENT_TAG]}
    with tempfile.TemporaryDirectory() as tmp:
        folder = stacks.pack(stack, ref, Path(tmp) / "stack")
        return _register_dir(name, folder, metrics, {**tags, BASE_TAG: ref["uri"]}, run_id, card_text)


def _register_dir(name: str, model_dir: Path, metrics: dict[str, float], tags: dict[str, str],
                  run_id: str | None, card_text: str | None, move_candidate: bool = True) -> ModelVersionInfo:
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise LatheError(f"cannot register '{name}': {model_dir} is not a directory with model files in it")
    clean = _clean_metrics(metrics)
    files = model_hash(model_dir)
    key = hashlib.sha256((files + json.dumps(clean, sort_keys=True)).encode()).hexdigest()
    client = store.client(must_exist=False)
    with store.store_lock():
        _ensure_registered_model(client, name)
        same = client.search_model_versions(f"name='{name}' and tags.`{REGISTRATION_TAG}` = '{key}'")
        if same:
            version = min(same, key=lambda mv: int(mv.version)).version
        else:
            version = _create_version(client, name, model_dir, clean, tags, run_id, card_text, files, key)
        if move_candidate:
            client.set_registered_model_alias(name, CANDIDATE, version)
    info = get_version(name, version)
    assert info is not None
    return info


def _create_version(client, name, model_dir, metrics, tags, run_id, card_text, files, key) -> str:
    import mlflow

    own_run = None
    if run_id is None:
        active = mlflow.active_run()
        if active is not None:
            run_id = active.info.run_id
        else:
            own_run = client.create_run(store.ensure_experiment(), run_name=f"register-{name}")
            run_id = own_run.info.run_id
    artifact_path = f"model-{files[:12]}"  # unique per content: a run may register several models
    client.log_artifacts(run_id, str(model_dir), artifact_path)
    if card_text:
        client.log_text(run_id, card_text, f"{artifact_path}/MODEL_CARD.md")
    with tempfile.TemporaryDirectory() as tmp:  # MLflow's pyfunc door: `mlflow models serve -m models:/…`
        client.log_artifact(run_id, str(_mlmodel(Path(tmp), artifact_path, run_id)), artifact_path)
    if own_run is not None:
        client.set_terminated(run_id)
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version_tags = {**{k: str(v) for k, v in tags.items()}, CONTENT_TAG: files, REGISTRATION_TAG: key,
                    **{METRIC_PREFIX + _BAD_TAG_CHARS.sub("_", k): repr(v) for k, v in metrics.items() if _headline(k)},
                    METRICS_TAG: json.dumps(metrics, sort_keys=True)}
    created = client.create_model_version(name, source, run_id=run_id, tags=version_tags, description=card_text)
    return created.version


def _mlmodel(folder: Path, artifact_path: str, run_id: str) -> Path:
    """An MLmodel whose pyfunc flavor loads the version's folder with serving/pyfunc.py (no copy, no pickle)."""
    import mlflow.pyfunc
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    # No input schema (prompts, conversations or a DataFrame are all read); the one param it takes is declared,
    # or MLflow would drop it silently.
    signature = ModelSignature(params=ParamSchema([ParamSpec("max_new_tokens", "long", 128)]))
    model = Model(artifact_path=artifact_path, run_id=run_id, signature=signature)
    mlflow.pyfunc.add_to_model(model, loader_module="serving.pyfunc", data=".")
    model.save(folder / "MLmodel")
    return folder / "MLmodel"


def _headline(metric: str) -> bool:
    """`suite/metric` itself, not a breakdown part (`mmlu.anatomy/acc`) or a standard error: the version page
    shows a handful of tags, and `lathe.metrics` keeps every metric."""
    return "." not in metric.split("/")[0] and not metric.endswith("_stderr")


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Registered by Lathe. Aliases: candidate, champion.")


def _check_name(name: str) -> None:
    if not name or "'" in name or "/" in name or "@" in name:
        raise LatheError(f"registered model name {name!r}: must be non-empty, without quotes, '/' or '@' "
                         "(set registry.model_name in the recipe)")


def _clean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    clean = {}
    for key, value in metrics.items():
        try:
            clean[str(key)] = float(value)
        except (TypeError, ValueError):
            raise LatheError(f"metric {key!r} = {value!r} is not a number; register takes {{name: float}}") from None
    return clean


def _info(mv) -> ModelVersionInfo:
    if METRICS_TAG in mv.tags:
        metrics = {k: float(v) for k, v in json.loads(mv.tags[METRICS_TAG]).items()}
    else:  # a version registered by hand with only metric.* tags
        metrics = {k[len(METRIC_PREFIX):]: float(v) for k, v in mv.tags.items() if k.startswith(METRIC_PREFIX)}
    tags = {k: v for k, v in mv.tags.items() if not k.startswith(METRIC_PREFIX) and k != METRICS_TAG}
    return ModelVersionInfo(name=mv.name, version=str(mv.version), source=mv.source, metrics=metrics, tags=tags,
                            run_id=mv.run_id, aliases=list(mv.aliases or []), description=mv.description)


def get_version(name: str, alias_or_version: str | int) -> ModelVersionInfo | None:
    """A version by number or alias; None if the model, version or alias does not exist."""
    from mlflow.exceptions import MlflowException

    client = store.client()
    try:
        if str(alias_or_version).isdigit():
            return _info(client.get_model_version(name, str(alias_or_version)))
        return _info(client.get_model_version_by_alias(name, str(alias_or_version)))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise LatheError(f"cannot read {name}@{alias_or_version} from the MLflow store {store.current().uri}: "
                         f"{exc.message}. Is the store reachable (MLFLOW_TRACKING_URI / registry.tracking_uri)?") from exc


def set_alias(name: str, alias: str, version: str | int, tags: dict[str, str] | None = None) -> None:
    """Point `alias` at `version`, after setting `tags` on that version."""
    client = store.client()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, str(version), key, str(value))
    client.set_registered_model_alias(name, alias, str(version))


def resolve(ref: str, default_name: str | None = None) -> Path:
    """`champion`/`candidate` (aliases of `default_name`), `models:/name@alias`, `models:/name/3`, or a
    local directory → a local model directory. Files of remote stores are downloaded once into
    `<project>/.lathe/models/<name>/<version>/`."""
    ref = str(ref).strip()
    match = _VERSION_RE.match(ref)
    if match:
        name, which = match["name"], match["alias"] or match["version"]
    elif ref in (CHAMPION, CANDIDATE):
        if not default_name:
            raise LatheError(f"'{ref}' is an alias of a registered model, but no model name was given "
                             f"(set registry.model_name, or use models:/<name>@{ref})")
        name, which = default_name, ref
    else:
        path = Path(ref).expanduser()
        if path.is_dir():
            return path.resolve()
        raise LatheError(f"model '{ref}': not a directory, and not a registry reference. Use `champion`, "
                         "`candidate`, `models:/<name>@<alias>`, `models:/<name>/<version>` or a local model folder")
    info = get_version(name, which)
    if info is None:
        raise LatheError(not_found_message(name, which))
    local = info.model_dir
    if local is None:
        local = _download(info)
    elif not local.is_dir():
        raise LatheError(f"{name} version {info.version}: its files are gone from {local} "
                         "(artifact folder moved or deleted?). Register the model again.")
    return merged(local, info.tags.get(CONTENT_TAG)) if stacks.is_stack(local) else local


def merged(folder: Path, key: str | None = None) -> Path:
    """A stacked version's folder → its merged model, made once per content under `<project>/.lathe/merged/`
    (its base resolved through the registry and checked against the content hash the stack names)."""
    record = stacks.read(folder)
    base_dir = resolve(record["base"]["uri"])
    cache = store.current().project_root / ".lathe" / "merged"
    key = key or model_hash(folder)
    if not (cache / key / "config.json").is_file() and model_hash(base_dir) != record["base"]["content_sha256"]:
        raise LatheError(f"{folder}: its base {record['base']['uri']} ({base_dir}) does not have the content it was "
                         f"trained on (sha256 {record['base']['content_sha256'][:12]}…): the registry's base files "
                         "were changed. Register the model again.")
    return stacks.materialise(folder, base_dir, cache, key)


def not_found_message(name: str, which: str) -> str:
    client = store.client()
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        return (f"no registered model '{name}' in {store.current().uri} (registered: {known}). "
                "Run the pipeline's register stage, or fix registry.model_name / MLFLOW_TRACKING_URI.")
    aliases = ", ".join(f"{a}→v{v}" for a, v in sorted((model.aliases or {}).items())) or "none"
    what = f"version {which}" if which.isdigit() else f"alias '{which}'"
    fix = ("promote a candidate first (promotion sets `champion`)" if which == CHAMPION
           else "use one of the aliases or versions that exist")
    return f"registered model '{name}' has no {what} (aliases: {aliases}): {fix}."


def _download(info: ModelVersionInfo) -> Path:
    """Versions are immutable, so one download per version is enough."""
    import mlflow

    target = store.current().project_root / ".lathe" / "models" / info.name / info.version
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{info.version}-"))
    try:
        try:
            fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(staging)))
        except Exception as exc:
            raise LatheError(f"cannot download {info.name} version {info.version} from {info.source}: {exc}") from exc
        try:
            os.replace(fetched, target)
        except OSError:
            if not target.is_dir():  # else a concurrent download won the rename: use its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
