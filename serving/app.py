"""The app factory and the entry point `lathe serve` calls.

The model loads in the background after the server starts: /health answers at once, /ready turns
200 when the model can serve (generation endpoints answer 503 until then).

Shutdown (SIGTERM or Ctrl-C): the server stops accepting connections, answers 503 to requests that
still arrive, lets in-flight requests finish for up to `drain_timeout_s` (then cancels them), closes
the engine and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, Sequence

from fastapi import APIRouter, FastAPI

from accounts.keys import active_key_count
from recipes import LatheError
from serving.access import AccessMiddleware, Platform
from serving.batch_worker import BatchWorker
from serving.errors import install_error_handlers
from serving.settings import ServerSettings
from serving.state import ServerState, new_served_model

log = logging.getLogger("lathe.serving")


class PlaneService(Protocol):
    async def run_forever(self) -> None: ...
    async def aclose(self) -> None: ...


class Plane(Protocol):
    """Work a server runs beside inference (the fine-tuning jobs plane, jobs/): its routes, the adapters and whole
    models it serves from the start, and its background service. serving/ knows this interface, never what implements it."""

    name: str
    """The app.state attribute its routes find the service under."""
    router: APIRouter

    def adapters(self, settings: ServerSettings) -> dict[str, Path]: ...
    def models(self, settings: ServerSettings) -> dict[str, Path]: ...
    def start(self, settings: ServerSettings, state: ServerState, platform: Platform) -> PlaneService: ...


def create_app(settings: ServerSettings, planes: Sequence[Plane] = ()) -> FastAPI:
    _check_model_dir(settings.model_dir)
    from serving.routes import ROUTERS
    from serving.watcher import AliasWatcher

    pool = dict(settings.adapters)
    for plane in planes:
        pool.update(plane.adapters(settings))  # e.g. earlier fine-tuning jobs' models load with the base
    served = new_served_model(settings, Path(settings.model_dir), pool)
    watcher = AliasWatcher.for_settings(settings)
    state = ServerState(settings, served, pool)
    for plane in planes:
        for name, model_dir in plane.models(settings).items():  # loaded when first called (model_pool.py)
            state.models.add(name, model_dir)
    platform = Platform(settings.platform, settings.host, state.metrics)
    batch_worker = BatchWorker(state, platform)
    services = {plane.name: plane.start(settings, state, platform) for plane in planes}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if watcher is not None:
            served.version = await asyncio.to_thread(watcher.version_serving, served.model_dir)
        tasks = [asyncio.create_task(_load(served.engine)), asyncio.create_task(batch_worker.run_forever())]
        if watcher is not None:
            tasks.append(asyncio.create_task(watcher.follow(state)))
        tasks += [asyncio.create_task(service.run_forever()) for service in services.values()]
        try:
            yield
        finally:
            state.draining = True
            try:
                for service in services.values():
                    await service.aclose()  # e.g. stops running training stages; their jobs resume at the next start
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                state.served.engine.close()
                state.models.close()
                platform.close()

    app = FastAPI(title="Lathe", summary="OpenAI-compatible inference server", lifespan=lifespan)
    app.state.lathe = state
    app.state.platform = platform
    app.state.batch_worker = batch_worker
    for name, service in services.items():
        setattr(app.state, name, service)
    install_error_handlers(app)
    for router in [*ROUTERS, *(plane.router for plane in planes)]:
        app.include_router(router)

    app.add_middleware(AccessMiddleware, platform=platform)  # keys, rate limits, metering
    app.add_middleware(_CountRequests, metrics=state.metrics)  # outermost: 401s and 429s are counted too
    _log_auth(platform)
    return app


def _log_auth(platform: Platform) -> None:
    if not platform.auth_on:
        log.info("API keys: off (platform.auth=%s, loopback); usage is metered as '%s'",
                 platform.config.auth, "anonymous")
        return
    keys = active_key_count(platform.store)
    if keys:
        log.info("API keys: required (%d active, database %s)", keys, platform.store.path)
    else:
        log.warning("API keys: required, but there are none in %s: create one with `lathe keys create --name ...`",
                    platform.store.path)


class _CountRequests:
    """Counts answered requests by route and status. Plain ASGI: Starlette's BaseHTTPMiddleware
    would hide client disconnects from the routes, and those cancel generations."""

    def __init__(self, app, metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status)).inc()


async def _load(engine) -> None:
    try:
        await engine.load()
    except Exception:  # reported by /health and /ready (503) and on every generation request
        log.exception("the model failed to load")


def _check_model_dir(model_dir: Path) -> None:
    if not (Path(model_dir) / "config.json").is_file():
        raise LatheError(f"{model_dir}: not a model directory (no config.json). Pass a directory written by "
                         "save_pretrained, or a registry alias that resolves to one.")


def run(settings: ServerSettings, planes: Sequence[Plane] = ()) -> None:
    """Serve until SIGTERM / Ctrl-C (blocking), then drain and return."""
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    app = create_app(settings, planes)
    print(f"Lathe serving {settings.model_name} from {settings.model_dir} on "
          f"http://{settings.host}:{settings.port}/v1", flush=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=settings.drain_timeout_s)
    server = _draining_server(config, on_exit=lambda: setattr(app.state.lathe, "draining", True))
    # uvicorn re-raises the signal it caught once it has shut down, under the handler it found: ignore
    # it then, so a drained server returns (exit status 0) instead of dying by SIGTERM.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _draining_server(config, on_exit):
    """uvicorn's Server, told to mark the app as draining the moment a shutdown signal arrives
    (uvicorn closes its sockets only at its next tick: requests in that gap get a 503)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    return DrainingServer(config)
