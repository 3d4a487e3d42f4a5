"""The queue's coroutines never wait on SQLite on the event loop: a job created, validated (one good file, one
bad), started and cancelled through the real service on the tiny model and a real platform database, with
SQLite's own trace hook recording which thread ran each statement."""

from __future__ import annotations

import asyncio
import json
import threading

from accounts.files import save_file
from accounts.jobs import get_job
from jobs.request import CreateJob
from jobs.service import FineTuningService
from recipes.schema import FineTuningConfig, PlatformConfig
from serving.access import Platform
from serving.settings import ServerSettings
from serving.state import ServedModel, ServerState

ROWS = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": str(i + 1)}]}
        for i in range(8)]


async def _until(service: FineTuningService, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    for _ in range(int(timeout / 0.2)):
        job = await service.db(get_job, job_id)
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} stayed {job['status']}")


def test_a_jobs_transitions_run_sqlite_off_the_event_loop(tiny_model_dir, tmp_path, monkeypatch):
    from registry import store as registry_store

    monkeypatch.chdir(tmp_path)
    registry_store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    settings = ServerSettings(model_dir=tiny_model_dir, model_name="tiny", platform=PlatformConfig(
        db_path=str(tmp_path / "platform.db")))
    config = FineTuningConfig(enabled=True, state_dir=tmp_path / "ft", poll_interval_s=0.2, cancel_grace_s=2,
                              overrides=["sft.max_steps=10000"])
    on_loop, off_loop = [], []

    async def scenario() -> tuple[dict, dict]:
        loop_thread = threading.get_ident()
        platform = Platform(settings.platform, "127.0.0.1")
        # SQLite calls the trace hook in the thread that runs the statement
        platform.store._conn.set_trace_callback(
            lambda sql: (on_loop if threading.get_ident() == loop_thread else off_loop).append(sql))
        good = save_file(platform.store, "alice", "train.jsonl", "fine-tune",
                         "\n".join(json.dumps(r) for r in ROWS).encode())["id"]
        bad = save_file(platform.store, "alice", "bad.jsonl", "fine-tune", b'{"messages": [')["id"]
        on_loop.clear()
        state = ServerState(settings, ServedModel(engine=None, model_dir=tiny_model_dir))
        service = FineTuningService(settings, config, state, platform)
        queue = asyncio.create_task(service.run_forever())
        try:
            job = await service.create("alice", CreateJob(model="tiny", training_file=good))
            failing = await service.create("alice", CreateJob(model="tiny", training_file=bad))
            await _until(service, job["id"], ("running",))
            failed = await _until(service, failing["id"], ("failed",))
            cancelled = await service.cancel(job["id"], "alice")
            await service.aclose()
        finally:
            queue.cancel()
            platform.close()
        return cancelled, failed

    cancelled, failed = asyncio.run(scenario())
    assert cancelled["status"] == "cancelled" and failed["status"] == "failed", (cancelled, failed)
    assert any(sql.startswith("INSERT INTO fine_tuning_jobs") for sql in off_loop)  # the hook saw the writes
    assert not on_loop, on_loop[:5]
