"""MLflow's own UI on a Lathe store, rendered by headless Chromium (skipped without it; .ci/run installs it):
the experiment page lists the pipeline's runs and the model page shows the champion alias."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from registry import models, tracking
from tests.eval.test_report_browser import CHROMIUM, render
from tests.registry.conftest import make_model_dir
from tests.servers import free_port

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def _mlflow_ui(db: Path, port: int) -> subprocess.Popen:
    mlflow = str(Path(sys.executable).parent / "mlflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx2.TransportError:
            pass
        time.sleep(0.5)
    server.kill()
    pytest.fail("mlflow server did not start")


def test_the_mlflow_ui_lists_the_runs_and_shows_the_champion(store_uri, tmp_path):
    with tracking.pipeline_run("lathe", "pipeline-ui-check") as parent:
        with tracking.stage_run("evaluate"):
            tracking.log_judged_models({"base": {"skills/exact_match": 0.1}, "tuned": {"skills/exact_match": 0.7}},
                                       {"base": "a", "tuned": "b"})
            tracking.describe_pipeline("**lathe-default version 1: PROMOTED to champion**")
        version = models.register("lathe-default", make_model_dir(tmp_path / "model"), metrics={"skills/exact_match": 0.7},
                                  tags={})
        models.set_alias("lathe-default", "champion", version.version)
    port = free_port()
    server = _mlflow_ui(tmp_path / "mlflow.db", port)
    try:
        runs = render(f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}/runs")
        assert "pipeline-ui-check" in runs
        model = render(f"http://127.0.0.1:{port}/#/models/lathe-default")
        assert "champion" in model and "Version 1" in model
    finally:
        server.terminate()
        server.wait(timeout=30)
