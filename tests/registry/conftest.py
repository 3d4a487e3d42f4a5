"""Each test gets its own real MLflow sqlite store in tmp_path (MLFLOW_TRACKING_URI points at it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from registry import store, tracking


@pytest.fixture(autouse=True)
def forget_store():
    """No test sees the store an earlier test configured (nor leaks its own to other packages' tests)."""
    store.reset()
    yield
    store.reset()


@pytest.fixture(scope="session")
def empty_store_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow database. Creating one runs MLflow's ~100 schema migrations
    (5+ s on a busy machine); copying this file gives each test a fresh store in milliseconds."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    client.search_experiments()
    client.search_registered_models()
    return db


@pytest.fixture
def store_uri(tmp_path, monkeypatch, empty_store_db) -> str:
    shutil.copyfile(empty_store_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("LATHE_PIPELINE_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    uri = tracking.configure(None, tmp_path)
    yield uri
    import mlflow

    while mlflow.active_run() is not None:  # a failed test must not leave its run active for the next
        mlflow.end_run()


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A fake Hugging Face folder: config.json + a tiny safetensors file whose bytes depend on seed."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "seed": seed}))
    weights = np.random.default_rng(seed).standard_normal((4, 8)).astype(np.float32)
    save_file({"model.embed_tokens.weight": weights}, str(path / "model.safetensors"))
    return path


@pytest.fixture
def model_dir_factory(tmp_path):
    def build(seed: int = 0) -> Path:
        return make_model_dir(tmp_path / "models" / f"m{seed}", seed)

    return build
