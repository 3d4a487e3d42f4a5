"""Server-sent events in the OpenAI shape: `data: {json}` chunks, then `data: [DONE]`."""

from __future__ import annotations

import json
import logging
from typing import AsyncIterator

from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from serving.errors import APIError, as_api_error
from serving.handlers import Call, Stream
from serving.limits import Slot

log = logging.getLogger("lathe.serving")


def sse_response(chunks: AsyncIterator[BaseModel], slot: Slot, *, include_usage: bool,
                 drain_s: float) -> EventSourceResponse:
    """Stream `chunks`; the admission slot is held until the stream ends or the client leaves.

    Chunks carry `"usage": null` only when the client asked for usage (as OpenAI does). An error
    after the 200 is sent as one `data: {"error": ...}` event, then [DONE] (as vLLM does).
    On server shutdown the stream may run `drain_s` more seconds (sse-starlette would otherwise
    cut it at once), so a drain finishes in-flight streams."""

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk.model_dump_json(exclude=None if include_usage else {"usage"})
            yield "[DONE]"
        except Exception as exc:  # noqa: BLE001 - the client must learn why its stream ended
            if not isinstance(exc, APIError):
                log.exception("error while streaming")
            yield json.dumps(as_api_error(exc).envelope())
            yield "[DONE]"
        finally:
            slot.release()

    # Also release in a background task: if the client leaves before the first event, `events`
    # never starts and its `finally` never runs.
    return EventSourceResponse(events(), background=BackgroundTask(slot.release_async),
                               shutdown_grace_period=drain_s)


def call_of(request) -> Call:
    """A handler's view of an HTTP request: the metering middleware's usage record, and whether the client left."""
    return Call(usage=getattr(request.state, "lathe_usage", None), disconnected=request.is_disconnected)


def http_response(result, state):
    """A handler's result as HTTP: a Stream as server-sent events, anything else as JSON (FastAPI's)."""
    if isinstance(result, Stream):
        return sse_response(result.chunks, result.slot, include_usage=result.include_usage,
                            drain_s=state.settings.drain_timeout_s)
    return result
