"""The platform's SQLite database: API keys, usage records, files, batches and fine-tuning jobs' rows, with
versioned migrations (`MIGRATIONS`, `PRAGMA user_version`), so a new column reaches an existing `platform.db`.

One file (`platform.db_path`), so keys, usage and batches survive a restart, and a batch killed
mid-way resumes from what was committed. WAL journal: readers (the CLI, GET /v1/usage) never block
the server's writes, and a committed transaction survives the process being killed (`kill -9`).
Python's stdlib sqlite3 does the work; this module only opens it, creates the tables and runs
transactions. One connection per Store, shared by threads behind a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from recipes import LatheError

PLATFORM_V1 = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,                 -- the public part of the key, shown by `lathe keys list`
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,         -- the secret part is never stored
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    key_id TEXT NOT NULL,                -- 'anonymous' when auth is off
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    batch INTEGER NOT NULL,
    batch_id TEXT,
    status INTEGER NOT NULL,
    cost_usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage(at);
CREATE INDEX IF NOT EXISTS usage_by_key ON usage(key_id, at);
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,             -- opaque, never a path
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    in_progress_at REAL, finalizing_at REAL, completed_at REAL, failed_at REAL, expired_at REAL,
    cancelling_at REAL, cancelled_at REAL,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,                         -- JSON list of validation errors (status failed)
    metadata TEXT,                       -- JSON object or NULL
    total INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (batch_id, line),
    UNIQUE (batch_id, custom_id)
);
CREATE TABLE IF NOT EXISTS batch_results (   -- a row here IS the progress marker of its line
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    id TEXT NOT NULL,
    status_code INTEGER,                 -- NULL: the line never ran (batch expired)
    response TEXT,                       -- JSON body (success or the error envelope)
    error TEXT,                          -- JSON {code, message} when the line did not run
    PRIMARY KEY (batch_id, custom_id)
);
"""

JOBS_V1 = """
CREATE TABLE IF NOT EXISTS fine_tuning_jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,                 -- the key that created it ('anonymous' when auth is off)
        model TEXT NOT NULL,                 -- the served base model's name
        base_model_dir TEXT NOT NULL,        -- the directory that base was loaded from (the adapter's base)
        training_file TEXT NOT NULL,
        validation_file TEXT,
        spec TEXT NOT NULL,                  -- JSON: method + requested settings (request.job_spec)
        suffix TEXT,
        seed INTEGER NOT NULL,
        metadata TEXT,
        status TEXT NOT NULL,                -- validating_files, queued, running, succeeded, failed, cancelled
        stage TEXT,                          -- the pipeline stage running now (or when the server stopped)
        done_stages TEXT NOT NULL DEFAULT '[]',
        pid INTEGER,                         -- the stage process (and process group) while one runs
        error TEXT,                          -- JSON {code, message, param} when failed
        fine_tuned_model TEXT NOT NULL,      -- the name it is served under once it succeeded
        registered TEXT,                     -- JSON {name, version} in the MLflow registry
        adapter_dir TEXT,                    -- the trained LoRA adapter (served as fine_tuned_model)
        trained_tokens INTEGER,              -- set once, when the tokens are billed
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
CREATE TABLE IF NOT EXISTS fine_tuning_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        type TEXT NOT NULL,                  -- message or metrics
        data TEXT
    );
CREATE INDEX IF NOT EXISTS fine_tuning_events_by_job ON fine_tuning_events(job_id, seq);
CREATE TABLE IF NOT EXISTS fine_tuning_checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        step INTEGER NOT NULL,
        path TEXT NOT NULL,
        metrics TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (job_id, stage, step)
    );
"""

# Versioned migrations, applied in order; `PRAGMA user_version` is the number applied. Never edit one that
# has shipped: add the next. 1 and 2 are the schema as it was before versions were recorded (main f381ee4 made
# it without a version), written IF NOT EXISTS, so such a database takes them as no-ops and then the rest.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("platform tables: keys, usage, files, batches", PLATFORM_V1),
    ("fine-tuning jobs, events, checkpoints", JOBS_V1),
    ("usage names the fine-tuning job a row bills", "ALTER TABLE usage ADD COLUMN job_id TEXT;"),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations `conn`'s database has not had yet, each in its own transaction that re-reads the
    version under the write lock (two processes opening one old database apply each migration once); returns the
    version after."""
    for number, (_, sql) in enumerate(MIGRATIONS, start=1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LatheError(f"platform database is at schema version {version}, newer than this Lathe's "
                                 f"{SCHEMA_VERSION}: upgrade Lathe (or point platform.db_path at another file)")
            if version < number:
                for statement in filter(str.strip, sql.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return SCHEMA_VERSION


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), nothing implicit.
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            migrate(self._conn)
        except (OSError, sqlite3.Error) as exc:
            raise LatheError(f"platform database {self.path}: cannot open it ({exc}). Set platform.db_path "
                             "to a writable file.") from exc
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements in the block commit together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def rows(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def row(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def get_row(store: Store, table: str, row_id: str, owner: str | None = None) -> dict[str, Any] | None:
    """The row with `id` = row_id (and, when given, that owner: another key's row is not found)."""
    if owner is None:
        row = store.row(f"SELECT * FROM {table} WHERE id = ?", (row_id,))
    else:
        row = store.row(f"SELECT * FROM {table} WHERE id = ? AND owner = ?", (row_id, owner))
    return dict(row) if row else None


def page(store: Store, table: str, where: str, params: list, after: str | None, limit: int) -> tuple[list[dict], bool]:
    """Newest first; `after` is the id of the last item of the previous page (OpenAI's cursor)."""
    sql = f"SELECT * FROM {table} WHERE {where}"
    if after:
        sql += f" AND seq < (SELECT seq FROM {table} WHERE id = ?)"
        params = [*params, after]
    rows = store.rows(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit + 1])
    return [dict(r) for r in rows[:limit]], len(rows) > limit


def as_dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None
