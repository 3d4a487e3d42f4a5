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

from accounts import batches as rows
from accounts.files import file_content
from accounts.keys import key_tier
from accounts.usage import UsageRecord
from serving.access import Caller, Platform
from serving.batches import parse_input
from serving.errors import APIError, as_api_error, invalid_body, invalid_request
from serving.metering import RequestUsage
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
            batch_id = await self.claim()
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

    async def claim(self, batch_id: str | None = None) -> str | None:
        """Take the oldest active batch nobody holds (or `batch_id`), for one lease."""
        return await asyncio.to_thread(rows.claim, self.store, self.id, self.platform.config.batch.lease_s, batch_id)

    async def process(self, batch_id: str) -> None:
        """Run the batch from whatever status it is in to a final one (or until the lease is lost)."""
        while True:
            batch = await self._held(batch_id)
            if batch is None:
                return
            status = batch["status"]
            if status in ("validating", "in_progress") and time.time() > batch["expires_at"]:
                await self._end(batch, "expired", expire_pending=True)
            elif status == "validating":
                await self._validate(batch)
            elif status == "in_progress":
                await self._run_lines(batch)
            elif status == "finalizing":
                await self._end(batch, "completed")
            elif status == "cancelling":
                await self._end(batch, "cancelled")
            else:
                return

    async def _held(self, batch_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(rows.held, self.store, batch_id, self.id)

    async def _validate(self, batch: dict[str, Any]) -> None:
        content = await asyncio.to_thread(file_content, self.store, batch["input_file_id"], batch["owner"])
        limits, endpoint = self.platform.config.batch, batch["endpoint"]
        if content is None:
            lines, errors = [], [{"code": "missing_file", "message": "The input file no longer exists.",
                                  "param": "input_file_id", "line": None}]
        else:
            lines, line_errors = await asyncio.to_thread(parse_input, content, endpoint, limits)
            errors = [e.as_dict() for e in line_errors]
        lines_in = [(ln.line, ln.custom_id, json.dumps(ln.body)) for ln in lines]
        if await asyncio.to_thread(rows.validated, self.store, batch["id"], lines_in, errors) and errors:
            log.info("batch %s failed validation: %s", batch["id"], errors[0]["message"])

    async def _run_lines(self, batch: dict[str, Any]) -> None:
        caller = await self._caller(batch["owner"])
        pending = await asyncio.to_thread(rows.pending_lines, self.store, batch["id"])
        for line in pending:
            while True:
                current = await self._held(batch["id"])
                if current is None or current["status"] != "in_progress" or time.time() > current["expires_at"]:
                    return  # cancelled, expired or taken over: process() handles it
                if not await self._my_turn(caller):
                    continue
                outcome = await run_line(self.state, batch["endpoint"], json.loads(line["body"]))
                if not outcome.retry:
                    break
                await asyncio.sleep(0.5)
            await self._store_result(batch, caller, line, outcome)
        await asyncio.to_thread(rows.mark_finalizing, self.store, batch["id"])

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

    async def _store_result(self, batch: dict[str, Any], caller: Caller, line, outcome: LineOutcome) -> None:
        usage = outcome.usage
        record = None
        if usage.model is not None:
            record = UsageRecord(key_id=batch["owner"], model=usage.model, endpoint=batch["endpoint"],
                                 prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                                 latency_s=outcome.latency_s, status=outcome.status_code, batch=True,
                                 batch_id=batch["id"])
        cost = self.platform.meter.cost(record.model, record.prompt_tokens, record.completion_tokens, True) if record else 0.0
        inserted = await asyncio.to_thread(rows.store_result, self.store, batch["id"], self.id,
                                           self.platform.config.batch.lease_s, line, outcome.status_code, outcome.body,
                                           (record, cost) if record else None)
        if record is not None and inserted:
            self.platform.meter.observe(record, cost)
            if caller.tier:
                self.platform.limiter.charge(caller.key_id, caller.tier, usage.total_tokens, "batch")

    async def _end(self, batch: dict[str, Any], final: str, expire_pending: bool = False) -> None:
        if await asyncio.to_thread(rows.end, self.store, batch, self.id, final, expire_pending):  # else changed meanwhile: process() looks again
            log.info("batch %s %s", batch["id"], final)

    async def _caller(self, owner: str) -> Caller:
        config = self.platform.config
        tier = await asyncio.to_thread(key_tier, self.store, owner)
        if tier is None:  # anonymous (auth off) or `lathe batch run`
            return Caller(owner, config.anonymous_tier)
        return Caller(owner, tier if tier in config.tiers else config.default_tier)
