"""GET /v1/usage: the calling key's usage and cost (online and batch), grouped by model, day or key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from accounts.usage import GroupBy, parse_since, totals, usage_report
from serving.access import Platform, get_caller, get_platform
from serving.errors import invalid_request

router = APIRouter()


@router.get("/v1/usage")
def usage(request: Request, since: str | None = None, by: GroupBy = "model",
                platform: Platform = Depends(get_platform)) -> dict:
    try:
        start = parse_since(since)
    except ValueError as exc:
        raise invalid_request(str(exc), "since") from None
    key_id = get_caller(request).key_id
    groups = usage_report(platform.store, start, by, key_id=key_id)
    return {"object": "usage", "key_id": key_id, "since": start, "by": by, "data": groups, "totals": totals(groups)}
