"""What every route needs: the settings, the live engine, the admission queue and the metrics.

The live model can change while the server runs (the registry alias it follows moved, see
watcher.py). A request takes the engine that is live when it is admitted and keeps it to the end,
so a swap never touches requests in flight; the old engine is closed once its last user is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from serving.engine import Engine, adapters_for_base, create_engine
from serving.errors import APIError, model_not_found, not_ready, shutting_down
from serving.limits import AdmissionQueue, Slot
from serving.metrics import ServerMetrics
from serving.model_pool import ModelPool, retire
from serving.settings import ServerSettings

log = logging.getLogger("lathe.serving")


@dataclass(eq=False)
class ServedModel:
    engine: Engine
    model_dir: Path
    version: str | None = None  # the registry version, when the server follows an alias
    adapters: dict[str, Path] = field(default_factory=dict)
    """The LoRA adapters loaded on this engine, by served name: those of the state's adapter pool that fit its base."""
    users: int = 0  # admitted requests that use this engine
    live: bool = True  # False once swapped out or unloaded: closed after its last user
    retired: asyncio.Event = field(default_factory=asyncio.Event)


def new_served_model(settings: ServerSettings, model_dir: Path, pool: dict[str, Path], version: str | None = None) -> ServedModel:
    """An engine for `model_dir` (not loaded yet) with those of the adapter pool (the configured adapters and
    those a plane added, e.g. fine-tuned ones) that fit that base: the same rule at start-up and at every hot swap."""
    adapters = adapters_for_base(pool, model_dir)
    return ServedModel(create_engine(settings, model_dir, adapters), Path(model_dir), version, adapters=adapters)


@dataclass
class Admission:
    """An admitted request: the engine it uses to the end, its adapter, and its queue slot."""

    engine: Engine
    adapter: str | None
    slot: Slot
    admitted_at: float


class ServerState:
    def __init__(self, settings: ServerSettings, served: ServedModel, adapter_pool: dict[str, Path] | None = None) -> None:
        self.settings = settings  # never changed after start: what changes at run time lives here
        self.served = served
        self.adapter_pool = dict(settings.adapters if adapter_pool is None else adapter_pool)
        """Every adapter this server may serve, by name (an engine loads those that fit its base)."""
        self.models = ModelPool(settings)
        """Whole models served beside the live one (Full fine-tuning jobs' results), loaded when called."""
        self.queue = AdmissionQueue(settings.max_queue)
        self.draining = False
        self.metrics = ServerMetrics(running=lambda: self.served.engine.num_running,
                                     waiting=lambda: self.served.engine.num_waiting,
                                     in_flight=lambda: self.queue.in_use)

    @property
    def engine(self) -> Engine:
        return self.served.engine

    def model_names(self) -> list[str]:
        return [self.settings.model_name, *self.served.adapters, *self.models.paths]

    def check_model(self, requested: str | None) -> None:
        """404 unless `requested` names a served model (the live one, an adapter, or a whole model of the pool)."""
        if requested is None or requested not in self.models:
            self.adapter_for(requested)

    async def target(self, requested: str | None) -> tuple[ServedModel, str | None]:
        """The model a request names and its adapter: the live model (`model` omitted or its name), one of its
        adapters, or a whole model of the pool (loaded now if it is not). Then, without an await in between:
        ready_engine(served), admit(...)."""
        if self.draining:
            raise shutting_down()
        if requested is not None and requested in self.models:
            with self.queue.acquire():  # a call waiting for a load holds a place: max_queue bounds the waiters too
                return await self.models.get(requested), None
        return self.served, self.adapter_for(requested)

    def adapter_for(self, requested: str | None) -> str | None:
        """`model` may be omitted (the base model) but must name a served model or adapter."""
        if requested is None or requested == self.settings.model_name:
            return None
        if requested in self.served.adapters:
            return requested
        raise model_not_found(requested, ", ".join(self.model_names()))

    def ready_engine(self, served: ServedModel | None = None) -> Engine:
        if self.draining:
            raise shutting_down()
        served = served or self.served
        if not served.live:  # unloaded, or swapped out, since target() gave it
            raise not_ready("The model was just unloaded or replaced; retry.")
        engine = served.engine
        if engine.load_error:
            raise APIError(503, f"The model failed to load: {engine.load_error}", "server_error",
                           code="model_load_failed")
        if not engine.ready:
            raise not_ready("The model is still loading; poll GET /ready and retry.")
        return engine

    def admit(self, engine: Engine, adapter: str | None, served: ServedModel | None = None) -> Admission:
        """Take a queue slot (503 when full) and pin `engine` (of `served`, default the live model) until the slot
        is released.

        Call without awaiting anything after `ready_engine()`, so the engine is still a live one."""
        served = served or self.served
        assert served.engine is engine and served.live, "admit() must follow ready_engine() without an await between"
        admitted_at = time.perf_counter()

        def released() -> None:
            served.users -= 1
            self.metrics.duration.observe(time.perf_counter() - admitted_at)
            if served.users == 0 and not served.live:
                served.retired.set()

        slot = self.queue.acquire(on_release=released)
        served.users += 1
        return Admission(engine, adapter, slot, admitted_at)

    async def swap(self, new: ServedModel) -> None:
        """Make `new` (loaded and ready) the live model; close the old one after its last request."""
        old, self.served = self.served, new
        log.info("now serving %s (version %s); %d request(s) still on the previous model",
                 new.model_dir, new.version, old.users)
        await retire(old)


def get_state(request: Request) -> ServerState:
    return request.app.state.lathe
