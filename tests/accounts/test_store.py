"""Versioned migrations: a platform.db made by main f381ee4's schema (fixtures/platform_f381ee4.db) is upgraded in
place with its rows kept; a new database gets every migration; a database from a newer Lathe is refused."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from accounts import jobs, keys
from accounts.store import SCHEMA_VERSION, Store
from accounts.usage import UsageRecord, usage_report
from recipes import LatheError
from recipes.schema import PlatformConfig

FIXTURE = Path(__file__).parent / "fixtures" / "platform_f381ee4.db"  # made by that version's schema (fixtures/README.md)


def _old_database(path: Path) -> None:
    shutil.copyfile(FIXTURE, path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert "job_id" not in [row[1] for row in conn.execute("PRAGMA table_info(usage)")]
    conn.close()


def _columns(store: Store, table: str) -> list[str]:
    return [row["name"] for row in store.rows(f"PRAGMA table_info({table})")]


def test_a_database_made_by_f381ee4_is_upgraded_in_place_with_its_rows(tmp_path):
    db = tmp_path / "platform.db"
    _old_database(db)
    store = Store(db)
    assert store.row("PRAGMA user_version")[0] == SCHEMA_VERSION
    assert "job_id" in _columns(store, "usage")  # the column added since reaches the existing file
    assert [k.id for k in keys.list_keys(store)] == ["key1"]
    assert usage_report(store, None, "key")[0]["prompt_tokens"] == 10
    # The upgraded database takes the new writes: a job's bill names its job.
    record = UsageRecord(key_id="key1", model="lathe:ft-1", endpoint="/v1/fine_tuning/jobs", prompt_tokens=7,
                         completion_tokens=0, latency_s=1.0, status=200, job_id="ftjob-1")
    assert jobs.bill_job(store, "ftjob-1", record, 0.5) and not jobs.bill_job(store, "ftjob-1", record, 0.5)
    assert store.row("SELECT job_id, cost_usd FROM usage WHERE job_id IS NOT NULL")[:] == ("ftjob-1", 0.5)
    store.close()
    again = Store(db)  # opening again changes nothing
    assert again.row("PRAGMA user_version")[0] == SCHEMA_VERSION and len(again.rows("SELECT * FROM usage")) == 2
    again.close()


def test_a_new_database_has_every_table_and_a_newer_one_is_refused(tmp_path):
    store = Store(tmp_path / "new.db")
    tables = {row["name"] for row in store.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"api_keys", "usage", "files", "batches", "batch_lines", "batch_results", "fine_tuning_jobs",
            "fine_tuning_events", "fine_tuning_checkpoints"} <= tables
    key, secret = keys.create_key(store, "ci", "build", PlatformConfig())
    assert keys.authenticate(store, secret).id == key.id
    store.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store.close()
    with pytest.raises(LatheError, match="newer than this Lathe's"):
        Store(tmp_path / "new.db")


def test_two_processes_opening_an_old_database_at_once_migrate_it_once(tmp_path):
    """Each migration re-reads the version under the write lock: racing openers neither apply one twice (a second
    `ADD COLUMN` would fail) nor move the version back."""
    import threading

    db = tmp_path / "platform.db"
    _old_database(db)
    stores, errors = [], []

    def open_it():
        try:
            stores.append(Store(db))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(stores) == 4
    assert stores[0].row("PRAGMA user_version")[0] == SCHEMA_VERSION and "job_id" in _columns(stores[0], "usage")
    for store in stores:
        store.close()
    Store(db).close()  # and it opens again
