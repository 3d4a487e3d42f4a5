"""The serving logic between the HTTP routes and the engines (vLLM's `serving_chat` / `serving_completion`):
a handler takes the server state, a parsed request and a `Call`, and returns the response, or a `Stream` of
chunks for `stream: true`. Routes (serving/routes/) and the batch worker call the same handlers; nothing outside
HTTP calls a route, and no handler sees an HTTP request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel

from serving.limits import Slot
from serving.metering import RequestUsage


async def _never() -> bool:
    return False


@dataclass
class Call:
    """Who asked, as far as a handler needs to know."""

    usage: RequestUsage | None = None
    """Where the call's token counts go (the metering middleware's, or the batch worker's); None: not metered."""
    disconnected: Callable[[], Awaitable[bool]] = _never
    """Whether the caller has gone (an HTTP client hanging up); generation stops when it has."""


@dataclass
class Stream:
    """A streamed answer: its chunks, and the admission slot to hold until they end."""

    chunks: AsyncIterator[BaseModel]
    slot: Slot
    include_usage: bool
