"""Shared pieces of the reliability suite: a tally of what the suite threw at the system (printed at
the end of the run: faults injected, bad inputs tried, requests sent, results lost) and a real
uvicorn server on the tiny model whose platform database lives in a temporary directory."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODEL_NAME = "tiny"


class Tally:
    """Counts kept across the whole session; `lost` must stay 0."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []

    def fault(self, n: int = 1) -> None:
        self.counts["faults injected"] += n

    def bad_input(self, n: int = 1) -> None:
        self.counts["bad inputs tried"] += n

    def requests(self, n: int = 1) -> None:
        self.counts["requests sent"] += n

    def lost(self, n: int = 1) -> None:
        self.counts["results lost"] += n

    def note(self, line: str) -> None:
        self.notes.append(line)


_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return _TALLY


def pytest_terminal_summary(terminalreporter) -> None:
    if not _TALLY.counts and not _TALLY.notes:
        return
    terminalreporter.section("reliability")
    for name in ("faults injected", "bad inputs tried", "requests sent", "results lost"):
        terminalreporter.line(f"{name}: {_TALLY.counts[name]}")
    for line in _TALLY.notes:
        terminalreporter.line(line)


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir, tmp_path_factory) -> Iterator[str]:
    """An in-process server on the tiny model, auth off (loopback), context 128 tokens so no request
    can ask for long work, with the fine-tuning jobs plane (its routes are fuzzed too); yields the base URL."""
    from jobs.plane import JobsPlane
    from recipes.schema import FineTuningConfig

    tmp = tmp_path_factory.mktemp("tiny-server")
    jobs = JobsPlane(FineTuningConfig(enabled=True, state_dir=tmp / "fine_tuning"))
    with lathe_server(tiny_model_dir, tmp, max_model_len=128, log_level="error", planes=[jobs]) as base:
        yield base


@contextlib.contextmanager
def lathe_server(model_dir: Path, tmp_dir: Path, **settings) -> Iterator[str]:
    """`tests.serving.conftest.running_server` with the platform database under `tmp_dir`
    (never the project's .lathe/) ; yields the base URL."""
    from recipes.schema import PlatformConfig
    from tests.serving.conftest import running_server

    platform = settings.pop("platform", {})
    platform = PlatformConfig(**{"db_path": str(tmp_dir / "platform.db"), **platform})
    with running_server(model_dir=model_dir, model_name=MODEL_NAME, platform=platform, **settings) as base:
        yield base


@contextlib.contextmanager
def server_process(model_dir: Path, tmp_dir: Path, **settings) -> Iterator[tuple[str, "subprocess.Popen", Path]]:
    """`serving.app.run` in a child process (its own RSS, its own logs, the real entry point).
    Yields (base URL, process, log file: the child's stdout and stderr)."""
    import subprocess
    import sys

    from tests.servers import free_port, wait_ready

    port = free_port()
    platform = {"db_path": str(tmp_dir / "platform.db"), **settings.pop("platform", {})}
    values = {"model_dir": str(model_dir), "model_name": MODEL_NAME, "port": port, "platform": platform, **settings}
    args = ", ".join(f"{k}={v!r}" for k, v in values.items())
    code = f"from serving.app import run; from serving.settings import ServerSettings; run(ServerSettings({args}))"
    log_path = tmp_dir / "server.log"
    root = Path(__file__).resolve().parents[2]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_dir, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)})
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, alive=lambda: proc.poll() is None):
            pytest.fail(f"the server never became ready:\n{log_path.read_text()[-3000:]}")
        yield base, proc, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
