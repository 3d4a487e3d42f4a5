"""The one place where errors become OpenAI error envelopes.

Every failure a client can see leaves the server as
`{"error": {"message", "type", "param", "code"}}` with the status OpenAI uses: invalid input is 400
(never FastAPI's 422) and names the offending field in `param`; an unknown model is 404; a full queue
is 503. Routes raise `APIError`; the handlers installed by `install_error_handlers` do the rest.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lathe.serving")


class APIError(Exception):
    """An error to report to the client in the OpenAI envelope."""

    def __init__(self, status_code: int, message: str, type: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, served: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist. This server serves: {served}.",
                    "invalid_request_error", "model", "model_not_found")


def overloaded(message: str) -> APIError:
    return APIError(503, message, "server_overloaded", None, "queue_full")


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down; retry on another instance.", "service_unavailable", None,
                    "server_shutting_down")


def not_ready(message: str) -> APIError:
    return APIError(503, message, "service_unavailable", None, "model_not_ready")


def unauthorized(message: str) -> APIError:
    return APIError(401, message, "invalid_request_error", None, "invalid_api_key")


def forbidden(message: str) -> APIError:
    return APIError(403, message, "permission_error", None, "permission_denied")


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(404, message, "invalid_request_error", param, "not_found")


def rate_limited(message: str, limit: str) -> APIError:
    """429 as OpenAI sends it: `type` names the limit hit (`requests` or `tokens`)."""
    return APIError(429, message, limit, None, "rate_limit_exceeded")


def invalid_body(exc: Exception) -> APIError:
    """A pydantic ValidationError of a request body met outside FastAPI (batch lines) -> the same 400."""
    return _validation_error(RequestValidationError(exc.errors()))


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "json-or-python"}


def _is_union_tag(part: str) -> bool:
    return part in _TYPE_TAGS or "[" in part or part.startswith(("function-", "tagged-union"))


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'; the body itself -> None."""
    parts = [p for p in loc if p != "body"]
    # Unions add the tried member's type name to the location ('prompt', 'str'); it is no field.
    param = ""
    for part in parts:
        if isinstance(part, int):
            param += f"[{part}]"
        elif isinstance(part, str) and _is_union_tag(part):
            continue
        else:
            param += f".{part}" if param else str(part)
    return param or None


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _param_from_loc(tuple(first.get("loc", ())))
    if first.get("type") == "invalid_unicode":  # protocol.py's whole-body check names the field itself
        param = first.get("ctx", {}).get("where", param)
    if first.get("type") == "json_invalid":
        return invalid_request(f"The request body is not valid JSON: {first.get('msg')}")
    message = first.get("msg", "invalid value")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return invalid_request(message, param)


class _AsciiJSONResponse(JSONResponse):
    """Error messages quote what the client sent (a model name, a file id), which may hold a lone
    surrogate (`"\\ud800"` is valid JSON): UTF-8 cannot encode one, so Starlette's renderer would
    fail (a 500). Escaped to ASCII, it goes back as the same `\\ud800` it came in as."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return _AsciiJSONResponse(error.envelope(), status_code=error.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _api_error(request, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(as_api_error(exc))


def as_api_error(exc: Exception) -> APIError:
    """Any exception as the envelope a client sees (also used inside SSE streams, after the 200)."""
    if isinstance(exc, APIError):
        return exc
    return APIError(500, f"Internal server error: {type(exc).__name__}: {exc}", "server_error")
