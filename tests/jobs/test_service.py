"""The queue's coroutines never wait on SQLite on the event loop: jobs created, validated (good files, a bad one),
trained, evaluated, registered, billed and served — or cancelled while training — through the real service on the
tiny model and a real platform database, with SQLite's own trace hook recording which thread ran each statement."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from accounts.files import save_file
from accounts.jobs import get_job
from jobs.request import CreateJob
from jobs.service import FineTuningService
from recipes.schema import FineTuningConfig, PlatformConfig
from serving.access import Platform
from serving.errors import APIError
from serving.settings import ServerSettings
from serving.state import ServedModel, ServerState, new_served_model

FAST = ["eval.suites=[{name: skills}]", "gate.guards=null", "gate.max_retention=null", "eval.intermediate_suites=null",
        "gate.required=[skills/exact_match]"]  # skills only (none in a job's data: not run): the rest take minutes

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
                              max_concurrent_jobs=2, overrides=FAST)
    on_loop, off_loop = [], []

    async def scenario() -> tuple[dict, dict, dict]:
        loop_thread = threading.get_ident()
        platform = Platform(settings.platform, "127.0.0.1")
        # SQLite calls the trace hook in the thread that runs the statement
        platform.store._conn.set_trace_callback(
            lambda sql: (on_loop if threading.get_ident() == loop_thread else off_loop).append(sql))
        good = save_file(platform.store, "alice", "train.jsonl", "fine-tune",
                         "\n".join(json.dumps(r) for r in ROWS).encode())["id"]
        bad = save_file(platform.store, "alice", "bad.jsonl", "fine-tune", b'{"messages": [')["id"]
        served = new_served_model(settings, tiny_model_dir, {})
        await served.engine.load()
        on_loop.clear()
        service = FineTuningService(settings, config, ServerState(settings, served), platform)
        queue = asyncio.create_task(service.run_forever())
        try:
            job = await service.create("alice", CreateJob(model="tiny", training_file=good, n_epochs=1, batch_size=4))
            long = await service.create("alice", CreateJob(model="tiny", training_file=good, n_epochs=5000))
            failing = await service.create("alice", CreateJob(model="tiny", training_file=bad))
            await _until(service, long["id"], ("running",))
            failed = await _until(service, failing["id"], ("failed",))
            cancelled = await service.cancel(long["id"], "alice")
            done = await _until(service, job["id"], ("succeeded", "failed"), timeout=300)
            await service.aclose()
        finally:
            queue.cancel()
            served.engine.close()
            platform.close()
        return done, cancelled, failed

    done, cancelled, failed = asyncio.run(scenario())
    assert done["status"] == "succeeded" and done["trained_tokens"] > 0, done  # trained, billed ...
    assert cancelled["status"] == "cancelled" and failed["status"] == "failed", (cancelled, failed)
    assert any(sql.startswith("INSERT INTO fine_tuning_jobs") for sql in off_loop)  # the hook saw the writes
    assert any(sql.startswith("INSERT INTO usage") for sql in off_loop)  # ... and the bill
    assert not on_loop, on_loop[:5]


def test_a_full_job_is_refused_where_no_whole_model_may_be_served(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = ServerSettings(model_dir=tiny_model_dir, model_name="tiny", max_full_models=0,
                              platform=PlatformConfig(db_path=str(tmp_path / "platform.db")))
    platform = Platform(settings.platform, "127.0.0.1")
    service = FineTuningService(settings, FineTuningConfig(enabled=True, state_dir=tmp_path / "ft"),
                                ServerState(settings, ServedModel(engine=None, model_dir=tiny_model_dir)), platform)
    try:
        for body, param in (({"training_type": {"type": "Full"}}, "training_type.type"), ({"lora": False}, "lora")):
            with pytest.raises(APIError, match=r"serve.max_full_models is 0") as caught:
                asyncio.run(service.create("alice", CreateJob(model="tiny", training_file="file-x", **body)))
            assert caught.value.status_code == 400 and caught.value.param == param
    finally:
        platform.close()
