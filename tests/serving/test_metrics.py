"""GET /metrics: Prometheus text that counts what the API answered."""

from __future__ import annotations

import threading
import time

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import MODEL_NAME


def _scrape(server) -> dict[tuple[str, tuple], float]:
    response = httpx2.get(f"{server}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _delta(before, after, name: str, **labels) -> float:
    key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_and_latency_histograms_follow_the_requests(server, client):
    before = _scrape(server)
    chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=7, temperature=1.0, seed=1, n=2)
    text = client.completions.create(model=MODEL_NAME, prompt="the cat", max_tokens=5, temperature=0)
    httpx2.post(f"{server}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    after = _scrape(server)

    chat_route = "/v1/chat/completions"
    assert _delta(before, after, "lathe_requests_total", endpoint=chat_route, status=200) == 1
    assert _delta(before, after, "lathe_requests_total", endpoint=chat_route, status=404) == 1
    assert _delta(before, after, "lathe_requests_total", endpoint="/v1/completions", status=200) == 1
    generated = chat.usage.completion_tokens + text.usage.completion_tokens
    assert _delta(before, after, "lathe_generation_tokens_total") == generated
    assert _delta(before, after, "lathe_prompt_tokens_total") == chat.usage.prompt_tokens + text.usage.prompt_tokens
    choices = 3
    assert _delta(before, after, "lathe_time_to_first_token_seconds_count") == choices
    assert _delta(before, after, "lathe_inter_token_latency_seconds_count") == generated - choices
    assert _delta(before, after, "lathe_request_duration_seconds_count") == 2
    assert _delta(before, after, "lathe_time_to_first_token_seconds_sum") > 0


def test_gauges_show_running_and_in_flight_requests(server):
    # n=3: the engine runs one sequence at a time, so two wait in its queue
    body = {"model": MODEL_NAME, "prompt": "the", "max_tokens": 300, "min_tokens": 300, "temperature": 1.0, "n": 3}
    worker = threading.Thread(target=httpx2.post, args=(f"{server}/v1/completions",), kwargs={"json": body,
                                                                                               "timeout": 60})
    worker.start()
    try:
        deadline = time.monotonic() + 20
        busy = None
        while time.monotonic() < deadline:
            sample = _scrape(server)
            if sample[("lathe_requests_running", ())] == 1:
                busy = sample
                break
            time.sleep(0.02)
        assert busy is not None, "the running gauge never showed the generation"
        assert busy[("lathe_requests_in_flight", ())] == 1
        assert busy[("lathe_queue_depth", ())] == 2
    finally:
        worker.join()
    idle = _scrape(server)
    assert idle[("lathe_requests_running", ())] == 0 and idle[("lathe_requests_in_flight", ())] == 0
