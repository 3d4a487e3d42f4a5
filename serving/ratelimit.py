"""Rate limits per key: requests/min and tokens/min, as token buckets, by tier (recipe `platform.tiers`).

Each key has two pools: `online` (HTTP requests) and `batch` (lines run by the batch worker), so batch
work never spends what online requests need. A bucket holds up to a minute's allowance and refills
evenly (a key may burst a full minute's worth, then continues at the steady rate).

Tokens are only known once a request has run, so a request is admitted while its key's token bucket
is positive, and its real prompt + completion tokens are taken when it ends: the bucket may go below
zero, and the key then gets 429 until it has refilled. Buckets live in memory (a restart refills them).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

from recipes.schema import TierConfig

Pool = Literal["online", "batch"]


@dataclass
class TokenBucket:
    per_minute: int
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.per_minute, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    def seconds_to_full(self) -> float:
        return max(0.0, (self.per_minute - self.level) / self.rate)


@dataclass
class Snapshot:
    """A key's standing after a check: what the x-ratelimit-* headers report."""

    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int | None  # None: no token limit in this tier
    remaining_tokens: int
    reset_tokens_s: float

    def headers(self) -> list[tuple[str, str]]:
        out = [("x-ratelimit-limit-requests", str(self.limit_requests)),
               ("x-ratelimit-remaining-requests", str(self.remaining_requests)),
               ("x-ratelimit-reset-requests", duration(self.reset_requests_s))]
        if self.limit_tokens is not None:
            out += [("x-ratelimit-limit-tokens", str(self.limit_tokens)),
                    ("x-ratelimit-remaining-tokens", str(self.remaining_tokens)),
                    ("x-ratelimit-reset-tokens", duration(self.reset_tokens_s))]
        return out


@dataclass
class Decision:
    allowed: bool
    snapshot: Snapshot
    exceeded: Literal["requests", "tokens"] | None = None
    retry_after_s: float = 0.0


class _KeyBuckets:
    def __init__(self, tier_name: str, requests_per_minute: int, tokens_per_minute: int | None, now: float):
        self.tier_name = tier_name
        self.requests = TokenBucket(requests_per_minute, requests_per_minute, now)
        self.tokens = TokenBucket(tokens_per_minute, tokens_per_minute, now) if tokens_per_minute else None

    def refill(self, now: float) -> None:
        self.requests.refill(now)
        if self.tokens:
            self.tokens.refill(now)

    def snapshot(self) -> Snapshot:
        tokens = self.tokens
        return Snapshot(self.requests.per_minute, max(0, math.floor(self.requests.level)),
                        self.requests.seconds_to_full(), tokens.per_minute if tokens else None,
                        max(0, math.floor(tokens.level)) if tokens else 0, tokens.seconds_to_full() if tokens else 0.0)


class RateLimiter:
    """Buckets by (key id, pool). Used from the event loop thread only, so no lock."""

    def __init__(self, tiers: dict[str, TierConfig], clock: Callable[[], float] = time.monotonic) -> None:
        self.tiers = tiers
        self.clock = clock
        self._buckets: dict[tuple[str, Pool], _KeyBuckets] = {}

    def _for(self, key_id: str, tier: str, pool: Pool) -> _KeyBuckets:
        now = self.clock()
        buckets = self._buckets.get((key_id, pool))
        if buckets is None or buckets.tier_name != tier:  # new key, or its tier changed
            config = self.tiers[tier]
            rpm, tpm = config.requests_per_minute, config.tokens_per_minute
            if pool == "batch":
                rpm = config.batch_requests_per_minute or rpm
                tpm = config.batch_tokens_per_minute or tpm
            buckets = self._buckets[(key_id, pool)] = _KeyBuckets(tier, rpm, tpm, now)
        buckets.refill(now)
        return buckets

    def acquire(self, key_id: str, tier: str, pool: Pool = "online") -> Decision:
        """Take one request if both buckets allow it; otherwise say which limit and for how long."""
        buckets = self._for(key_id, tier, pool)
        if buckets.requests.level < 1:
            return Decision(False, buckets.snapshot(), "requests", buckets.requests.seconds_until(1))
        if buckets.tokens is not None and buckets.tokens.level < 1:
            return Decision(False, buckets.snapshot(), "tokens", buckets.tokens.seconds_until(1))
        buckets.requests.level -= 1
        return Decision(True, buckets.snapshot())

    def charge(self, key_id: str, tier: str, tokens: int, pool: Pool = "online") -> None:
        """Take the tokens a finished request used (the bucket may go negative: see the module doc)."""
        buckets = self._for(key_id, tier, pool)
        if buckets.tokens is not None:
            buckets.tokens.level -= tokens

    async def wait(self, key_id: str, tier: str, pool: Pool = "batch") -> None:
        """Block until one request is allowed, then take it (the batch worker waits; it is never refused)."""
        while not (decision := self.acquire(key_id, tier, pool)).allowed:
            await asyncio.sleep(min(decision.retry_after_s, 5.0) + 0.01)


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text
