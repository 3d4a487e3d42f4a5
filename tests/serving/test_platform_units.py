"""The platform's parts without a server: keys, token buckets, prices, batch input validation."""

from __future__ import annotations

import json

import pytest

from accounts.keys import auth_enabled, authenticate, create_key, list_keys, revoke_key
from accounts.store import Store
from accounts.usage import UsageRecord, parse_since, usage_report
from recipes import LatheError
from recipes.schema import BatchConfig, PlatformConfig
from serving.batches import parse_input
from serving.metering import Meter
from serving.ratelimit import RateLimiter, duration

CHAT = "/v1/chat/completions"


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "platform.db")
    yield s
    s.close()


def test_keys_are_stored_hashed_and_checked(store, tmp_path):
    config = PlatformConfig()
    key, secret = create_key(store, "ci", "scale", config)
    assert secret.startswith(f"lathe-{key.id}-")
    assert secret.split("-", 2)[2].encode() not in (tmp_path / "platform.db").read_bytes()  # only its hash
    assert authenticate(store, secret).tier == "scale"
    for wrong in (None, "", "sk-abc", secret[:-1] + ("A" if secret[-1] != "A" else "B"),
                  f"lathe-000000000000-{secret.split('-', 2)[2]}"):
        assert authenticate(store, wrong) is None, wrong
    revoke_key(store, key.id)
    assert authenticate(store, secret) is None
    assert list_keys(store)[0].revoked_at is not None
    with pytest.raises(LatheError, match="already revoked"):
        revoke_key(store, key.id)
    with pytest.raises(LatheError, match="tier 'gold' is not configured"):
        create_key(store, "x", "gold", config)


def test_auth_defaults_to_on_off_loopback():
    auto = PlatformConfig()
    assert not auth_enabled(auto, "127.0.0.1") and not auth_enabled(auto, "::1") and not auth_enabled(auto, "localhost")
    assert auth_enabled(auto, "0.0.0.0") and auth_enabled(auto, "10.1.2.3") and auth_enabled(auto, "my-host")
    assert auth_enabled(PlatformConfig(auth="on"), "127.0.0.1")
    assert not auth_enabled(PlatformConfig(auth="off"), "0.0.0.0")


def test_default_tiers_and_added_ones():
    tiers = PlatformConfig(tiers={"tiny": {"requests_per_minute": 3}}).tiers
    assert (tiers["build"].requests_per_minute, tiers["build"].tokens_per_minute) == (6000, 2_000_000)
    assert (tiers["scale"].requests_per_minute, tiers["scale"].tokens_per_minute) == (9000, None)
    assert tiers["tiny"].requests_per_minute == 3


def test_token_buckets_refill_evenly_and_pools_are_separate():
    now = [1000.0]
    tiers = PlatformConfig(tiers={"t": {"requests_per_minute": 2, "tokens_per_minute": 60}}).tiers
    limiter = RateLimiter(tiers, clock=lambda: now[0])
    assert limiter.acquire("k", "t").allowed and limiter.acquire("k", "t").allowed
    refused = limiter.acquire("k", "t")
    assert not refused.allowed and refused.exceeded == "requests" and refused.retry_after_s == pytest.approx(30)
    assert limiter.acquire("k", "t", "batch").allowed  # the batch pool is untouched
    now[0] += 30  # half a minute refills one request
    assert limiter.acquire("k", "t").allowed
    limiter.charge("k", "t", 90)  # 60 - 90: in debt
    now[0] += 30
    refused = limiter.acquire("k", "t")  # requests are back, tokens at 0 + 30 - 30 = 0 < 1
    assert refused.exceeded == "tokens" and refused.retry_after_s == pytest.approx(1)
    headers = dict(refused.snapshot.headers())
    assert headers["x-ratelimit-limit-tokens"] == "60" and headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "1m0s"


def test_reset_durations_read_like_openai():
    assert [duration(s) for s in (0.02, 1.5, 20, 360)] == ["20ms", "1.5s", "20s", "6m0s"]


def test_cost_uses_the_price_table_and_batch_factor(store):
    config = PlatformConfig(prices={"big": {"input_per_million": 1.0, "output_per_million": 4.0}})
    meter = Meter(store, config)
    assert meter.cost("any", 600_000, 400_000, batch=False) == pytest.approx(0.30)
    assert meter.cost("any", 600_000, 400_000, batch=True) == pytest.approx(0.15)
    assert meter.cost("big", 1_000_000, 1_000_000, batch=False) == pytest.approx(5.0)
    for key, model, batch in (("a", "m1", False), ("a", "m2", True), ("b", "m1", False)):
        meter.record(UsageRecord(key, model, CHAT, 1000, 1000, 0.1, 200, batch=batch))
    by_key = {g["key"]: g for g in usage_report(store, None, "key")}
    assert by_key["a"]["requests"] == 2 and by_key["a"]["batch_requests"] == 1
    assert by_key["a"]["cost_usd"] == pytest.approx(0.0006 + 0.0003)
    assert [g["model"] for g in usage_report(store, None, "model", key_id="b")] == ["m1"]
    assert usage_report(store, parse_since("1h"), "day")[0]["requests"] == 3
    assert usage_report(store, parse_since("2999-01-01"), "day") == []


def _lines(*items) -> bytes:
    return "\n".join(i if isinstance(i, str) else json.dumps(i) for i in items).encode()


def _openai(custom_id, url=CHAT, method="POST"):
    return {"custom_id": custom_id, "method": method, "url": url, "body": {"messages": []}}


def test_batch_input_both_forms_accepted():
    lines, errors = parse_input(_lines(_openai("a"), {"custom_id": "b", "body": {"prompt": "x"}}, ""), CHAT,
                                BatchConfig())
    assert errors == [] and [(ln.line, ln.custom_id) for ln in lines] == [(1, "a"), (2, "b")]


def test_batch_input_errors_name_their_line():
    content = _lines(_openai("a"), "{not json", _openai("a"), _openai("c", url="/v1/embeddings"),
                     _openai("d", method="GET"), {"body": {}}, {"custom_id": "e", "body": "text"}, "[1]")
    lines, errors = parse_input(content, CHAT, BatchConfig())
    assert lines == []
    assert [(e.line, e.code) for e in errors] == [
        (2, "invalid_json"), (3, "duplicate_custom_id"), (4, "invalid_url"), (5, "invalid_method"),
        (6, "missing_custom_id"), (7, "invalid_body"), (8, "invalid_json")]
    assert errors[1].message == "Line 3: custom_id 'a' is already used on line 1."
    assert "'/v1/embeddings' does not match the batch's endpoint '/v1/chat/completions'" in errors[2].message


def test_batch_input_limits():
    three = _lines(_openai("a"), _openai("b"), _openai("c"))
    assert parse_input(three, CHAT, BatchConfig(max_lines=2))[1][0].code == "too_many_lines"
    assert parse_input(three, CHAT, BatchConfig(max_file_bytes=10))[1][0].code == "file_too_large"
    assert parse_input(b"\n\n", CHAT, BatchConfig())[1][0].code == "empty_file"
    assert parse_input(b'{"a": 1}\n\xff\n', CHAT, BatchConfig())[1][0].line == 2
