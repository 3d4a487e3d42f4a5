"""The Files API, for batch input and output: POST /v1/files, GET /v1/files, GET /v1/files/{id},
GET /v1/files/{id}/content. Uploads must have purpose `batch` (OpenAI) or `batch-api` (Together), or
`fine-tune` (training data of /v1/fine_tuning/jobs). Routes that only read or write the database are plain
functions: FastAPI runs them in its thread pool, so SQLite is never called on the event loop."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from accounts.files import FINE_TUNE_PURPOSE, UPLOAD_PURPOSES, file_content, file_object, get_file, list_files, save_file
from serving.access import Platform, get_caller, get_platform
from serving.errors import invalid_request, not_found

router = APIRouter()


@router.post("/v1/files")
async def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...),
                      platform: Platform = Depends(get_platform)) -> dict:
    if purpose not in (*UPLOAD_PURPOSES, FINE_TUNE_PURPOSE):
        raise invalid_request(f"purpose {purpose!r} is not supported; this server takes batch input files "
                              f"({' or '.join(map(repr, UPLOAD_PURPOSES))}) and fine-tuning files "
                              f"('{FINE_TUNE_PURPOSE}').", "purpose")
    limit = platform.config.batch.max_file_bytes
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise invalid_request(f"The file is larger than {limit} bytes (platform.batch.max_file_bytes).", "file")
    row = await asyncio.to_thread(save_file, platform.store, get_caller(request).key_id, file.filename or "upload.jsonl",
                                  purpose, content)
    return file_object(row)


@router.get("/v1/files")
def files(request: Request, purpose: str | None = None, platform: Platform = Depends(get_platform)) -> dict:
    rows = list_files(platform.store, get_caller(request).key_id, purpose)
    return {"object": "list", "data": [file_object(row) for row in rows], "has_more": False}


@router.get("/v1/files/{file_id}")
def retrieve_file(file_id: str, request: Request, platform: Platform = Depends(get_platform)) -> dict:
    row = get_file(platform.store, file_id, get_caller(request).key_id)
    if row is None:
        raise not_found(f"No file with id '{file_id}'.", "file_id")
    return file_object(row)


@router.get("/v1/files/{file_id}/content")
def retrieve_content(file_id: str, request: Request, platform: Platform = Depends(get_platform)) -> Response:
    content = file_content(platform.store, file_id, get_caller(request).key_id)
    if content is None:
        raise not_found(f"No file with id '{file_id}'.", "file_id")
    return Response(content, media_type="application/octet-stream")
