"""POST /v1/chat/completions: HTTP in, the chat handler (serving/handlers/chat.py), HTTP out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from serving.handlers.chat import create_chat_completion
from serving.protocol import ChatCompletionRequest
from serving.routes.streaming import call_of, http_response
from serving.state import ServerState, get_state

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request, state: ServerState = Depends(get_state)):
    return http_response(await create_chat_completion(state, body, call_of(request)), state)
