"""Usage rows and the one billing writer: every billed thing (an online request, a batch line, a fine-tuning
job's trained tokens) is one row in the `usage` table, written by `write_usage` only; reports read them back.

Inference cost comes from the price table (`platform.prices`, dollars per million tokens, by served model name
with a `default`); batch requests pay `platform.batch_price_factor` of it (50% by default). A fine-tuning job's
cost is its trained tokens at `serve.fine_tuning.price_per_million_tokens`, computed by the jobs plane.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from recipes.schema import PlatformConfig

if TYPE_CHECKING:
    from accounts.store import Store

GroupBy = Literal["key", "model", "day"]


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
    job_id: str | None = None
    """The fine-tuning job a training row bills."""
    at: float = field(default_factory=time.time)


def inference_cost(config: PlatformConfig, model: str, prompt_tokens: int, completion_tokens: int, batch: bool) -> float:
    price = config.prices.get(model) or config.prices["default"]
    dollars = (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1e6
    return dollars * (config.batch_price_factor if batch else 1.0)


def write_usage(conn: sqlite3.Connection, record: UsageRecord, cost: float) -> None:
    """The one writer of billing rows, inside the caller's transaction (so a batch line's result and its bill,
    or a job's trained tokens and its bill, commit together or not at all)."""
    conn.execute(
        "INSERT INTO usage (at, key_id, model, endpoint, prompt_tokens, completion_tokens, latency_s, batch, "
        "batch_id, status, cost_usd, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record.at, record.key_id, record.model, record.endpoint, record.prompt_tokens, record.completion_tokens,
         record.latency_s, int(record.batch), record.batch_id, record.status, cost, record.job_id))


def bill(store: "Store", record: UsageRecord, cost: float) -> None:
    """`write_usage` in a transaction of its own (an online request: nothing else commits with it)."""
    with store.transaction() as conn:
        write_usage(conn, record, cost)


_GROUPS = {"key": "key_id", "model": "model", "day": "date(at, 'unixepoch')"}


def usage_report(store: "Store", since: float | None, by: GroupBy, key_id: str | None = None) -> list[dict]:
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
