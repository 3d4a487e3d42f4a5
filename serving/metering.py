"""Usage metering: every generation request (online or batch) becomes one row in the `usage` table
with its key, model, prompt and completion tokens, latency, batch flag and cost, and is added to the
Prometheus counters `lathe_usage_tokens_total` and `lathe_usage_cost_usd_total`.

Cost comes from the price table (`platform.prices`, dollars per million tokens, by served model name
with a `default`); batch requests pay `platform.batch_price_factor` of it (50% by default).
The generation routes report what they used through `track_usage` (the gate middleware reads it when
the response has ended); the batch worker records its lines itself, in the transaction that stores
the line's result, so a resumed batch is never billed twice.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, AsyncIterator, Literal

from recipes.schema import PlatformConfig
from serving.store import Store

if TYPE_CHECKING:
    from serving.generation import Delta
    from serving.metrics import ServerMetrics

GroupBy = Literal["key", "model", "day"]


@dataclass
class RequestUsage:
    """What one request used; a generation route fills it through `track_usage`."""

    model: str | None = None  # None: the request never reached generation (nothing to bill)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    async def counted(self, deltas: AsyncIterator["Delta"]) -> AsyncIterator["Delta"]:
        try:
            async for delta in deltas:
                self.completion_tokens += len(delta.tokens)
                yield delta
        finally:
            await deltas.aclose()  # a client that left must still cancel the generation underneath


def track_usage(usage: "RequestUsage | None", model: str, prompt_tokens: int, choices: list) -> list:
    """Count the tokens of a call's choices into its RequestUsage (the metering middleware's or the batch
    worker's; None: not metered); returns the choices to run."""
    if usage is None:
        return choices
    usage.model, usage.prompt_tokens = model, prompt_tokens
    return [usage.counted(choice) for choice in choices]


@dataclass
class UsageRecord:
    key_id: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    status: int
    batch: bool = False
    batch_id: str | None = None
    at: float = field(default_factory=time.time)


class Meter:
    def __init__(self, store: Store, config: PlatformConfig, metrics: "ServerMetrics | None" = None) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, batch: bool) -> float:
        price = self.config.prices.get(model) or self.config.prices["default"]
        dollars = (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1e6
        return dollars * (self.config.batch_price_factor if batch else 1.0)

    def record(self, record: UsageRecord) -> None:
        with self.store.transaction() as conn:
            cost = self.insert(conn, record)
        self.observe(record, cost)

    def insert(self, conn: sqlite3.Connection, record: UsageRecord) -> float:
        """Write the row inside the caller's transaction; returns the cost (pass it to `observe` after commit)."""
        cost = self.cost(record.model, record.prompt_tokens, record.completion_tokens, record.batch)
        conn.execute(
            "INSERT INTO usage (at, key_id, model, endpoint, prompt_tokens, completion_tokens, latency_s, batch, "
            "batch_id, status, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.at, record.key_id, record.model, record.endpoint, record.prompt_tokens,
             record.completion_tokens, record.latency_s, int(record.batch), record.batch_id, record.status, cost))
        return cost

    def observe(self, record: UsageRecord, cost: float) -> None:
        if self.metrics is None:
            return
        batch = "true" if record.batch else "false"
        tokens = self.metrics.usage_tokens
        tokens.labels(record.key_id, record.model, "prompt", batch).inc(record.prompt_tokens)
        tokens.labels(record.key_id, record.model, "completion", batch).inc(record.completion_tokens)
        self.metrics.usage_cost.labels(record.key_id, record.model, batch).inc(cost)


_GROUPS = {"key": "key_id", "model": "model", "day": "date(at, 'unixepoch')"}


def usage_report(store: Store, since: float | None, by: GroupBy, key_id: str | None = None) -> list[dict]:
    """Totals per key, model or day (UTC), oldest group first."""
    where, params = ["at >= ?"], [since or 0.0]
    if key_id is not None:
        where.append("key_id = ?")
        params.append(key_id)
    rows = store.rows(
        f"SELECT {_GROUPS[by]} AS grp, COUNT(*) AS requests, SUM(batch) AS batch_requests, "
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
        f"SUM(cost_usd) AS cost_usd FROM usage WHERE {' AND '.join(where)} GROUP BY grp ORDER BY grp", params)
    return [{by: row["grp"], "requests": row["requests"], "batch_requests": row["batch_requests"],
             "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
             "total_tokens": row["prompt_tokens"] + row["completion_tokens"], "cost_usd": row["cost_usd"]}
            for row in rows]


def totals(groups: list[dict]) -> dict:
    keys = ("requests", "batch_requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
    return {k: sum(g[k] for g in groups) for k in keys}


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """`7d`, `24h`, `30m` (ago), or an ISO date / date-time (UTC unless it says otherwise) -> epoch seconds.
    Raises ValueError with the accepted forms."""
    if not text:
        return None
    match = _RELATIVE.match(text.strip())
    if match:
        return (now if now is not None else time.time()) - float(match[1]) * _UNIT_S[match[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"since '{text}': use a duration ago (30m, 24h, 7d) or an ISO date such as 2026-11-01 "
                         "or 2026-11-01T12:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
