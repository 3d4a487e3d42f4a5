"""Start a Lathe server in a subprocess (`python -c` calling serving.app.run) on 127.0.0.1 with a
free port, wait until it is ready, stop it with SIGTERM (it drains and exits 0)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import PYTHON, REPO, free_port, thread_env
from bench.serving_client import wait_ready


@dataclass
class RunningServer:
    process: subprocess.Popen
    base: str
    """http://127.0.0.1:PORT (health and readiness live here; the API under /v1)."""
    log_path: Path
    ready_s: float = 0.0

    @property
    def api(self) -> str:
        return self.base + "/v1"

    def stop(self, timeout: float = 60) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used so far (every thread), None without psutil."""
        try:
            import psutil

            times = psutil.Process(self.process.pid).cpu_times()
            return times.user + times.system
        except (ImportError, OSError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_server(model_dir: Path, log_path: Path, *, engine: str = "continuous", max_batch_size: int = 16,
                 max_queue: int = 256, torch_threads: int | None = None, max_model_len: int | None = None,
                 omp_threads: int | None = None, ready_timeout: float = 600) -> RunningServer:
    """`torch_threads` None keeps the server's own default (Lathe's choice is part of what is measured)."""
    port = free_port()
    settings = (f"model_dir={str(model_dir)!r}, engine={engine!r}, port={port}, max_batch_size={max_batch_size}, "
                f"max_queue={max_queue}, log_level='warning', watch_interval_s=0")
    if torch_threads:
        settings += f", torch_threads={torch_threads}"
    if max_model_len:
        settings += f", max_model_len={max_model_len}"
    code = ("from serving.app import run; from serving.settings import ServerSettings; "
            f"run(ServerSettings({settings}))")
    env = thread_env(omp_threads)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([PYTHON, "-c", code], cwd=REPO, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    started = time.perf_counter()
    try:
        asyncio.run(wait_ready(server.base, process, ready_timeout))
    except Exception:
        server.stop(10)
        raise RuntimeError(f"the Lathe server did not become ready; its log ({log_path}):\n{server.log_tail()}")
    server.ready_s = time.perf_counter() - started
    return server
