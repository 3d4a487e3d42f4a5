"""Files of the Batch API, kept as rows of the platform database (content included).

An id (`file-<hex>`) is an opaque key looked up in SQLite, never a path, so no id can reach the
file system. Each file belongs to the key that uploaded it (or created its batch): other keys get 404.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from typing import Any

from accounts.store import Store

UPLOAD_PURPOSES = ("batch", "batch-api")  # OpenAI's and Together's names for a batch input file
FINE_TUNE_PURPOSE = "fine-tune"  # a training or validation file of a fine-tuning job (OpenAI and Together)
OUTPUT_PURPOSE = "batch_output"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def insert_file(conn: sqlite3.Connection, owner: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
    """Add a file inside the caller's transaction; returns its row (without content)."""
    row = {"id": new_file_id(), "owner": owner, "filename": filename, "purpose": purpose, "bytes": len(content),
           "created_at": time.time()}
    conn.execute("INSERT INTO files (id, owner, filename, purpose, bytes, created_at, content) "
                 "VALUES (:id, :owner, :filename, :purpose, :bytes, :created_at, :content)", {**row, "content": content})
    return row


def save_file(store: Store, owner: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
    with store.transaction() as conn:
        return insert_file(conn, owner, filename, purpose, content)


def get_file(store: Store, file_id: str, owner: str) -> dict[str, Any] | None:
    row = store.row("SELECT id, owner, filename, purpose, bytes, created_at FROM files WHERE id = ? AND owner = ?",
                    (file_id, owner))
    return dict(row) if row else None


def file_content(store: Store, file_id: str, owner: str) -> bytes | None:
    row = store.row("SELECT content FROM files WHERE id = ? AND owner = ?", (file_id, owner))
    return bytes(row["content"]) if row else None


def list_files(store: Store, owner: str, purpose: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id, owner, filename, purpose, bytes, created_at FROM files WHERE owner = ?"
    params: list[Any] = [owner]
    if purpose:
        sql += " AND purpose = ?"
        params.append(purpose)
    return [dict(row) for row in store.rows(sql + " ORDER BY seq DESC", params)]


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI FileObject."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created_at"]),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "status_details": None}
