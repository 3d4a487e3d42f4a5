"""GET /health (the process is alive and the model has not failed), GET /ready (it can serve), and
GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from serving.state import ServerState, get_state

router = APIRouter()


@router.get("/health")
async def health(state: ServerState = Depends(get_state)) -> JSONResponse:
    if state.engine.load_error:
        return JSONResponse({"status": "error", "error": state.engine.load_error}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(state: ServerState = Depends(get_state)) -> JSONResponse:
    if state.draining:  # load balancers stop sending work here
        return JSONResponse({"status": "draining", "in_flight": state.queue.in_use}, status_code=503)
    if state.engine.ready:
        return JSONResponse({"status": "ready", "model": state.settings.model_name, "version": state.served.version,
                             "in_flight": state.queue.in_use, "max_queue": state.queue.max_size})
    status = "error" if state.engine.load_error else "loading"
    return JSONResponse({"status": status, "error": state.engine.load_error}, status_code=503)


@router.get("/metrics")
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
