"""The entry point the CLI calls, the settings object, and the package's import boundaries."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from recipes import LatheError
from serving.app import create_app
from serving.settings import ServerSettings

SERVING = Path(__file__).resolve().parents[2] / "serving"


def test_a_directory_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(LatheError, match=f"{tmp_path}.*config.json"):
        create_app(ServerSettings(model_dir=tmp_path))


def test_settings_reject_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValidationError, match="max_queu"):
        ServerSettings(model_dir=tmp_path, max_queu=3)
    with pytest.raises(ValidationError, match="torch_threads"):
        ServerSettings(model_dir=tmp_path, torch_threads=0)


def test_serving_never_imports_pipelines():
    for path in SERVING.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "pipelines" for n in names), f"{path} imports pipelines"


def test_importing_the_app_does_not_load_torch():
    code = "import sys, serving.app, serving.routes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=SERVING.parent)
    assert out.stdout.strip() == "False"


def test_run_prints_where_it_serves_and_serves(tiny_model_dir):
    from tests.servers import free_port, wait_ready

    port = free_port()
    code = ("from serving.app import run; from serving.settings import ServerSettings; "
            f"run(ServerSettings(model_dir={str(tiny_model_dir)!r}, model_name='tiny', port={port}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=SERVING.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = proc.stdout.readline().strip()
        assert line == f"Lathe serving tiny from {tiny_model_dir} on http://127.0.0.1:{port}/v1"
        if not wait_ready(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None, timeout=60):
            pytest.fail("the server started by run() never became ready")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
