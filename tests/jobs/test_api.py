"""The fine-tuning jobs API end to end, with the official `openai` client against a real server process
on 127.0.0.1 over the tiny model, real pipeline stages and a real MLflow sqlite store:

a job trains, is registered and billed, and its model answers chat requests (with the adapter applied);
events and checkpoints are listed; bad files fail validation naming their lines; the server is killed
(-9) while a second job trains and restarted: nothing is lost, the finished model is still served, the
interrupted job resumes from its checkpoint; then it is cancelled, and its checkpoints stay; a job continues
another's adapter (from_checkpoint), and a Full job's whole model and checkpoint are served beside the base, loaded
when called, and again after a restart.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from tests.conftest import ROOT
from tests.servers import free_port, wait_ready
from tests.serving.conftest import MODEL_NAME

PRICE = 2.0  # dollars per million trained tokens
SERVER = """
import json, sys
from jobs.plane import JobsPlane
from recipes.schema import FineTuningConfig
from serving.app import run
from serving.settings import ServerSettings
settings = json.loads(sys.argv[1])
plane = JobsPlane(FineTuningConfig(**settings.pop("fine_tuning")))  # as `lathe serve` composes it when enabled
run(ServerSettings(**settings), [plane])
"""
ROWS = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": str(i + 1)}]}
        for i in range(8)]


def _jsonl(rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def _start(settings: dict, tmp: Path, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps({**settings, "port": port})], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    assert wait_ready(base, alive=lambda: proc.poll() is None), "server did not start"
    return proc, base


def _wait(what, predicate, timeout=300.0, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last: {value}"
        time.sleep(every)


def _messages(client, job_id) -> list[str]:
    return [e.message for e in reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)]


def _first_token_logprob(client, model) -> float:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 3 + 1?"}],
                                           max_tokens=1, temperature=0, logprobs=True)
    assert reply.model == model
    return reply.choices[0].logprobs.content[0].logprob


def _checkpoints_while_running(client, job_id) -> list:
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "running", job.error
    return client.fine_tuning.jobs.checkpoints.list(job_id).data


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _bad_request(call) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value.body


@pytest.fixture
def keys(tmp_path):
    from accounts.keys import create_key
    from accounts.store import Store
    from recipes.schema import PlatformConfig

    store = Store(tmp_path / "platform.db")
    try:
        return [create_key(store, name, "build", PlatformConfig())[1] for name in ("alice", "bob")]
    finally:
        store.close()


def test_jobs_train_serve_bill_and_survive_a_restart(tiny_model_dir, tmp_path, keys):
    state_dir = tmp_path / "fine_tuning"
    settings = {"model_dir": str(tiny_model_dir), "model_name": MODEL_NAME, "log_level": "warning",
                "platform": {"db_path": str(tmp_path / "platform.db"), "auth": "on"},
                "fine_tuning": {"enabled": True, "state_dir": str(state_dir), "poll_interval_s": 0.2, "price_per_million_tokens": PRICE,
                                "max_concurrent_jobs": 2,  # the second job's start overlaps the first one's last stages
                                # skills only (no skills rows: reported as not run): the other suites take minutes
                                "overrides": ["eval.suites=[{name: skills}]", "gate.guards=null", "gate.max_retention=null", "eval.intermediate_suites=null", "gate.required=[skills/exact_match]"]}}
    log = open(tmp_path / "server.log", "wb")
    server, base = _start(settings, tmp_path, log)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=keys[0], max_retries=0)
        other = openai.OpenAI(base_url=f"{base}/v1", api_key=keys[1], max_retries=0)
        train = client.files.create(file=("train.jsonl", _jsonl(ROWS)), purpose="fine-tune").id
        valid = client.files.create(file=("valid.jsonl", _jsonl(ROWS[:2])), purpose="fine-tune").id
        bad_rows = [*ROWS[:2], {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]},
                    ROWS[3], {"messages": [{"role": "robot", "content": "hi"}]}, '{"messages": [']
        bad = client.files.create(file=("bad.jsonl", _jsonl(bad_rows)), purpose="fine-tune").id
        batch_file = client.files.create(file=("b.jsonl", _jsonl(ROWS)), purpose="batch").id

        # Requests that cannot run are refused at once, naming the field.
        assert _bad_request(lambda: client.fine_tuning.jobs.create(model="gpt-4o", training_file=train))[
            "param"] == "model"
        assert _bad_request(lambda: client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=batch_file))[
            "code"] == "invalid_file_purpose"
        assert _bad_request(lambda: other.fine_tuning.jobs.create(model=MODEL_NAME, training_file=train))[
            "code"] == "file_not_found"  # another key's file
        unknown = _bad_request(lambda: client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=train,
                                                                      extra_body={"weight_decai": 0.1}))
        assert unknown["param"] == "weight_decai" and "not a field of OpenAI's or Together's" in unknown["message"]

        job = client.fine_tuning.jobs.create(
            model=MODEL_NAME, training_file=train, validation_file=valid, suffix="unit", seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
        assert job.status == "validating_files" and job.fine_tuned_model is None
        failing = client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=bad)
        dpo_on_chat_rows = client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=train, method={"type": "dpo"})
        _wait(lambda: client.fine_tuning.jobs.retrieve(job.id), lambda j: j.status == "running")
        # Together's fields; 10,000 steps (~0.04 s each): still training when the server is killed below.
        second = client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=train, extra_body={
            "n_epochs": 5000, "batch_size": 4, "n_checkpoints": 200, "lora_r": 8, "lora_alpha": 16,
            "learning_rate": 1e-3})
        _wait(lambda: client.fine_tuning.jobs.retrieve(second.id), lambda j: j.status == "running")
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # two at once: max_concurrent_jobs
        with pytest.raises(openai.NotFoundError):
            other.fine_tuning.jobs.retrieve(job.id)
        assert [j.id for j in client.fine_tuning.jobs.list(limit=3)] == [second.id, dpo_on_chat_rows.id, failing.id,
                                                                           job.id]  # newest first, over 2 pages

        # Bad files fail validation, every bad row named by its line.
        failed = _wait(lambda: client.fine_tuning.jobs.retrieve(failing.id), lambda j: j.status != "validating_files")
        assert failed.status == "failed" and failed.error.param == "training_file"
        assert failed.error.code == "invalid_training_file" and bad in failed.error.message
        for reason in ("line 3: message 0 content is empty", "line 5: message 0 has role 'robot'",
                       "line 6: not valid JSON"):
            assert reason in failed.error.message
        failed = _wait(lambda: client.fine_tuning.jobs.retrieve(dpo_on_chat_rows.id), lambda j: j.status == "failed")
        assert "line 1: a preference row needs chosen and rejected" in failed.error.message

        # The first job trains, is evaluated, registered, billed and served.
        done = _wait(lambda: client.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"{MODEL_NAME}:ft-unit-{job.id[-8:]}" and done.trained_tokens > 0
        messages = _messages(client, job.id)
        for expected in ("Files validated (8 training rows, 2 validation rows); job queued", "Step 1/2: training loss=",
                         "Step 2/2: training loss=", "Checkpoint created at step 2", "Running stage 'evaluate'",
                         "Registered in MLflow as", "The job has successfully completed"):
            assert any(m.startswith(expected) for m in messages), (expected, messages)
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints and checkpoints[0].step_number == 2 and checkpoints[0].metrics.train_loss > 0
        assert checkpoints[0].metrics.valid_loss is None or checkpoints[0].metrics.valid_loss > 0

        model = done.fine_tuned_model
        usage = httpx2.get(f"{base}/v1/usage", params={"by": "model"}, headers={"Authorization": f"Bearer {keys[0]}"})
        billed = next(row for row in usage.json()["data"] if row["model"] == model)  # before any chat with it
        assert billed["prompt_tokens"] == done.trained_tokens and billed["completion_tokens"] == 0
        assert billed["cost_usd"] == pytest.approx(done.trained_tokens * PRICE / 1e6)
        assert model in [m.id for m in client.models.list().data]
        tuned = _first_token_logprob(client, model)
        assert abs(tuned - _first_token_logprob(client, MODEL_NAME)) > 1e-6  # the adapter is applied
        step_model = checkpoints[0].fine_tuned_model_checkpoint  # a checkpoint is a model too
        assert step_model == f"{model}:ckpt-step-2" and step_model in [m.id for m in client.models.list().data]
        assert _first_token_logprob(client, step_model) == pytest.approx(tuned, abs=1e-5)  # step 2 is the last step
        curve = httpx2.get(f"{base}/v1/fine_tuning/jobs/{job.id}/metrics", headers={"Authorization": f"Bearer {keys[0]}"})
        assert [row["step"] for row in curve.json()["data"] if "train_loss" in row] == [1, 2]

        _check_registry(tmp_path, done, train)

        # Kill -9 while the second job trains, after its first checkpoint.
        _wait(lambda: _checkpoints_while_running(client, second.id), bool, every=0.2)
        with sqlite3.connect(tmp_path / "platform.db") as conn:
            stage_pid = conn.execute("SELECT pid FROM fine_tuning_jobs WHERE id = ?", (second.id,)).fetchone()[0]
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        assert _running(stage_pid), "the stage should have outlived the killed server (it must be cleaned up)"
    finally:
        if server.poll() is None:
            server.kill()

    server, base = _start(settings, tmp_path, log)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=keys[0], max_retries=0)
        assert {j.id: j.status for j in client.fine_tuning.jobs.list()}[job.id] == "succeeded"
        assert _first_token_logprob(client, model) == pytest.approx(tuned, abs=1e-4)  # still served, same adapter
        assert _first_token_logprob(client, f"{model}:ckpt-step-2") == pytest.approx(tuned, abs=1e-4)  # and its checkpoint
        _wait(lambda: _messages(client, second.id),
              lambda m: any("resumes from the checkpoint at step" in x for x in m))
        assert not _running(stage_pid), "the orphaned stage process was not stopped"
        _wait(lambda: _messages(client, second.id), lambda m: any(x.startswith("Resuming training from") for x in m))

        cancelled = client.fine_tuning.jobs.cancel(second.id)
        assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
        kept = client.fine_tuning.jobs.checkpoints.list(second.id).data
        on_disk = Path(state_dir, "jobs", second.id).glob(".lathe/checkpoints/artifacts/sft-*/checkpoint-*")
        assert kept and sorted(c.step_number for c in kept) == sorted(int(p.name.split("-")[1]) for p in on_disk)
        assert any(m.startswith("Kept ") and "finished checkpoint(s)" in m for m in _messages(client, second.id))
        workspace = (state_dir / "jobs" / second.id).resolve()
        assert not [p for p in Path("/proc").glob("[0-9]*") if _cwd(p) == workspace and _running(int(p.name))]
        assert _bad_request(lambda: client.fine_tuning.jobs.cancel(second.id))["code"] == "job_not_cancellable"

        # Together's from_checkpoint: a new job continues the first job's adapter (by job id or by model name).
        assert _bad_request(lambda: client.fine_tuning.jobs.create(
            model=MODEL_NAME, training_file=train, extra_body={"from_checkpoint": "ftjob-none"}))["param"] == "from_checkpoint"
        cont = client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=train,
                                              extra_body={"from_checkpoint": f"{model}:2"})
        # Together's training_type Full, beside it: every weight trained, served as a whole model of its own.
        full = client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=train, extra_body={
            "training_type": {"type": "Full"}, "n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3,
            "n_checkpoints": 2})
        done = _wait(lambda: client.fine_tuning.jobs.retrieve(cont.id), lambda j: j.status in ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        ran = json.loads((state_dir / "jobs" / cont.id / "artifacts" / "sft" / "manifest.json").read_text())
        continued = ran["settings"]["init_adapter"]  # the run's recorded settings: the first job's step-2 checkpoint
        assert f"/jobs/{job.id}/" in continued and continued.endswith("/checkpoint-2"), continued
        assert _first_token_logprob(client, done.fine_tuned_model) != pytest.approx(tuned, abs=1e-6)  # trained further

        whole = _wait(lambda: client.fine_tuning.jobs.retrieve(full.id), lambda j: j.status in ("succeeded", "failed"))
        assert whole.status == "succeeded", whole.error
        ran = json.loads((state_dir / "jobs" / full.id / "artifacts" / "sft" / "manifest.json").read_text())
        assert ran["settings"]["method"] == "full" and "adapter_dir" not in ran["outputs"]  # no adapter: all weights
        assert whole.model_extra["training_type"] == {"type": "Full"}
        assert done.model_extra["training_type"]["type"] == "Lora"
        full_model, full_step = whole.fine_tuned_model, f"{whole.fine_tuned_model}:ckpt-step-1"
        cards = {m.id: m for m in client.models.list().data}
        assert full_model in cards and full_step in cards and cards[full_model].model_extra["parent"] == MODEL_NAME
        assert cards[full_model].model_extra["max_model_len"] is None  # not loaded until called
        full_tuned = _first_token_logprob(client, full_model)  # loaded on this first call
        assert abs(full_tuned - _first_token_logprob(client, MODEL_NAME)) > 1e-6
        assert client.models.retrieve(full_model).model_extra["max_model_len"]  # loaded now
        # max_full_models is 1: the step-1 checkpoint's call unloads the final model, whose next call loads it again
        assert abs(_first_token_logprob(client, full_step) - full_tuned) > 1e-6  # half-trained: its own weights
        assert client.models.retrieve(full_model).model_extra["max_model_len"] is None  # unloaded to make room
        assert _first_token_logprob(client, full_model) == pytest.approx(full_tuned, abs=1e-5)
        assert _bad_request(lambda: client.fine_tuning.jobs.create(
            model=MODEL_NAME, training_file=train, extra_body={"from_checkpoint": full.id}))["param"] == "from_checkpoint"
    finally:
        _stop(server)

    server, base = _start(settings, tmp_path, log)  # a restart serves the whole model again, loaded when called
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=keys[0], max_retries=0)
        assert _first_token_logprob(client, full_model) == pytest.approx(full_tuned, abs=1e-4)
        assert _first_token_logprob(client, model) == pytest.approx(tuned, abs=1e-4)  # and the LoRA one
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def _cwd(proc: Path) -> Path | None:
    try:
        return Path(os.readlink(proc / "cwd")).resolve()
    except OSError:
        return None


def _check_registry(tmp_path: Path, job, training_file: str) -> None:
    """The version carries the job's lineage: its id and the training file's id and content hash."""
    import hashlib

    from registry import models, store

    store.reset()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the test's own store, not one this process exported earlier
    try:
        store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
        version = models.get_version(job.registered_model["name"], job.registered_model["version"])
        assert version.tags["lathe.fine_tuning_job"] == job.id and version.tags["lathe.recipe"] == job.id
        assert version.tags["lathe.training_file"] == training_file
        assert version.tags["lathe.training_file_sha256"] == hashlib.sha256(_jsonl(ROWS)).hexdigest()
        assert "candidate" in version.aliases and "champion" not in version.aliases  # promotion stays separate
    finally:
        store.reset()  # the environment is restored by conftest's _isolated_environment
