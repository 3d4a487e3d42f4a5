"""POST /v1/completions: HTTP in, the completions handler (serving/handlers/completions.py), HTTP out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from serving.handlers.completions import create_completion
from serving.protocol import CompletionRequest
from serving.routes.streaming import call_of, http_response
from serving.state import ServerState, get_state

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, state: ServerState = Depends(get_state)):
    return http_response(await create_completion(state, body, call_of(request)), state)
