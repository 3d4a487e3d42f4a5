"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis) against a real server on the tiny
model: valid requests (`positive`) and requests that break the schema (`negative`) for every
operation the server publishes, including routes added later. The contract:

- no 5xx answer and no connection dropped or hung (the server survives every request);
- no 422: invalid input is a 400 in OpenAI's error envelope (`{"error": {"message", ...}}`);
- no `server_error` inside a 200 stream (errors after the headers are sent as SSE events).

Work is bounded by the context length (`max_model_len=128`): a request asking for more tokens
than the context leaves is a 400, never a long generation.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings

LONG = os.environ.get("LATHE_RELIABILITY") == "long"
EXAMPLES = 300 if LONG else 20  # per operation and generation mode
# Probes that take no input: one request each is all there is to try.
NO_INPUT = {"GET /health", "GET /ready", "GET /metrics", "GET /v1/models"}


def _problem(response) -> str | None:
    """What breaks the contract in one response, or None."""
    status = response.status_code
    if status >= 500:
        return f"{status}: {response.text[:300]}"
    if status == 422:
        return f"422 instead of 400: {response.text[:300]}"
    content_type = (response.headers.get("content-type") or [""])[0]  # lower-case keys, lists of values
    if status >= 400:
        try:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and error["message"]
        except Exception:  # noqa: BLE001 - any shape other than the envelope is the finding
            return f"{status} without the OpenAI error envelope: {response.text[:300]}"
    if content_type.startswith("text/event-stream"):
        for line in response.text.split("\n"):  # not splitlines(): a JSON event may hold U+2028
            if line.startswith("data:") and '"error"' in line:
                try:
                    payload = json.loads(line[5:])
                except json.JSONDecodeError:
                    return f"an SSE event that is not JSON: {line[:300]}"
                if isinstance(payload, dict) and payload.get("error", {}).get("type") == "server_error":
                    return f"server_error inside a 200 stream: {line[:300]}"
    return None


def test_no_request_from_the_schema_crashes_the_server(tiny_server, tally):
    import httpx2
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{tiny_server}/openapi.json")
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models/{model_id}"} <= \
        {op.label for op in operations}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and (op.label in NO_INPUT or not _can_break(op)):
                continue

            @settings(max_examples=1 if op.label in NO_INPUT else EXAMPLES, deadline=None, database=None,
                      derandomize=not LONG, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def send(case):
                tally.requests()
                if mode is GenerationMode.NEGATIVE:
                    tally.bad_input()
                try:
                    response = case.call(base_url=tiny_server, timeout=60)
                except Exception as exc:  # noqa: BLE001 - a dropped or hung connection is the finding
                    problems.append(f"{op.label} [{mode}]: {type(exc).__name__}: {exc}\n  {_curl(case)}")
                    return
                statuses[f"{op.label} {response.status_code}"] += 1
                if (problem := _problem(response)) is not None:
                    problems.append(f"{op.label} [{mode}]: {problem}\n  {_curl(case)}")

            send()
    tally.note("API fuzz (schemathesis): " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))
    assert not problems, f"{len(problems)} contract breach(es):\n" + "\n".join(problems[:20])
    assert httpx2.get(f"{tiny_server}/health").status_code == 200  # still alive after all of it
    assert sum(statuses.values()) >= EXAMPLES * 4


def _can_break(op) -> bool:
    """Negative generation needs something that can be made invalid: a body, or a typed parameter
    (a free-form string path parameter cannot be; hypothesis reports that as unsatisfiable)."""
    if op.body:
        return True
    return any(p.location != "path" or p.definition.get("schema", {}).get("type") not in (None, "string")
               for p in op.iter_parameters())


def _curl(case) -> str:
    try:
        return case.as_curl_command()[:1500]
    except Exception:  # noqa: BLE001
        return repr(case)[:1500]


EXTREMES = [{"temperature": 5e-324}, {"temperature": 1e-40}, {"temperature": 2.0, "top_p": 5e-324},
            {"repetition_penalty": 5e-324}, {"repetition_penalty": 1e300}, {"repetition_penalty": 1e-6},
            {"repetition_penalty": 1e6, "temperature": 2.0}, {"min_p": 1.0, "temperature": 2.0},
            {"top_k": 2**62}, {"seed": -(2**63)}, {"seed": 2**63 - 1}, {"seed": 2**63},
            {"presence_penalty": 2.0, "frequency_penalty": -2.0}, {"max_tokens": 2**62},
            {"max_tokens": 2**62, "context_length_exceeded_behavior": "truncate"}, {"n": 8, "max_tokens": 2},
            {"logprobs": True, "top_logprobs": 20}, {"stop": ["\ud800"]}, {"stop": [""] * 16},
            {"min_tokens": 2**31}, {"max_completion_tokens": 0}]


@pytest.mark.parametrize("extra", EXTREMES, ids=lambda e: json.dumps(e)[:60])
def test_extreme_sampling_values_are_served_or_refused_never_a_5xx(tiny_server, tally, extra):
    """Found by the fuzzer: a temperature or repetition_penalty that is 0 in float32 made NaN
    probabilities (500). Now a tiny temperature is greedy and the penalty is bounded (400)."""
    import httpx2

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    if "logprobs" not in extra:
        chat["logprobs"] = False
    text = {"prompt": "the cat", "max_tokens": 4, **{k: v for k, v in extra.items()
                                                    if k not in ("logprobs", "top_logprobs", "max_completion_tokens")}}
    tally.requests(2)
    tally.bad_input(2)
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", text)):
        # json.dumps escapes a lone surrogate as \ud800, which is valid JSON (httpx would refuse to encode it)
        response = httpx2.post(f"{tiny_server}{path}", content=json.dumps(body), timeout=60,
                               headers={"content-type": "application/json"})
        assert response.status_code in (200, 400), (path, response.status_code, response.text[:300])
        assert _problem(_AsSchemathesis(response)) is None
        if response.status_code == 200:
            assert all(c["finish_reason"] in ("stop", "length") for c in response.json()["choices"])


class _AsSchemathesis:
    """An httpx2 response with the headers shaped as schemathesis gives them (lists of values)."""

    def __init__(self, response) -> None:
        self.status_code, self.text, self.json = response.status_code, response.text, response.json
        self.headers = {k.lower(): [v] for k, v in response.headers.items()}


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {**CHAT, "model": "\ud800"}, "model"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "hi \udfff"}]}, "messages[0].content"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "messages[0].content[0].text"),
    ("/v1/chat/completions", {**CHAT, "stop": ["ok", "\ud800"]}, "stop[1]"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f",
                                                                                     "description": "\ud800"}}]},
     "tools[0].function.description"),
    ("/v1/chat/completions", {**CHAT, "\ud800": 1}, "body"),
    ("/v1/completions", {"prompt": "the \ud800", "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "\ud800"], "max_tokens": 2}, "prompt[1]"),
])
def test_invalid_unicode_is_a_400_naming_the_field(tiny_server, tally, path, body, param):
    """Found by hand after the fuzzer: `"\\ud800"` is valid JSON, but a lone surrogate made the
    tokenizer raise (500) and any error message quoting it unencodable (500)."""
    import httpx2

    tally.requests()
    tally.bad_input()
    response = httpx2.post(f"{tiny_server}{path}", content=json.dumps(body), timeout=60,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/batches", {"input_file_id": "file-\ud800", "endpoint": "/v1/chat/completions",
                             "completion_window": "24h"}),
    ("POST", "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": "file-\ud800"}),
    ("GET", "/v1/models/%ED%A0%80", None),
    ("GET", "/v1/files/%ED%A0%80/content", None),
])
def test_errors_quoting_invalid_unicode_are_still_answered(tiny_server, tally, method, path, body):
    import httpx2

    tally.requests()
    tally.bad_input()
    response = httpx2.request(method, f"{tiny_server}{path}", timeout=60, headers={"content-type": "application/json"},
                              content=json.dumps(body) if body is not None else None)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]
