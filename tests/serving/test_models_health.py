"""GET /v1/models, /health and /ready."""

from __future__ import annotations

import httpx2

from tests.serving.conftest import MODEL_NAME
from tests.tiny_model import CONTEXT


def test_models_lists_the_served_model(client, tiny_model_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    card = client.models.retrieve(MODEL_NAME)
    assert card.owned_by == "lathe"
    assert card.model_extra["max_model_len"] == CONTEXT
    assert card.model_extra["root"] == str(tiny_model_dir)


def test_health_and_ready(server):
    assert httpx2.get(f"{server}/health").json() == {"status": "ok"}
    ready = httpx2.get(f"{server}/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["in_flight"] == 0
