"""SIGTERM drains: in-flight requests finish, new ones are refused, the process exits 0.

A real `serving.app.run` in a subprocess (signals only reach a main thread)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from tests.servers import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def _serve(model_dir: Path, **settings):
    port = free_port()
    args = ", ".join(f"{k}={v!r}" for k, v in {"model_dir": str(model_dir), "model_name": "tiny", "port": port,
                                                 "log_level": "info", **settings}.items())
    code = f"from serving.app import run; from serving.settings import ServerSettings; run(ServerSettings({args}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    if wait_ready(base, alive=lambda: proc.poll() is None, timeout=60):
        return proc, base
    proc.kill()
    pytest.fail(f"the server never became ready: {proc.communicate()[1][-2000:]}")


def _refused(base: str) -> bool:
    try:
        return httpx2.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 1}).status_code == 503
    except httpx2.TransportError:  # the listening socket is closed
        return True


def test_sigterm_lets_the_stream_in_flight_finish_refuses_new_work_and_exits_0(tiny_model_dir):
    proc, base = _serve(tiny_model_dir, drain_timeout_s=60.0)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        stream = iter(client.completions.create(
            model="tiny", prompt="the", max_tokens=300, temperature=1.0, seed=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"min_tokens": 300}))
        text = next(stream).choices[0].text  # generating now

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not _refused(base):
            assert time.monotonic() < deadline, "new requests were still served after SIGTERM"
            time.sleep(0.05)

        rest = list(stream)
        text += "".join(c.choices[0].text for c in rest if c.choices)
        assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
        assert rest[-1].usage.completion_tokens == 300  # all of it, not cut by the shutdown
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, log = proc.communicate()
    assert "Waiting for connections to close" in log or "Shutting down" in log


def test_the_drain_timeout_bounds_the_wait(tiny_model_dir):
    proc, base = _serve(tiny_model_dir, drain_timeout_s=0.5)
    try:
        body = {"model": "tiny", "prompt": "the", "max_tokens": 400, "min_tokens": 400, "n": 8, "stream": True}
        with httpx2.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data:"))  # ~8 s of work has started
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(httpx2.TransportError):  # cut off: no [DONE]
                for line in lines:
                    assert line != "data: [DONE]"
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 6
    finally:
        if proc.poll() is None:
            proc.kill()
        _, log = proc.communicate()
    assert "generation cancelled" in log
