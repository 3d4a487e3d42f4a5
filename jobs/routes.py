"""The fine-tuning jobs API (OpenAI's, with Together's create fields): POST /v1/fine_tuning/jobs,
GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id}, POST /v1/fine_tuning/jobs/{id}/cancel,
GET /v1/fine_tuning/jobs/{id}/events, GET /v1/fine_tuning/jobs/{id}/checkpoints, GET /v1/fine_tuning/jobs/{id}/metrics.
Jobs belong to the key that created them; other keys get 404. The work: jobs/."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from accounts.jobs import checkpoint_object, event_object, get_job, job_object, list_object, metrics_rows
from accounts.store import page
from jobs.request import CreateJob
from jobs.service import FineTuningService
from serving.access import get_caller
from serving.errors import not_found

router = APIRouter()


def get_service(request: Request) -> FineTuningService:
    service = getattr(request.app.state, "fine_tuning", None)
    if service is None:
        raise not_found("Fine-tuning is not running on this server.")
    return service


def _owned_job(service: FineTuningService, request: Request, job_id: str) -> dict:
    job = get_job(service.store, job_id, get_caller(request).key_id)
    if job is None:
        raise not_found(f"No fine-tuning job with id '{job_id}'.", "fine_tuning_job_id")
    return job


@router.post("/v1/fine_tuning/jobs")
async def create_job(body: CreateJob, request: Request, service: FineTuningService = Depends(get_service)) -> dict:
    return job_object(await service.create(get_caller(request).key_id, body))


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100),
                    service: FineTuningService = Depends(get_service)) -> dict:
    rows, has_more = page(service.store, "fine_tuning_jobs", "owner = ?", [get_caller(request).key_id], after, limit)
    return {**list_object([job_object(row) for row in rows]), "has_more": has_more}


@router.get("/v1/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str, request: Request, service: FineTuningService = Depends(get_service)) -> dict:
    return job_object(_owned_job(service, request, job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request, service: FineTuningService = Depends(get_service)) -> dict:
    return job_object(await service.cancel(job_id, get_caller(request).key_id))


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def list_events(job_id: str, request: Request, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000), service: FineTuningService = Depends(get_service)) -> dict:
    _owned_job(service, request, job_id)
    rows, has_more = page(service.store, "fine_tuning_events", "job_id = ?", [job_id], after, limit)
    return {**list_object([event_object(row) for row in rows]), "has_more": has_more}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(job_id: str, request: Request, after: str | None = None, limit: int = Query(10, ge=1, le=100),
                     service: FineTuningService = Depends(get_service)) -> dict:
    job = _owned_job(service, request, job_id)
    rows, has_more = page(service.store, "fine_tuning_checkpoints", "job_id = ?", [job_id], after, limit)
    return {**list_object([checkpoint_object(row, job["fine_tuned_model"]) for row in rows]), "has_more": has_more}


@router.get("/v1/fine_tuning/jobs/{job_id}/metrics")
def list_metrics(job_id: str, request: Request, service: FineTuningService = Depends(get_service)) -> dict:
    """The run's numbers, oldest first, one row per logged step (training loss, validation loss when measured,
    learning rate, tokens...): what a loss curve is drawn from (the metrics events, without their messages)."""
    _owned_job(service, request, job_id)
    return {"object": "list", "data": metrics_rows(service.store, job_id)}
