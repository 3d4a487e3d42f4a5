"""Admission control: a bounded number of requests in the server at once; the rest get 503.

A slot is taken before any work starts and given back when the response is finished (for a
stream: when the stream ends or the client leaves). Refusing early keeps latency bounded under load
instead of letting an unbounded queue grow in front of a single engine.
"""

from __future__ import annotations

from typing import Callable

from serving.errors import overloaded


class Slot:
    def __init__(self, queue: "AdmissionQueue", on_release: Callable[[], None] | None = None) -> None:
        self._queue = queue
        self._on_release = on_release
        self._released = False

    def release(self) -> None:
        """Idempotent, so both a stream's `finally` and the response's background task may call it."""
        if not self._released:
            self._released = True
            self._queue.in_use -= 1
            if self._on_release is not None:
                self._on_release()

    async def release_async(self) -> None:
        """For a response's BackgroundTask: Starlette runs sync tasks in a thread, and the count
        must only change on the event loop thread."""
        self.release()

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AdmissionQueue:
    """Counts admitted requests. Only touched from the event loop thread, so no lock is needed."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.in_use = 0

    def acquire(self, on_release: Callable[[], None] | None = None) -> Slot:
        if self.in_use >= self.max_size:
            raise overloaded(f"The server is at capacity ({self.max_size} requests in flight); retry later.")
        self.in_use += 1
        return Slot(self, on_release)
