"""Whole models served beside the live one, by name: a Full fine-tuning job's model and its checkpoints.

Each is loaded when it is first called (the call waits; concurrent calls share the load) and stays loaded while it
is among the `max_full_models` most recently called. Loads run one at a time, and the least recently called model is
unloaded — after its last request, as a hot swap retires an engine — before another is loaded, so at most
`max_full_models` whole models are in memory at once (the live one aside). An unloaded model loads again when it
is called again. A model that failed to load answers 503 at once for `RETRY_AFTER_S`, then is tried again; one
whose directory is gone is dropped (404). A restart loads none: the names come back from the platform's database
and load on their first call. Adapters (LoRA jobs) are not here: they ride on the live model's engine (state.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from serving.engine import create_engine
from serving.errors import APIError, shutting_down

if TYPE_CHECKING:
    from serving.settings import ServerSettings
    from serving.state import ServedModel

log = logging.getLogger("lathe.serving")

RETRY_AFTER_S = 60.0


class ModelPool:
    def __init__(self, settings: "ServerSettings") -> None:
        self.settings = settings
        self.capacity = settings.max_full_models
        self.paths: dict[str, Path] = {}
        """Every whole model this server may serve, by name (loaded or not)."""
        self.loaded: OrderedDict[str, ServedModel] = OrderedDict()  # least recently called first
        self._lock = asyncio.Lock()  # one load at a time, and what is unloaded for it
        self._failed: dict[str, tuple[float, str]] = {}  # name -> (when, why) of its last failed load
        self._retiring: set[ServedModel] = set()  # unloaded, waiting for their last request; closed at shutdown
        self._tasks: set[asyncio.Task] = set()
        self.closed = False

    def __contains__(self, name: object) -> bool:
        return name in self.paths

    def add(self, name: str, model_dir: Path) -> None:
        self.paths[name] = Path(model_dir)
        self._failed.pop(name, None)

    def remove(self, name: str) -> None:
        """Stop serving `name` (e.g. its job was cancelled while it finished); a loaded one is closed after its last
        request, a load under way is dropped when it ends."""
        self.paths.pop(name, None)
        served = self.loaded.pop(name, None)
        if served is not None:
            task = asyncio.create_task(self._retire(served))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def get(self, name: str) -> "ServedModel":
        """The loaded model `name`, loading it now if needed. Returned without an await between the check and the
        return, so the caller can admit a request to it before anything unloads it."""
        served = self.loaded.get(name)
        if served is None:
            async with self._lock:
                served = self.loaded.get(name) or await self._load(name)
        self.loaded.move_to_end(name)
        return served

    async def _load(self, name: str) -> "ServedModel":
        from serving.state import ServedModel

        model_dir = self.paths.get(name)
        if self.closed:
            raise shutting_down()
        if model_dir is None or self.capacity == 0:  # removed meanwhile, or whole models are off on this server
            raise _gone(name, "it is no longer served" if model_dir is None else "this server serves no whole models "
                                                                                  "(serve.max_full_models is 0)")
        failed = self._failed.get(name)
        if failed and time.monotonic() - failed[0] < RETRY_AFTER_S:
            raise _load_failed(name, failed[1])
        if not model_dir.is_dir():
            log.warning("%s: its model directory %s is gone; no longer served", name, model_dir)
            self.paths.pop(name, None)
            raise _gone(name, "its files are gone from the server")
        while self.loaded and len(self.loaded) >= self.capacity:  # make room first: memory stays bounded
            old_name, old = self.loaded.popitem(last=False)
            log.info("unloading %s to load %s (max_full_models=%d); it loads again when called", old_name, name,
                     self.capacity)
            await self._retire(old)
        log.info("loading %s from %s", name, model_dir)
        engine = None
        try:
            engine = await asyncio.to_thread(create_engine, self.settings, model_dir, {})
            await engine.load()
        except Exception as exc:  # noqa: BLE001 - said to the caller, and remembered for RETRY_AFTER_S
            log.exception("%s: loading %s failed", name, model_dir)
            reason = (engine.load_error if engine is not None else None) or f"{type(exc).__name__}: {exc}"
            if engine is not None:
                await asyncio.to_thread(engine.close)
            self._failed[name] = (time.monotonic(), reason)
            raise _load_failed(name, reason) from None
        served = ServedModel(engine, model_dir)
        if self.closed or name not in self.paths:  # the server stopped, or the model was removed, during the load
            await asyncio.to_thread(engine.close)
            raise shutting_down() if self.closed else _gone(name, "it is no longer served")
        self._failed.pop(name, None)
        self.loaded[name] = served
        return served

    async def _retire(self, served: "ServedModel") -> None:
        self._retiring.add(served)
        try:
            await retire(served)
        finally:
            self._retiring.discard(served)

    def close(self) -> None:
        """Shutdown: close every engine, loaded or being unloaded (the server has drained its requests)."""
        self.closed = True
        for task in self._tasks:
            task.cancel()
        for served in [*self.loaded.values(), *self._retiring]:
            served.live = False
            served.engine.close()
        self.loaded.clear()
        self._retiring.clear()


async def retire(served: "ServedModel") -> None:
    """Close `served`'s engine once its last admitted request is done; no new request is admitted to it."""
    served.live = False
    if served.users:
        await served.retired.wait()
    await asyncio.to_thread(served.engine.close)


def _gone(name: str, why: str) -> APIError:
    return APIError(404, f"The model '{name}' cannot be called: {why}.", "invalid_request_error", "model",
                    "model_not_found")


def _load_failed(name: str, reason: str) -> APIError:
    return APIError(503, f"The model '{name}' failed to load: {reason}. It is tried again {RETRY_AFTER_S:g} s after "
                         "the failure.", "server_error", code="model_load_failed")
