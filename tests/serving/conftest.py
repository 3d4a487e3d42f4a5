"""A real uvicorn server on 127.0.0.1 (free port, background thread) over the tiny model."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Iterator

import pytest

from tests.servers import wait_ready

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODEL_NAME = "tiny"


@contextlib.contextmanager
def running_server(planes=(), **settings) -> Iterator[str]:
    """Serve `create_app(ServerSettings(**settings), planes)` until the block ends; yields the base URL."""
    import uvicorn

    from serving.app import create_app
    from serving.settings import ServerSettings

    app = create_app(ServerSettings(**settings), planes)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not wait_ready(base, alive=thread.is_alive, timeout=60, interval=0.05):
            raise RuntimeError(f"server at {base} did not become ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def server(tiny_model_dir) -> Iterator[str]:
    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME) as base:
        yield base


@pytest.fixture()
def client(server):
    import openai

    # No retries: a test must see the server's first answer (the client retries 5xx by default).
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
