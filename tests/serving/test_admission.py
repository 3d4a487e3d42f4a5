"""A full queue answers 503; a client that leaves stops its generation and frees its slot."""

from __future__ import annotations

import logging
import time

import httpx2
import openai
import pytest

from tests.serving.conftest import MODEL_NAME, running_server

# min_tokens masks EOS, so these generations run their full length (~1 s or more on 2 cores).
LONG = dict(model=MODEL_NAME, prompt="the", max_tokens=500, temperature=1.0, seed=0,
            extra_body={"min_tokens": 500})


@pytest.fixture(scope="module")
def small_server(tiny_model_dir):
    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME, max_queue=1) as base:
        yield base


def _wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _cancelled(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "generation cancelled" in r.getMessage()]


def test_full_queue_is_503_and_a_closed_stream_cancels_its_generation(small_server, caplog):
    caplog.set_level(logging.INFO, logger="lathe.serving")
    client = openai.OpenAI(base_url=f"{small_server}/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(stream=True, **LONG)
    next(iter(stream))  # generation has started and holds the only slot

    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=1)
    assert caught.value.status_code == 503 and caught.value.code == "queue_full"

    stream.close()
    assert _wait_for(lambda: _cancelled(caplog)), "closing the stream did not stop the generation"
    assert "of 500 tokens" in _cancelled(caplog)[0]
    assert _wait_for(lambda: httpx2.get(f"{small_server}/ready").json()["in_flight"] == 0)
    assert client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=1).choices


def test_a_non_streaming_client_that_hangs_up_cancels_too(small_server, caplog):
    caplog.set_level(logging.INFO, logger="lathe.serving")
    # four choices run one after another in the engine: several seconds of work to abandon
    body = {k: v for k, v in LONG.items() if k != "extra_body"} | LONG["extra_body"] | {"n": 4}
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(f"{small_server}/v1/completions", json=body, timeout=0.3)
    assert _wait_for(lambda: _cancelled(caplog)), "the abandoned request kept generating"
    assert _wait_for(lambda: httpx2.get(f"{small_server}/ready").json()["in_flight"] == 0)
