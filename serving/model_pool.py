"""Whole models served beside the live one, by name: a Full fine-tuning job's model and its checkpoints.

Each is loaded when it is first called (the call waits; concurrent calls share the load) and stays loaded while it
is among the `max_full_models` most recently called; the least recently called one is unloaded to make room — after
its last request, as a hot swap retires an engine — and loaded again when it is called again. A restart loads none:
the names come back from the platform's database and load on their first call. Adapters (LoRA jobs) are not here:
they ride on the live model's engine (state.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from serving.engine import create_engine
from serving.errors import APIError

if TYPE_CHECKING:
    from serving.settings import ServerSettings
    from serving.state import ServedModel

log = logging.getLogger("lathe.serving")


class ModelPool:
    def __init__(self, settings: "ServerSettings") -> None:
        self.settings = settings
        self.capacity = settings.max_full_models
        self.paths: dict[str, Path] = {}
        """Every whole model this server may serve, by name (loaded or not)."""
        self.loaded: OrderedDict[str, ServedModel] = OrderedDict()  # least recently called first
        self._loading: dict[str, asyncio.Task] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.paths

    def add(self, name: str, model_dir: Path) -> None:
        self.paths[name] = Path(model_dir)

    async def remove(self, name: str) -> None:
        """Stop serving `name` (e.g. its job was cancelled while it finished)."""
        self.paths.pop(name, None)
        served = self.loaded.pop(name, None)
        if served is not None:
            await retire(served)

    async def get(self, name: str) -> "ServedModel":
        """The loaded model `name` (loading it now, and unloading the least recently called one, if needed)."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        task = self._loading.get(name)
        if task is None:
            task = self._loading[name] = asyncio.create_task(self._load(name))
        return await asyncio.shield(task)  # a caller that disconnects does not cancel the others' load

    async def _load(self, name: str) -> "ServedModel":
        from serving.state import ServedModel

        try:
            model_dir = self.paths[name]
            log.info("loading %s from %s (%d of %d whole models loaded)", name, model_dir, len(self.loaded),
                     self.capacity)
            engine = None
            try:
                engine = await asyncio.to_thread(create_engine, self.settings, model_dir, {})
                await engine.load()
            except Exception as exc:  # noqa: BLE001 - said to the caller, who may call again
                reason = (engine.load_error if engine is not None else None) or f"{type(exc).__name__}: {exc}"
                if engine is not None:
                    await asyncio.to_thread(engine.close)
                raise APIError(503, f"The model '{name}' failed to load: {reason}", "server_error",
                               code="model_load_failed") from None
            served = ServedModel(engine, model_dir)
            self.loaded[name] = served
            while len(self.loaded) > self.capacity:
                old_name, old = self.loaded.popitem(last=False)
                log.info("unloading %s to make room (max_full_models=%d); it loads again when called",
                         old_name, self.capacity)
                asyncio.create_task(retire(old))
            return served
        finally:
            self._loading.pop(name, None)

    def close(self) -> None:
        for served in self.loaded.values():
            served.engine.close()
        self.loaded.clear()


async def retire(served: "ServedModel") -> None:
    """Close `served`'s engine once its last admitted request is done; no new request is admitted to it."""
    served.live = False
    if served.users:
        await served.retired.wait()
    await asyncio.to_thread(served.engine.close)  # joins engine threads: off the event loop
