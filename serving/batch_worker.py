"""The batch worker: runs batches in the background, at lower priority than online traffic.

It runs one line at a time, only while no online request is in flight (an online request waits at
most for the one line running), through the same route functions as online requests (so the output
is what POST /v1/chat/completions would answer), and takes its rate from the key's `batch` pool.
Each line's result is committed with its usage row in one transaction (see batches.py): killed at any
moment, a restarted worker redoes only the lines without a committed result, and bills none twice.

A worker holds the batch it runs through a lease (`platform.batch.lease_s`), renewed after every
line; a batch whose lease ran out (its server died) is taken over by the next worker that looks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from serving.access import Caller, Platform
from serving.batches import ACTIVE, finish, parse_input
from serving.errors import APIError, as_api_error, invalid_body, invalid_request
from serving.files import file_content
from serving.metering import RequestUsage, UsageRecord
from serving.state import ServerState

log = logging.getLogger("lathe.serving")


@dataclass
class LineOutcome:
    status_code: int
    body: dict[str, Any]
    usage: RequestUsage = field(default_factory=RequestUsage)
    retry: bool = False  # the server could not take it now (loading, shutting down): run it again later
    latency_s: float = 0.0


async def run_line(state: ServerState, endpoint: str, body: dict[str, Any]) -> LineOutcome:
    """One request body through the handler the online route calls; the HTTP status and JSON it would answer."""
    from fastapi.encoders import jsonable_encoder

    from serving.handlers import Call
    from serving.handlers.chat import create_chat_completion
    from serving.handlers.completions import create_completion
    from serving.protocol import ChatCompletionRequest, CompletionRequest

    call, started = Call(usage=RequestUsage()), time.perf_counter()
    try:
        if body.get("stream"):
            raise invalid_request("stream is not supported in a batch (each result is written whole).", "stream")
        if endpoint == "/v1/chat/completions":
            response = await create_chat_completion(state, ChatCompletionRequest.model_validate(body), call)
        else:
            response = await create_completion(state, CompletionRequest.model_validate(body), call)
        outcome = LineOutcome(200, jsonable_encoder(response), call.usage)
    except ValidationError as exc:
        outcome = LineOutcome(400, invalid_body(exc).envelope())
    except APIError as exc:
        retry = exc.status_code in (499, 503)
        outcome = LineOutcome(exc.status_code, exc.envelope(), call.usage, retry=retry)
    except Exception as exc:  # noqa: BLE001 - one bad line must not stop the batch
        log.exception("batch line failed")
        outcome = LineOutcome(500, as_api_error(exc).envelope(), call.usage)
    outcome.latency_s = time.perf_counter() - started
    return outcome


class BatchWorker:
    def __init__(self, state: ServerState, platform: Platform) -> None:
        self.state = state
        self.platform = platform
        self.store = platform.store
        self.id = f"worker-{secrets.token_hex(6)}"
        self.idle = asyncio.Event()  # set while there is nothing to do (tests and `lathe batch run` wait on it)

    async def run_forever(self) -> None:
        config = self.platform.config.batch
        while True:
            batch_id = self.claim()
            if batch_id is None:
                self.idle.set()
                await self._sleep(config.poll_interval_s)
                continue
            self.idle.clear()
            try:
                await self.process(batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving other batches; this one is retried after its lease
                log.exception("batch %s: the worker failed; it will be retried", batch_id)
                await asyncio.sleep(config.poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        wakeup = self.platform.batch_wakeup
        try:
            await asyncio.wait_for(wakeup.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        wakeup.clear()

    def claim(self, batch_id: str | None = None) -> str | None:
        """Take the oldest active batch nobody holds (or `batch_id`), for one lease."""
        now = time.time()
        marks = ", ".join("?" for _ in ACTIVE)
        only = " AND id = ?" if batch_id else ""
        with self.store.transaction() as conn:
            row = conn.execute(
                f"SELECT id FROM batches WHERE status IN ({marks}) AND (lease_owner IS NULL OR lease_owner = ? OR "
                f"lease_until < ?){only} ORDER BY seq LIMIT 1",
                (*ACTIVE, self.id, now, *([batch_id] if batch_id else []))).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id = ?",
                         (self.id, now + self.platform.config.batch.lease_s, row["id"]))
            return row["id"]

    async def process(self, batch_id: str) -> None:
        """Run the batch from whatever status it is in to a final one (or until the lease is lost)."""
        while True:
            batch = self._held(batch_id)
            if batch is None:
                return
            status = batch["status"]
            if status in ("validating", "in_progress") and time.time() > batch["expires_at"]:
                self._end(batch, "expired", expire_pending=True)
            elif status == "validating":
                await self._validate(batch)
            elif status == "in_progress":
                await self._run_lines(batch)
            elif status == "finalizing":
                self._end(batch, "completed")
            elif status == "cancelling":
                self._end(batch, "cancelled")
            else:
                return

    def _held(self, batch_id: str) -> dict[str, Any] | None:
        row = self.store.row("SELECT * FROM batches WHERE id = ? AND lease_owner = ?", (batch_id, self.id))
        return dict(row) if row else None

    async def _validate(self, batch: dict[str, Any]) -> None:
        content = file_content(self.store, batch["input_file_id"], batch["owner"])
        limits, endpoint = self.platform.config.batch, batch["endpoint"]
        if content is None:
            lines, errors = [], [{"code": "missing_file", "message": "The input file no longer exists.",
                                  "param": "input_file_id", "line": None}]
        else:
            lines, line_errors = await asyncio.to_thread(parse_input, content, endpoint, limits)
            errors = [e.as_dict() for e in line_errors]
        with self.store.transaction() as conn:
            if conn.execute("SELECT status FROM batches WHERE id = ?", (batch["id"],)).fetchone()[0] != "validating":
                return  # cancelled meanwhile
            if errors:
                conn.execute("UPDATE batches SET status = 'failed', failed_at = ?, errors = ?, lease_owner = NULL "
                             "WHERE id = ?", (time.time(), json.dumps(errors), batch["id"]))
                log.info("batch %s failed validation: %s", batch["id"], errors[0]["message"])
                return
            conn.executemany("INSERT INTO batch_lines (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                             [(batch["id"], ln.line, ln.custom_id, json.dumps(ln.body)) for ln in lines])
            conn.execute("UPDATE batches SET status = 'in_progress', in_progress_at = ?, total = ? WHERE id = ?",
                         (time.time(), len(lines), batch["id"]))

    async def _run_lines(self, batch: dict[str, Any]) -> None:
        caller = self._caller(batch["owner"])
        pending = self.store.rows(
            "SELECT l.line, l.custom_id, l.body FROM batch_lines l LEFT JOIN batch_results r ON "
            "r.batch_id = l.batch_id AND r.custom_id = l.custom_id WHERE l.batch_id = ? AND r.custom_id IS NULL "
            "ORDER BY l.line", (batch["id"],))
        for line in pending:
            while True:
                current = self._held(batch["id"])
                if current is None or current["status"] != "in_progress" or time.time() > current["expires_at"]:
                    return  # cancelled, expired or taken over: process() handles it
                if not await self._my_turn(caller):
                    continue
                outcome = await run_line(self.state, batch["endpoint"], json.loads(line["body"]))
                if not outcome.retry:
                    break
                await asyncio.sleep(0.5)
            self._store_result(batch, caller, line, outcome)
        self.store.execute("UPDATE batches SET status = 'finalizing', finalizing_at = ? WHERE id = ? AND "
                           "status = 'in_progress'", (time.time(), batch["id"]))

    async def _my_turn(self, caller: Caller) -> bool:
        """True when a line may start now: the model is ready, no online request is in flight, and the
        key's batch pool has room. Otherwise waits a moment and says False (the caller re-checks status)."""
        state = self.state
        if state.draining or not state.engine.ready or state.queue.in_use > 0:
            await asyncio.sleep(0.05)
            return False
        if caller.tier is None:
            return True
        decision = self.platform.limiter.acquire(caller.key_id, caller.tier, "batch")
        if not decision.allowed:
            await asyncio.sleep(min(decision.retry_after_s, 1.0) + 0.01)
            return False
        return True

    def _store_result(self, batch: dict[str, Any], caller: Caller, line, outcome: LineOutcome) -> None:
        usage = outcome.usage
        record = None
        if usage.model is not None:
            record = UsageRecord(key_id=batch["owner"], model=usage.model, endpoint=batch["endpoint"],
                                 prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                                 latency_s=outcome.latency_s, status=outcome.status_code, batch=True,
                                 batch_id=batch["id"])
        cost = 0.0
        with self.store.transaction() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO batch_results (batch_id, custom_id, line, id, status_code, response) "
                "VALUES (?, ?, ?, ?, ?, ?)", (batch["id"], line["custom_id"], line["line"],
                                              f"batch_req_{secrets.token_hex(12)}", outcome.status_code,
                                              json.dumps(outcome.body))).rowcount
            if inserted and record is not None:  # another worker's result came first: bill nothing twice
                cost = self.platform.meter.insert(conn, record)
            conn.execute("UPDATE batches SET lease_until = ? WHERE id = ? AND lease_owner = ?",
                         (time.time() + self.platform.config.batch.lease_s, batch["id"], self.id))
        if record is not None and inserted:
            self.platform.meter.observe(record, cost)
            if caller.tier:
                self.platform.limiter.charge(caller.key_id, caller.tier, usage.total_tokens, "batch")

    def _end(self, batch: dict[str, Any], final: str, expire_pending: bool = False) -> None:
        with self.store.transaction() as conn:
            current = conn.execute("SELECT status, lease_owner FROM batches WHERE id = ?", (batch["id"],)).fetchone()
            if current["lease_owner"] != self.id or current["status"] != batch["status"]:
                return  # changed meanwhile (e.g. cancelled): process() looks again
            if expire_pending:
                error = json.dumps({"code": "batch_expired",
                                    "message": "This request was not run before the batch's completion_window ended."})
                conn.execute(
                    "INSERT OR IGNORE INTO batch_results (batch_id, custom_id, line, id, status_code, error) "
                    "SELECT batch_id, custom_id, line, 'batch_req_' || lower(hex(randomblob(12))), NULL, ? "
                    "FROM batch_lines WHERE batch_id = ?", (error, batch["id"]))
            finish(conn, batch, final)
        log.info("batch %s %s", batch["id"], final)

    def _caller(self, owner: str) -> Caller:
        config = self.platform.config
        row = self.store.row("SELECT tier FROM api_keys WHERE id = ?", (owner,))
        if row is None:  # anonymous (auth off) or `lathe batch run`
            return Caller(owner, config.anonymous_tier)
        return Caller(owner, row["tier"] if row["tier"] in config.tiers else config.default_tier)
