"""API keys, rate-limit tiers and usage metering on a real server with auth on (official openai client)."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import httpx2
import openai
import pytest

from accounts.keys import create_key, revoke_key
from accounts.store import Store
from pipelines.cli import main as lathe
from recipes.schema import PlatformConfig
from tests.serving.conftest import MODEL_NAME, running_server

HELLO = [{"role": "user", "content": "Say hello."}]
TIERS = {"burst": {"requests_per_minute": 3}, "few_tokens": {"requests_per_minute": 100, "tokens_per_minute": 30},
         "roomy_batch": {"requests_per_minute": 20, "batch_requests_per_minute": 1000}}


@pytest.fixture(scope="module")
def srv(tiny_model_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("platform") / "platform.db"
    platform = {"db_path": str(db), "auth": "on", "tiers": TIERS, "batch": {"poll_interval_s": 0.2}}
    store = Store(db)
    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME, platform=platform) as base:
        yield SimpleNamespace(base=base, db=db, store=store, config=PlatformConfig(**platform))
    store.close()


def new_key(srv, tier="build") -> tuple[str, str]:
    """(key id, full key)"""
    key, secret = create_key(srv.store, f"test-{tier}", tier, srv.config)
    return key.id, secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def client(srv, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.base}/v1", api_key=secret, max_retries=0)


def wait_for(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_every_route_needs_a_valid_key(srv):
    _, good = new_key(srv)
    revoked_id, revoked = new_key(srv)
    revoke_key(srv.store, revoked_id)
    spec = httpx2.get(f"{srv.base}/openapi.json", headers=bearer(good)).json()
    routes = [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]
    for expected in [("POST", "/v1/chat/completions"), ("POST", "/v1/files"), ("GET", "/v1/files/{file_id}/content"),
                     ("POST", "/v1/batches/{batch_id}/cancel"), ("GET", "/v1/usage"), ("GET", "/metrics")]:
        assert expected in routes
    ids = {"{file_id}": "file-0", "{batch_id}": "batch_0", "{model_id}": MODEL_NAME}
    http = httpx2.Client()  # keep-alive: ~120 requests
    for method, path in [*routes, ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/v1/no-such-route")]:
        url = srv.base + re.sub(r"\{\w+\}", lambda m: ids.get(m[0], "no-such-id"), path)
        body = {"json": {}} if method == "POST" else {}
        probe = path in ("/health", "/ready")  # open by default (platform.protect_health)
        for headers in ({}, bearer("lathe-000000000000-nope"), bearer(revoked), bearer(good[:-2]),
                        {"Authorization": f"Basic {good}"}):
            answer = http.request(method, url, headers=headers, **body)
            if probe:
                assert answer.status_code == 200, (method, path)
            else:
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert answer.json()["error"]["code"] == "invalid_api_key"
                assert good not in answer.text
        assert http.request(method, url, headers=bearer(good), **body).status_code != 401, (method, path)


def test_openai_client_with_and_without_key(srv):
    _, good = new_key(srv)
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        client(srv, "lathe-000000000000-wrong").models.list()
    assert [m.id for m in client(srv, good).models.list()] == [MODEL_NAME]


def test_keys_cli_creates_and_revokes(srv, capsys):
    db, recipe = f"platform.db_path={srv.db}", ["--recipe", "default"]  # overrides right after the action
    assert lathe(["keys", "create", db, *recipe, "--name", "from-cli", "--tier", "scale"]) == 0
    secret = capsys.readouterr().out.strip()
    assert client(srv, secret).models.list().data
    assert lathe(["keys", "list", db, *recipe]) == 0
    listed = capsys.readouterr().out
    key_id = secret.split("-")[1]
    assert re.search(rf"{key_id}\s+from-cli\s+scale\s+.*active", listed) and secret not in listed
    assert lathe(["keys", "revoke", db, *recipe, "--id", key_id]) == 0
    with pytest.raises(openai.AuthenticationError):
        client(srv, secret).models.list()
    assert lathe(["keys", "create", db, *recipe, "--name", "x", "--tier", "gold"]) == 2
    assert "tier 'gold' is not configured" in capsys.readouterr().err


def test_burst_over_the_request_limit_gets_429_and_headers(srv):
    _, key = new_key(srv, "burst")
    answers = [httpx2.get(f"{srv.base}/v1/models", headers=bearer(key)) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0", "0"]
    for answer in answers:  # on every response, refused or not
        assert answer.headers["x-ratelimit-limit-requests"] == "3"
        assert answer.headers["x-ratelimit-limit-tokens"] == "2000000"
        assert {"x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"} <= set(answer.headers)
    refused = answers[3]
    assert refused.json()["error"]["type"] == "requests" and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 15 <= int(refused.headers["retry-after"]) <= 20  # 3 a minute: one more every 20 s
    with pytest.raises(openai.RateLimitError):
        client(srv, key).models.list()
    _, other = new_key(srv, "burst")
    assert httpx2.get(f"{srv.base}/v1/models", headers=bearer(other)).status_code == 200  # per key


def test_token_limit_and_headers_on_errors(srv):
    _, key = new_key(srv, "few_tokens")
    c = client(srv, key)
    first = c.chat.completions.with_raw_response.create(model=MODEL_NAME, messages=HELLO, max_tokens=8)
    assert first.headers["x-ratelimit-remaining-tokens"] == "30"
    assert first.parse().usage.total_tokens > 30  # spent more than the bucket held: it is now in debt
    with pytest.raises(openai.RateLimitError) as refused:
        c.chat.completions.create(model=MODEL_NAME, messages=HELLO, max_tokens=8)
    assert refused.value.body["type"] == "tokens"
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    _, roomy = new_key(srv)
    missing = httpx2.get(f"{srv.base}/v1/models/nope", headers=bearer(roomy))
    assert missing.status_code == 404 and missing.headers["x-ratelimit-limit-requests"] == "6000"


def _usage(srv, key, expected_requests, **params):
    def answer():
        got = httpx2.get(f"{srv.base}/v1/usage", headers=bearer(key), params=params).json()
        return got if got["totals"]["requests"] == expected_requests else None
    return wait_for(answer, timeout=10)  # recorded when each response has ended


def test_usage_and_cost_of_online_requests(srv, capsys):
    a_id, a = new_key(srv)
    b_id, b = new_key(srv)
    c = client(srv, a)
    spent = [c.chat.completions.create(model=MODEL_NAME, messages=HELLO, max_tokens=5).usage]
    stream = c.chat.completions.create(model=MODEL_NAME, messages=HELLO, max_tokens=6, stream=True,
                                       stream_options={"include_usage": True})
    spent.append([chunk for chunk in stream][-1].usage)
    spent.append(c.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=4, n=2).usage)
    client(srv, b).chat.completions.create(model=MODEL_NAME, messages=HELLO, max_tokens=3)

    report = _usage(srv, a, 3)
    prompt, completion = sum(u.prompt_tokens for u in spent), sum(u.completion_tokens for u in spent)
    assert report["key_id"] == a_id and [g["model"] for g in report["data"]] == [MODEL_NAME]
    totals = report["totals"]
    assert (totals["prompt_tokens"], totals["completion_tokens"], totals["batch_requests"]) == (prompt, completion, 0)
    assert totals["cost_usd"] == pytest.approx((prompt + completion) * 0.30 / 1e6)
    assert _usage(srv, b, 1)["key_id"] == b_id  # each key sees its own usage only

    metrics = httpx2.get(f"{srv.base}/metrics", headers=bearer(a)).text
    assert f'lathe_usage_tokens_total{{batch="false",key="{a_id}",kind="completion",model="{MODEL_NAME}"}} ' \
           f'{float(completion)}' in metrics
    assert f'lathe_usage_cost_usd_total{{batch="false",key="{a_id}",model="{MODEL_NAME}"}}' in metrics
    assert httpx2.get(f"{srv.base}/metrics").status_code == 401  # platform.protect_metrics

    assert lathe(["usage", "--recipe", "default", f"platform.db_path={srv.db}", "--by", "key", "--json"]) == 0
    by_key = {g["key"]: g for g in json.loads(capsys.readouterr().out)["data"]}
    assert by_key[a_id]["prompt_tokens"] == prompt and by_key[b_id]["requests"] == 1


def _run_batch(c: openai.OpenAI, lines: list[dict]):
    upload = c.files.create(file=("in.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch")
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while (batch := c.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline and batch.status in ("validating", "in_progress", "finalizing")
        time.sleep(0.3)
    return upload, batch


def test_batch_usage_costs_half_and_uses_its_own_pool(srv):
    _, key = new_key(srv, "roomy_batch")  # online: 20 requests a minute; batch: 1000
    c = client(srv, key)
    lines = [{"custom_id": f"r{i}", "body": {"model": MODEL_NAME, "messages": HELLO, "max_tokens": 2}}
             for i in range(25)]  # more than the key's online allowance
    upload, batch = _run_batch(c, lines)
    assert batch.request_counts.completed == 25
    results = [json.loads(x) for x in c.files.content(batch.output_file_id).text.splitlines()]
    tokens = sum(r["response"]["body"]["usage"]["total_tokens"] for r in results)
    answer = httpx2.get(f"{srv.base}/v1/usage", headers=bearer(key))
    report = answer.json()
    assert report["totals"]["batch_requests"] == 25 and report["totals"]["total_tokens"] == tokens
    assert report["totals"]["cost_usd"] == pytest.approx(tokens * 0.30 / 1e6 * 0.5)
    # The batch's 25 lines took nothing from the online bucket: only the few online calls above did.
    assert 5 <= int(answer.headers["x-ratelimit-remaining-requests"]) < 20


def test_files_and_batches_belong_to_their_key(srv):
    _, a = new_key(srv)
    _, b = new_key(srv)
    upload, batch = _run_batch(client(srv, a), [{"custom_id": "x", "body": {"messages": HELLO, "max_tokens": 2}}])
    other = client(srv, b)
    for call in (lambda: other.files.retrieve(upload.id), lambda: other.files.content(batch.output_file_id),
                 lambda: other.batches.retrieve(batch.id), lambda: other.batches.cancel(batch.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [x.id for x in other.batches.list()]
    with pytest.raises(openai.BadRequestError, match="purpose 'assistants' is not supported"):
        other.files.create(file=("x.jsonl", b"{}"), purpose="assistants")
    with pytest.raises(openai.NotFoundError):  # an id is looked up in the database, never used as a path
        other.batches.create(input_file_id="../../etc/passwd", endpoint="/v1/chat/completions", completion_window="24h")
