"""The Batch API (OpenAI's, which Together's clients also speak): POST /v1/batches, GET /v1/batches,
GET /v1/batches/{id}, POST /v1/batches/{id}/cancel. The work is done by batch_worker.py."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict

from accounts.batches import batch_object, get_batch, list_batches
from serving.access import Platform, get_caller, get_platform
from serving.batches import create_batch, request_cancel
from serving.errors import not_found
from serving.protocol import ValidUnicodeBody

router = APIRouter()


class CreateBatch(ValidUnicodeBody):
    model_config = ConfigDict(extra="allow")  # vendor fields (e.g. Together's model_id) are not needed here

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("/v1/batches")
async def create(body: CreateBatch, request: Request, platform: Platform = Depends(get_platform)) -> dict:
    batch = await asyncio.to_thread(create_batch, platform.store, get_caller(request).key_id, body.input_file_id,
                                    body.endpoint, body.completion_window, body.metadata, platform.config.batch)
    platform.batch_wakeup.set()  # an asyncio.Event: set on the event loop, not from the thread pool
    return await asyncio.to_thread(batch_object, platform.store, batch)


@router.get("/v1/batches")
def batches(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100),
                  platform: Platform = Depends(get_platform)) -> dict:
    rows, has_more = list_batches(platform.store, get_caller(request).key_id, after, limit)
    data = [batch_object(platform.store, row) for row in rows]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


@router.get("/v1/batches/{batch_id}")
def retrieve(batch_id: str, request: Request, platform: Platform = Depends(get_platform)) -> dict:
    batch = get_batch(platform.store, batch_id, get_caller(request).key_id)
    if batch is None:
        raise not_found(f"No batch with id '{batch_id}'.", "batch_id")
    return batch_object(platform.store, batch)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel(batch_id: str, request: Request, platform: Platform = Depends(get_platform)) -> dict:
    batch = await asyncio.to_thread(request_cancel, platform.store, batch_id, get_caller(request).key_id)
    platform.batch_wakeup.set()
    return await asyncio.to_thread(batch_object, platform.store, batch)
