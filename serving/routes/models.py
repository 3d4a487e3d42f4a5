"""GET /v1/models and GET /v1/models/{id}: the served model, its LoRA adapters and the whole models served beside it
(Full fine-tuning jobs' results; `max_model_len` is known once one is loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.protocol import ModelCard, ModelList
from serving.state import ServerState, get_state

router = APIRouter()


def _cards(state: ServerState) -> list[ModelCard]:
    settings, served = state.settings, state.served
    context = served.engine.max_model_len or None
    base = ModelCard(id=settings.model_name, root=str(served.model_dir), version=served.version,
                     max_model_len=context)
    adapters = [ModelCard(id=name, root=str(path), parent=settings.model_name, max_model_len=context)
                for name, path in served.adapters.items()]
    whole = [ModelCard(id=name, root=str(path), parent=settings.model_name,
                       max_model_len=loaded.engine.max_model_len if (loaded := state.models.loaded.get(name)) else None)
             for name, path in state.models.paths.items()]
    return [base, *adapters, *whole]


@router.get("/v1/models")
async def list_models(state: ServerState = Depends(get_state)) -> ModelList:
    return ModelList(data=_cards(state))


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: ServerState = Depends(get_state)) -> ModelCard:
    if model_id not in state.models:
        state.adapter_for(model_id)  # 404 for anything not served
    return next(card for card in _cards(state) if card.id == model_id)
