"""The store Lathe writes is what `mlflow server` / `mlflow ui` shows: read it over the REST API,
then use the server as a remote store (artifact upload through its proxy, download on resolve)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from recipes.schema import GateConfig
from registry import models, promotion, tracking
from tests.servers import free_port

NAME = "lathe-test"
P = "skills/exact_match"
POLICY = GateConfig(primary_metric=P, required=[P], require_power=False)
BASE = {"base": {"metrics": {P: 0.0}, "paired": None}}  # the base model's results: champion zero


def get_json(base: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.load(response)


@pytest.fixture
def registered(store_uri, model_dir_factory):
    """Written straight to the sqlite store, as the pipeline does: v1 champion, v2 candidate."""
    v1 = models.register(NAME, model_dir_factory(1), metrics={P: 0.5}, tags={"lathe.recipe": "default"})
    promotion.promote(NAME, v1.version, POLICY, judged=BASE)
    v2 = models.register(NAME, model_dir_factory(2), metrics={P: 0.25}, tags={})
    return v1, v2


@pytest.fixture
def mlflow_server(registered, tmp_path):
    """`mlflow server` (= `mlflow ui`) on that store, started the way registry/README.md says: from the
    folder holding mlflow.db, relative URI, default artifact destination ./mlartifacts."""
    port = free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(mlflow_cli), "server", "--backend-store-uri", "sqlite:///mlflow.db",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_registry_is_readable_and_usable_through_mlflow_server(registered, mlflow_server, tmp_path, monkeypatch,
                                                               model_dir_factory):
    v1, v2 = registered
    api = mlflow_server + "/api/2.0/mlflow"
    model = get_json(api, "/registered-models/get", name=NAME)["registered_model"]
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "1", "candidate": "2"}
    version = get_json(api, "/model-versions/get", name=NAME, version="1")["model_version"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert tags[f"metric.{P}"] == "0.5" and tags["lathe.recipe"] == "default" and tags[promotion.PROMOTED_AT]
    # The UI can show the model files the pipeline logged without the server (file:// artifacts).
    relative = v1.source.split("/artifacts/", 1)[1]
    with urllib.request.urlopen(f"{mlflow_server}/get-artifact?" + urllib.parse.urlencode(
            {"path": f"{relative}/config.json", "run_uuid": v1.run_id}), timeout=30) as response:
        assert response.read() == (v1.model_dir / "config.json").read_bytes()

    # Now the server as a remote store: uploads go through its artifact proxy, resolve downloads.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "remote")  # a new experiment gets the server's mlflow-artifacts:/ root
    client_root = tmp_path / "client"
    assert tracking.configure("sqlite:///ignored.db", client_root) == mlflow_server
    v3 = models.register(NAME, model_dir_factory(3), metrics={P: 0.75}, tags={})
    assert v3.version == "3" and v3.source.startswith("mlflow-artifacts:/") and v3.model_dir is None
    local = models.resolve(f"models:/{NAME}/3")
    assert local == client_root / ".lathe" / "models" / NAME / "3"
    assert (local / "model.safetensors").read_bytes() == (tmp_path / "models" / "m3" / "model.safetensors").read_bytes()
    assert models.resolve(f"models:/{NAME}/3") == local  # downloaded once
    assert promotion.promote(NAME, "candidate", POLICY, judged=BASE).promote
    model = get_json(api, "/registered-models/get", name=NAME)["registered_model"]
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "3", "candidate": "3"}
    v3_tags = {t["key"]: t["value"] for t in get_json(api, "/model-versions/get", name=NAME, version="3")["model_version"]["tags"]}
    assert v3_tags[promotion.PREVIOUS] == "1"
