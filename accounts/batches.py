"""The Batch API's rows: batches, their lines and results, the worker's lease, the final files.

Statuses: validating -> in_progress -> finalizing -> completed, or failed (the input file is
invalid), expired (completion_window passed: unfinished lines go to the error file as
`batch_expired`), cancelling -> cancelled. A batch's lines are copied into `batch_lines` when it is
validated; a row in `batch_results` (UNIQUE per batch and custom_id) is both a line's result and its
progress marker, so a restarted worker runs exactly the lines that have no result, and a line's usage row is
written in the transaction that stores its result (never billed twice). Output and error files are built from
`batch_results` when the batch ends, in the transaction that ends it. The request checks and the worker that
runs lines are serving/batches.py and serving/batch_worker.py.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

from accounts.files import OUTPUT_PURPOSE, insert_file
from accounts.store import Store, get_row, page
from accounts.usage import UsageRecord, write_usage

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


def insert_batch(store: Store, row: dict[str, Any]) -> None:
    store.execute("INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, status, created_at, "
                  "expires_at, metadata) VALUES (:id, :owner, :input_file_id, :endpoint, :completion_window, "
                  ":status, :created_at, :expires_at, :metadata)", row)


def get_batch(store: Store, batch_id: str, owner: str | None = None) -> dict[str, Any] | None:
    return get_row(store, "batches", batch_id, owner)


def list_batches(store: Store, owner: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; `after` is the id of the last batch of the previous page (OpenAI's cursor)."""
    return page(store, "batches", "owner = ?", [owner], after, limit)


def unfinished_with(store: Store, owner: str, key: str, value: str) -> str | None:
    """The newest of `owner`'s unfinished batches whose metadata has `key` = `value` (an offline run's identity)."""
    marks = ", ".join("?" for _ in ACTIVE)
    row = store.row(f"SELECT id FROM batches WHERE owner = ? AND status IN ({marks}) AND "
                    "json_extract(metadata, '$.' || ?) = ? ORDER BY seq DESC LIMIT 1", (owner, *ACTIVE, key, value))
    return row["id"] if row is not None else None


def mark_cancelling(store: Store, batch_id: str) -> None:
    store.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ? AND "
                  "status IN ('validating', 'in_progress')", (time.time(), batch_id))


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


def claim(store: Store, worker: str, lease_s: float, batch_id: str | None = None) -> str | None:
    """Take the oldest active batch nobody holds (or `batch_id`) for one lease; its id, or None."""
    now = time.time()
    marks = ", ".join("?" for _ in ACTIVE)
    only = " AND id = ?" if batch_id else ""
    with store.transaction() as conn:
        row = conn.execute(
            f"SELECT id FROM batches WHERE status IN ({marks}) AND (lease_owner IS NULL OR lease_owner = ? OR "
            f"lease_until < ?){only} ORDER BY seq LIMIT 1",
            (*ACTIVE, worker, now, *([batch_id] if batch_id else []))).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id = ?", (worker, now + lease_s, row["id"]))
        return row["id"]


def held(store: Store, batch_id: str, worker: str) -> dict[str, Any] | None:
    """The batch, if `worker` still holds its lease."""
    row = store.row("SELECT * FROM batches WHERE id = ? AND lease_owner = ?", (batch_id, worker))
    return dict(row) if row else None


def validated(store: Store, batch_id: str, lines: list[tuple[int, str, str]], errors: list[dict]) -> bool:
    """A validated batch: failed with `errors`, or in progress with `lines` ((line, custom_id, body JSON));
    False if it left `validating` meanwhile (cancelled)."""
    with store.transaction() as conn:
        if conn.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()[0] != "validating":
            return False
        if errors:
            conn.execute("UPDATE batches SET status = 'failed', failed_at = ?, errors = ?, lease_owner = NULL "
                         "WHERE id = ?", (time.time(), json.dumps(errors), batch_id))
            return True
        conn.executemany("INSERT INTO batch_lines (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                         [(batch_id, *line) for line in lines])
        conn.execute("UPDATE batches SET status = 'in_progress', in_progress_at = ?, total = ? WHERE id = ?",
                     (time.time(), len(lines), batch_id))
    return True


def pending_lines(store: Store, batch_id: str) -> list[sqlite3.Row]:
    """The lines without a result yet, in order (line, custom_id, body)."""
    return store.rows(
        "SELECT l.line, l.custom_id, l.body FROM batch_lines l LEFT JOIN batch_results r ON "
        "r.batch_id = l.batch_id AND r.custom_id = l.custom_id WHERE l.batch_id = ? AND r.custom_id IS NULL "
        "ORDER BY l.line", (batch_id,))


def mark_finalizing(store: Store, batch_id: str) -> None:
    store.execute("UPDATE batches SET status = 'finalizing', finalizing_at = ? WHERE id = ? AND status = 'in_progress'",
                  (time.time(), batch_id))


def store_result(store: Store, batch_id: str, worker: str, lease_s: float, line: sqlite3.Row, status_code: int,
                 body: dict, usage: tuple[UsageRecord, float] | None) -> bool:
    """A line's result and its usage row (record, cost) in one transaction, and the lease renewed; False (and
    nothing billed) when another worker's result for the line came first."""
    with store.transaction() as conn:
        inserted = conn.execute(
            "INSERT OR IGNORE INTO batch_results (batch_id, custom_id, line, id, status_code, response) "
            "VALUES (?, ?, ?, ?, ?, ?)", (batch_id, line["custom_id"], line["line"], f"batch_req_{secrets.token_hex(12)}",
                                          status_code, json.dumps(body))).rowcount
        if inserted and usage is not None:
            write_usage(conn, *usage)
        conn.execute("UPDATE batches SET lease_until = ? WHERE id = ? AND lease_owner = ?",
                     (time.time() + lease_s, batch_id, worker))
    return bool(inserted)


def end(store: Store, batch: dict[str, Any], worker: str, final: str, expire_pending: bool = False) -> bool:
    """Write the output and error files and the final status; False if the batch changed meanwhile."""
    with store.transaction() as conn:
        current = conn.execute("SELECT status, lease_owner FROM batches WHERE id = ?", (batch["id"],)).fetchone()
        if current["lease_owner"] != worker or current["status"] != batch["status"]:
            return False
        if expire_pending:
            error = json.dumps({"code": "batch_expired",
                                "message": "This request was not run before the batch's completion_window ended."})
            conn.execute(
                "INSERT OR IGNORE INTO batch_results (batch_id, custom_id, line, id, status_code, error) "
                "SELECT batch_id, custom_id, line, 'batch_req_' || lower(hex(randomblob(12))), NULL, ? "
                "FROM batch_lines WHERE batch_id = ?", (error, batch["id"]))
        _finish(conn, batch, final)
    return True


def _finish(conn: sqlite3.Connection, batch: dict[str, Any], final: str) -> None:
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


# Characters JSON may hold raw but str.splitlines() (and JavaScript) take for line ends: escaped, so a result line that
# quotes one (a model can generate anything) is still one line for every reader of the file.
LINE_ENDS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _jsonl(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item, ensure_ascii=False).translate(LINE_ENDS) + "\n" for item in items).encode("utf-8")
