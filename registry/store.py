"""Which MLflow store Lathe talks to, where its artifacts go, and the lock that serialises writers.

Store layout for the default (and any) sqlite store: the database file and an `mlartifacts/` folder
side by side, e.g. `<project>/mlflow.db` + `<project>/mlartifacts/`. Remote stores (http://…,
databricks, …) keep artifacts wherever their server says.

`configure()` is called once per process by whoever knows the project root (the pipeline, the
server). Functions that need a store before that configure themselves from `MLFLOW_TRACKING_URI`
or `sqlite:///mlflow.db` in the current directory.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from recipes.errors import LatheError

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "lathe"
LOCK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class StoreConfig:
    uri: str
    project_root: Path
    artifact_root: Path | None
    """Folder new experiments put their artifacts in; None for remote stores (the server decides)."""

    @property
    def sqlite_path(self) -> Path | None:
        return sqlite_path(self.uri)


_config: StoreConfig | None = None
_exported: str | None = None


def configure(tracking_uri: str | None, project_root: Path) -> str:
    """Pick the store (MLFLOW_TRACKING_URI > recipe value > sqlite:///mlflow.db), make relative local
    paths absolute against `project_root`, create the artifact folder, and point MLflow at it.
    Returns the URI in use."""
    global _config, _exported
    project_root = Path(project_root).resolve()
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env == _exported:
        env = None  # our own export from an earlier configure() in this process, not the user's choice
    uri = _absolute_uri(env or tracking_uri or DEFAULT_URI, project_root)
    artifact_root = None
    db = sqlite_path(uri)
    if db is not None:
        artifact_root = db.parent / "mlartifacts"
        artifact_root.mkdir(parents=True, exist_ok=True)
    _config = StoreConfig(uri=uri, project_root=project_root, artifact_root=artifact_root)

    import mlflow

    mlflow.set_tracking_uri(uri)  # also exports MLFLOW_TRACKING_URI, so subprocesses use the same store
    mlflow.set_registry_uri(uri)
    _exported = None if env else uri
    return uri


def reset() -> None:
    """Forget the configured store (tests that configure several stores in one process)."""
    global _config, _exported
    _config = _exported = None


def current() -> StoreConfig:
    """The configured store; configures from the environment / current directory if nobody did."""
    if _config is None:
        configure(None, Path.cwd())
    assert _config is not None
    return _config


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def _absolute_uri(uri: str, root: Path) -> str:
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        return "sqlite:///" + str(path if path.is_absolute() else (root / path).resolve())
    if "://" not in uri and not uri.startswith("file:"):
        # A bare folder: MLflow's (deprecated) file store.
        path = Path(uri).expanduser()
        return (path if path.is_absolute() else root / path).resolve().as_uri()
    return uri


def client(*, must_exist: bool = True):
    """An MlflowClient on the configured store. With `must_exist`, a missing local sqlite file is a
    LatheError instead of MLflow silently creating an empty store (read paths want the former)."""
    cfg = current()
    db = cfg.sqlite_path
    if must_exist and db is not None and not db.exists():
        raise LatheError(
            f"no MLflow store at {db} (tracking URI {cfg.uri}): nothing has been registered there yet. "
            "Run the pipeline's register stage first, or point MLFLOW_TRACKING_URI / registry.tracking_uri "
            "at the store that holds your models."
        )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.uri, registry_uri=cfg.uri)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3's UI to pick the experiment page's layout


def ensure_experiment(name: str | None = None) -> str:
    """Id of the experiment `name` (default: $MLFLOW_EXPERIMENT_NAME or `lathe`), created with its
    artifacts in the store's `mlartifacts/` folder if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    mlflow_client = client(must_exist=False)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = current().artifact_root
    try:  # the classic training view (runs, metrics, models), not MLflow 3's GenAI view of traces
        return mlflow_client.create_experiment(name, artifact_location=root.as_uri() if root else None,
                                               tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
    except MlflowException as exc:  # another process created it between our get and create
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise LatheError(f"cannot create MLflow experiment '{name}' in {current().uri}: {exc.message}") from None
        return found.experiment_id


def local_path(uri: str) -> Path | None:
    """Filesystem path of a `file:` URI or a plain path; None for remote artifact URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


_locks: dict[Path, object] = {}


@contextmanager
def store_lock(timeout_s: float = LOCK_TIMEOUT_S):
    """Serialise read-decide-write sequences (alias moves, find-or-create) on a local store.

    A `filelock` lock on `<db>.lock` next to a sqlite store (or inside a file store) works across
    processes and threads on one machine, re-entrant within a thread. Remote stores get no lock: MLflow's
    REST API has no compare-and-set on aliases, so run one promoter at a time there (e.g. one CI job).
    """
    from filelock import FileLock, Timeout

    cfg = current()
    db = cfg.sqlite_path
    file_store = local_path(cfg.uri) if cfg.uri.startswith("file:") else None
    lock_path = Path(f"{db}.lock") if db else (file_store / ".lathe.lock" if file_store else None)
    if lock_path is None:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = _locks.setdefault(lock_path, FileLock(lock_path, thread_local=True))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise LatheError(f"waited {timeout_s:.0f} s for the registry lock {lock_path}: another promotion or "
                         "registration is still running (or hung). Wait for it, or stop it and retry.") from None
    try:
        yield
    finally:
        lock.release()
