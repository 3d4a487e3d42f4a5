"""Who may call, and how much: API keys, rate limits and usage metering around every request.

`Platform` holds the platform's parts (database, rate limiter, meter). `AccessMiddleware` runs
before any route: it checks the key (401 in OpenAI's envelope when missing or wrong), takes one
request from the key's online bucket (429 with Retry-After when a limit is hit), adds the
x-ratelimit-* headers to every /v1 response of a rate-limited caller, and once the response has ended records the usage a
generation route reported (see metering.track_usage) and charges its tokens to the key's bucket.
Plain ASGI, like app._CountRequests: Starlette's BaseHTTPMiddleware would hide client disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from fastapi import Request

from accounts.keys import ANONYMOUS, auth_enabled, authenticate, bearer_token, needs_key
from accounts.store import Store
from accounts.usage import UsageRecord
from recipes.schema import PlatformConfig
from serving.errors import error_response, forbidden, rate_limited, unauthorized
from serving.metering import Meter, RequestUsage
from serving.ratelimit import RateLimiter

log = logging.getLogger("lathe.serving")


@dataclass(frozen=True)
class Caller:
    key_id: str  # ANONYMOUS when auth is off
    tier: str | None  # None: not rate-limited (anonymous callers, unless platform.anonymous_tier)


class Platform:
    def __init__(self, config: PlatformConfig, host: str, metrics=None) -> None:
        self.config = config
        self.store = Store(config.db_path)
        self.auth_on = auth_enabled(config, host)
        self.limiter = RateLimiter(config.tiers)
        self.meter = Meter(self.store, config, metrics)
        self.metrics = metrics
        self.batch_wakeup = asyncio.Event()  # set when a batch is created or cancelled: the worker looks at once

    def close(self) -> None:
        self.store.close()


def get_platform(request: Request) -> Platform:
    return request.app.state.platform


def get_caller(request: Request) -> Caller:
    return request.state.lathe_caller


class AccessMiddleware:
    def __init__(self, app, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        platform, path = self.platform, scope["path"]
        caller = Caller(ANONYMOUS, platform.config.anonymous_tier)
        if platform.auth_on and needs_key(platform.config, path):
            token = bearer_token(_header(scope, b"authorization"))
            key = await asyncio.to_thread(authenticate, platform.store, token)  # SQLite, off the event loop
            if key is None:
                message = ("Missing API key: send it as `Authorization: Bearer <key>` (create one with "
                           "`lathe keys create`)." if token is None else
                           "Incorrect API key provided (unknown, malformed or revoked).")
                response = error_response(unauthorized(message), headers={"www-authenticate": "Bearer"})
                return await response(scope, receive, send)
            if key.tier not in platform.config.tiers:
                response = error_response(forbidden(f"This key's tier '{key.tier}' is not configured on the server "
                                                    f"(platform.tiers: {', '.join(platform.config.tiers)})."))
                return await response(scope, receive, send)
            caller = Caller(key.id, key.tier)
        state = scope.setdefault("state", {})
        state["lathe_caller"] = caller
        if not path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        await self._limited(scope, receive, send, caller, state)

    async def _limited(self, scope, receive, send, caller: Caller, state: dict) -> None:
        platform = self.platform
        decision = platform.limiter.acquire(caller.key_id, caller.tier) if caller.tier else None
        headers = decision.snapshot.headers() if decision else []
        if decision and not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after_s))
            if platform.metrics is not None:
                platform.metrics.rate_limited.labels(caller.key_id, decision.exceeded).inc()
            limit = getattr(decision.snapshot, f"limit_{decision.exceeded}")
            error = rate_limited(f"Rate limit reached for {decision.exceeded} per minute (tier '{caller.tier}': "
                                 f"limit {limit}). Please try again in {retry_after}s.", decision.exceeded)
            response = error_response(error, headers={**dict(headers), "retry-after": str(retry_after)})
            return await response(scope, receive, send)

        usage = state["lathe_usage"] = RequestUsage()
        started, status = time.perf_counter(), 500
        encoded = [(name.encode(), value.encode()) for name, value in headers]

        async def send_with_headers(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *encoded]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if usage.model is not None:
                await self._bill(caller, usage, scope["path"], time.perf_counter() - started, status)

    async def _bill(self, caller: Caller, usage: RequestUsage, path: str, latency_s: float, status: int) -> None:
        platform = self.platform
        if caller.tier:
            platform.limiter.charge(caller.key_id, caller.tier, usage.total_tokens)
        try:
            await asyncio.to_thread(platform.meter.record, UsageRecord(key_id=caller.key_id, model=usage.model, endpoint=path,
                                              prompt_tokens=usage.prompt_tokens,
                                              completion_tokens=usage.completion_tokens,
                                              latency_s=latency_s, status=status))
        except Exception:  # the response is already sent: metering must not turn it into an error
            log.exception("could not record usage of a %s request", path)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
