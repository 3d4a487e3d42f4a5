"""The Batch API's requests: input validation (each line named with its error), the completion window, creating
and cancelling a batch with the errors a client gets. The rows, statuses and files are accounts/batches.py; the
worker that runs lines is batch_worker.py.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from accounts.batches import get_batch, insert_batch, mark_cancelling
from accounts.files import UPLOAD_PURPOSES, get_file
from accounts.store import Store
from recipes.schema import BatchConfig
from serving.errors import APIError, invalid_request, not_found
from serving.protocol import lone_surrogate_at

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MAX_REPORTED_ERRORS = 100
_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class BatchLine:
    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class LineError:
    line: int | None
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def parse_input(content: bytes, endpoint: str, limits: BatchConfig) -> tuple[list[BatchLine], list[LineError]]:
    """Lines in OpenAI's form `{custom_id, method, url, body}` or Together's `{custom_id, body}`.
    Returns the lines, or every error found (up to MAX_REPORTED_ERRORS), each naming its line."""
    if len(content) > limits.max_file_bytes:
        return [], [LineError(None, "file_too_large", f"The input file has {len(content)} bytes; the limit is "
                                                      f"{limits.max_file_bytes} (platform.batch.max_file_bytes).")]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content[:exc.start].count(b"\n") + 1
        return [], [LineError(line, "invalid_encoding", f"Line {line}: not UTF-8 text ({exc.reason}).")]
    # Split on newlines only: str.splitlines would also split on U+2028, which JSON strings may hold.
    numbered = [(n, raw) for n, raw in enumerate(text.split("\n"), 1) if raw.strip()]
    if not numbered:
        return [], [LineError(None, "empty_file", "The input file has no requests.")]
    if len(numbered) > limits.max_lines:
        return [], [LineError(None, "too_many_lines", f"The input file has {len(numbered)} requests; the limit is "
                                                      f"{limits.max_lines} (platform.batch.max_lines).")]
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    first_seen: dict[str, int] = {}
    for n, raw in numbered:
        error = _check_line(n, raw, endpoint, first_seen, lines)
        if error is not None:
            errors.append(error)
            if len(errors) == MAX_REPORTED_ERRORS:
                break
    return (lines if not errors else []), errors


def _check_line(n: int, raw: str, endpoint: str, first_seen: dict[str, int], lines: list[BatchLine]):
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        return LineError(n, "invalid_json", f"Line {n}: not valid JSON ({exc.msg} at column {exc.colno}).")
    if not isinstance(item, dict):
        return LineError(n, "invalid_json", f"Line {n}: expected a JSON object, got {type(item).__name__}.")
    custom_id = item.get("custom_id")
    if lone_surrogate_at(custom_id) is not None:  # valid JSON, but not text: SQLite cannot store it as a key
        return LineError(n, "invalid_encoding", f"Line {n}: custom_id holds invalid unicode (a lone surrogate).",
                         "custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(n, "missing_custom_id", f"Line {n}: custom_id is missing or not a non-empty string.",
                         "custom_id")
    if custom_id in first_seen:
        return LineError(n, "duplicate_custom_id", f"Line {n}: custom_id '{custom_id}' is already used on line "
                                                   f"{first_seen[custom_id]}.", "custom_id")
    first_seen[custom_id] = n
    if "method" in item or "url" in item:  # OpenAI's form: both must match the batch
        if item.get("method") != "POST":
            return LineError(n, "invalid_method", f"Line {n}: method must be 'POST', got {item.get('method')!r}.",
                             "method")
        if item.get("url") != endpoint:
            return LineError(n, "invalid_url", f"Line {n}: url {item.get('url')!r} does not match the batch's "
                                               f"endpoint '{endpoint}'.", "url")
    body = item.get("body")
    if not isinstance(body, dict):
        return LineError(n, "invalid_body", f"Line {n}: body must be a JSON object (a {endpoint} request).", "body")
    lines.append(BatchLine(n, custom_id, body))
    return None


def window_seconds(window: str, limits: BatchConfig) -> float:
    match = _WINDOW.match(window or "")
    seconds = int(match[1]) * _UNIT_S[match[2]] if match else 0
    if seconds <= 0 or seconds > limits.max_completion_window_h * 3600:
        raise invalid_request(f"completion_window {window!r}: use a duration such as '24h' (units s, m, h, d) of at "
                              f"most {limits.max_completion_window_h:g}h.", "completion_window")
    return float(seconds)


def create_batch(store: Store, owner: str, input_file_id: str, endpoint: str, completion_window: str,
                 metadata: dict | None, limits: BatchConfig) -> dict[str, Any]:
    if endpoint not in ENDPOINTS:
        raise invalid_request(f"endpoint {endpoint!r} is not supported; use one of {', '.join(ENDPOINTS)}.", "endpoint")
    window = window_seconds(completion_window, limits)
    source = get_file(store, input_file_id, owner)
    if source is None:
        raise not_found(f"No file with id '{input_file_id}'.", "input_file_id")
    if source["purpose"] not in UPLOAD_PURPOSES:
        raise invalid_request(f"File '{input_file_id}' has purpose '{source['purpose']}'; a batch input needs purpose "
                              "'batch' (or Together's 'batch-api').", "input_file_id")
    now = time.time()
    row = {"id": f"batch_{secrets.token_hex(12)}", "owner": owner, "input_file_id": input_file_id,
           "endpoint": endpoint, "completion_window": completion_window, "status": "validating", "created_at": now,
           "expires_at": now + window, "metadata": json.dumps(metadata) if metadata is not None else None}
    insert_batch(store, row)
    return get_batch(store, row["id"], owner)


def request_cancel(store: Store, batch_id: str, owner: str) -> dict[str, Any]:
    if get_batch(store, batch_id, owner) is None:
        raise not_found(f"No batch with id '{batch_id}'.")
    mark_cancelling(store, batch_id)
    batch = get_batch(store, batch_id, owner)
    if batch["status"] not in ("cancelling", "cancelled"):
        raise APIError(409, f"Batch '{batch_id}' is {batch['status']} and can no longer be cancelled.",
                       "invalid_request_error", None, "batch_not_cancellable")
    return batch
