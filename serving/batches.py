"""The Batch API's records: input validation, batch rows, status changes and the OpenAI batch object.

Statuses: validating -> in_progress -> finalizing -> completed, or failed (the input file is
invalid), expired (completion_window passed: unfinished lines go to the error file as
`batch_expired`), cancelling -> cancelled. A batch's lines are copied into `batch_lines` when it is
validated; a row in `batch_results` (UNIQUE per batch and custom_id) is both a line's result and its
progress marker, so a restarted worker runs exactly the lines that have no result. Output and error
files are built from `batch_results` when the batch ends, in the transaction that ends it.
The worker that runs lines is batch_worker.py.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from recipes.schema import BatchConfig
from serving.protocol import lone_surrogate_at
from serving.errors import APIError, invalid_request, not_found
from serving.files import OUTPUT_PURPOSE, UPLOAD_PURPOSES, get_file, insert_file
from serving.store import Store

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
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
    store.execute("INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, status, created_at, "
                  "expires_at, metadata) VALUES (:id, :owner, :input_file_id, :endpoint, :completion_window, "
                  ":status, :created_at, :expires_at, :metadata)", row)
    return get_batch(store, row["id"], owner)


def get_batch(store: Store, batch_id: str, owner: str | None = None) -> dict[str, Any] | None:
    if owner is None:
        row = store.row("SELECT * FROM batches WHERE id = ?", (batch_id,))
    else:
        row = store.row("SELECT * FROM batches WHERE id = ? AND owner = ?", (batch_id, owner))
    return dict(row) if row else None


def list_batches(store: Store, owner: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; `after` is the id of the last batch of the previous page (OpenAI's cursor)."""
    sql, params = "SELECT * FROM batches WHERE owner = ?", [owner]
    if after:
        sql += " AND seq < (SELECT seq FROM batches WHERE id = ?)"
        params.append(after)
    rows = store.rows(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit + 1])
    return [dict(r) for r in rows[:limit]], len(rows) > limit


def request_cancel(store: Store, batch_id: str, owner: str) -> dict[str, Any]:
    if get_batch(store, batch_id, owner) is None:
        raise not_found(f"No batch with id '{batch_id}'.")
    store.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ? AND "
                  "status IN ('validating', 'in_progress')", (time.time(), batch_id))
    batch = get_batch(store, batch_id, owner)
    if batch["status"] not in ("cancelling", "cancelled"):
        raise APIError(409, f"Batch '{batch_id}' is {batch['status']} and can no longer be cancelled.",
                       "invalid_request_error", None, "batch_not_cancellable")
    return batch


def counts(store: Store, batch_id: str) -> tuple[int, int]:
    """(lines that succeeded, lines that failed) so far."""
    row = store.row("SELECT COUNT(*) AS done, COALESCE(SUM(status_code = 200), 0) AS ok FROM batch_results "
                    "WHERE batch_id = ?", (batch_id,))
    return row["ok"], row["done"] - row["ok"]


def batch_object(store: Store, batch: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI Batch object, plus `progress` (percent of lines done, as Together reports it)."""
    completed, failed = counts(store, batch["id"])
    total = batch["total"]
    done = batch["status"] in ("completed", "failed", "expired", "cancelled")
    progress = 100.0 * (completed + failed) / total if total else (100.0 if done else 0.0)
    errors = json.loads(batch["errors"]) if batch["errors"] else None

    def stamp(name: str) -> int | None:
        return int(batch[name]) if batch[name] is not None else None

    return {
        "id": batch["id"], "object": "batch", "endpoint": batch["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": batch["input_file_id"], "completion_window": batch["completion_window"],
        "status": batch["status"], "output_file_id": batch["output_file_id"],
        "error_file_id": batch["error_file_id"], "created_at": int(batch["created_at"]),
        **{name: stamp(name) for name in ("in_progress_at", "expires_at", "finalizing_at", "completed_at",
                                          "failed_at", "expired_at", "cancelling_at", "cancelled_at")},
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": json.loads(batch["metadata"]) if batch["metadata"] else None,
        "progress": round(progress, 2),
    }


def finish(conn: sqlite3.Connection, batch: dict[str, Any], final: str) -> None:
    """Write the output and error files from the results and set the final status, in the caller's
    transaction (so a crash leaves either the old status, to be finished again, or all of it)."""
    results = conn.execute("SELECT * FROM batch_results WHERE batch_id = ? ORDER BY line", (batch["id"],)).fetchall()
    good = [_output_line(r) for r in results if r["status_code"] == 200]
    bad = [_output_line(r) for r in results if r["status_code"] != 200]
    output = insert_file(conn, batch["owner"], f"{batch['id']}_output.jsonl", OUTPUT_PURPOSE, _jsonl(good)) if good else None
    error = insert_file(conn, batch["owner"], f"{batch['id']}_error.jsonl", OUTPUT_PURPOSE, _jsonl(bad)) if bad else None
    conn.execute(f"UPDATE batches SET status = ?, {final}_at = ?, output_file_id = ?, error_file_id = ?, "
                 "lease_owner = NULL WHERE id = ?",
                 (final, time.time(), output and output["id"], error and error["id"], batch["id"]))


def _output_line(result: sqlite3.Row) -> dict[str, Any]:
    if result["status_code"] is None:  # never ran
        return {"id": result["id"], "custom_id": result["custom_id"], "response": None,
                "error": json.loads(result["error"])}
    body = json.loads(result["response"])
    return {"id": result["id"], "custom_id": result["custom_id"],
            "response": {"status_code": result["status_code"], "request_id": body.get("id", result["id"]),
                         "body": body}, "error": None}


def _jsonl(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items).encode("utf-8")
