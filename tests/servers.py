"""For tests that start a server: a free local port, and waiting until the server answers GET /ready."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx2

from bench.common import free_port  # a port nobody listens on now (a tiny race with the child: fine in a test)

__all__ = ["free_port", "wait_ready"]


def wait_ready(base: str, alive: Callable[[], bool], timeout: float = 90.0, interval: float = 0.1) -> bool:
    """Poll `{base}/ready` until it answers 200 (True); False once `alive()` is false or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        try:
            if httpx2.get(f"{base}/ready").status_code == 200:
                return True
        except httpx2.TransportError:
            pass
        time.sleep(interval)
    return False
