"""The fine-tuning queue of one server: creates jobs, validates their files, runs up to
`max_concurrent_jobs` at once, bills trained tokens, serves each result (a LoRA adapter on the base model, or a
Full job's whole model beside it), and picks up where it was after a restart.

Statuses: validating_files -> queued -> running -> succeeded | failed | cancelled. Restart: queued
jobs simply run; a job whose files were being validated is validated again; a running job's stage
process (if a killed server left it behind) is killed, then the job resumes — at its last
checkpoint if training was under way, at the interrupted stage otherwise — or, if training had not
reached a checkpoint, fails saying so. Succeeded jobs' adapters are loaded again with the base model.
One server per platform database runs the queue (the workspaces are on its disk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from accounts.files import FINE_TUNE_PURPOSE, file_content, get_file
from accounts.jobs import (ACTIVE, FINISHED, add_event, bill_job, checkpoint_path, checkpoints_of, get_job, insert_job,
                           job_by_model, jobs_with_status, new_job_id, sync_checkpoints, update_job)
from accounts.usage import UsageRecord
from jobs import workspace
from jobs.progress import finished_checkpoints
from jobs.request import CreateJob, job_spec
from jobs.runner import EVENTS_FILE, JobRun, kill_stale_stage, training_stage
from recipes import LatheError
from recipes.schema import FineTuningConfig
from serving.errors import invalid_request, not_found

if TYPE_CHECKING:
    from serving.access import Platform
    from serving.settings import ServerSettings
    from serving.state import ServerState

log = logging.getLogger("lathe.serving")

T = TypeVar("T")
ENDPOINT = "/v1/fine_tuning/jobs"  # the usage rows of training tokens
CODE_ROOT = Path(__file__).resolve().parents[1]  # holds pipelines/: the stage processes import it from here


class FineTuningService:
    def __init__(self, server: "ServerSettings", config: FineTuningConfig, state: "ServerState",
                 platform: "Platform") -> None:
        self.server = server
        self.settings = config
        self.state = state
        self.platform = platform
        self.store = platform.store
        self.project_root = Path.cwd()
        self.state_dir = (self.project_root / self.settings.state_dir).resolve()
        self.runs: dict[str, tuple[JobRun, asyncio.Task, str]] = {}
        self.wakeup = asyncio.Event()
        self._tracking_uri: str | None = None
        self.base_recipe = workspace.base_recipe(self.settings.base_recipe, self.project_root)

    def workspace(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id

    # ---- the API -----------------------------------------------------------------------

    async def create(self, owner: str, body: CreateJob) -> dict[str, Any]:
        server = self.server
        if body.model != server.model_name:
            raise invalid_request(f"Model '{body.model}' cannot be fine-tuned here: this server fine-tunes the base "
                                  f"model it serves, '{server.model_name}'.", "model", "model_not_available")
        if server.engine != "transformers":
            raise invalid_request(f"This server's engine '{server.engine}' serves neither LoRA adapters nor a second "
                                  "model beside the one it serves, so it cannot serve a fine-tuned model; run the "
                                  "server with engine 'transformers'.", "model")
        spec = job_spec(body)
        if spec["full"] and server.max_full_models == 0:
            raise invalid_request("Full fine-tuning is off on this server: it keeps no whole model beside the base "
                                  "(serve.max_full_models is 0). Use LoRA, or ask for a server that allows it.",
                                  "training_type.type" if body.training_type is not None else "lora")
        if spec.get("from_checkpoint"):
            spec["init_adapter"] = await asyncio.to_thread(self._checkpoint_adapter, spec["from_checkpoint"], owner)
        files = {"training_file": await asyncio.to_thread(self._fine_tune_file, body.training_file, owner,
                                                          "training_file")}
        if body.validation_file:
            files["validation_file"] = await asyncio.to_thread(self._fine_tune_file, body.validation_file, owner,
                                                               "validation_file")
        job_id = new_job_id()
        seed = next((v for v in (body.seed, body.random_seed) if v is not None), None)
        seed = seed if seed is not None else random.randrange(2**31)
        name = workspace.fine_tuned_model_name(server.model_name, body.suffix, job_id)
        uri = await asyncio.to_thread(self.tracking_uri)
        base_dir = Path(self.state.served.model_dir).resolve()  # the adapter will only fit this base
        try:
            await asyncio.to_thread(self._prepare, job_id, owner, files, spec, seed, name, uri, base_dir)
        except BaseException:
            shutil.rmtree(self.workspace(job_id), ignore_errors=True)
            raise
        await self.db(insert_job, {
            "id": job_id, "owner": owner, "model": server.model_name,
            "base_model_dir": str(base_dir), "training_file": body.training_file,
            "validation_file": body.validation_file, "spec": json.dumps(spec), "suffix": body.suffix, "seed": seed,
            "metadata": json.dumps(body.metadata) if body.metadata is not None else None,
            "status": "validating_files", "fine_tuned_model": name, "created_at": time.time()})
        self.wakeup.set()
        return await self.db(get_job, job_id)

    async def db(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """An accounts/ call on the platform store, in a worker thread: the queue's coroutines never wait on SQLite
        on the event loop, which keeps answering requests meanwhile."""
        return await asyncio.to_thread(call, self.store, *args, **kwargs)

    def _checkpoint_adapter(self, ref: str, owner: str) -> str:
        """Together's `from_checkpoint`: `<job id>` or its fine-tuned model name (the job's final adapter), with
        `:<step>` for one of its checkpoints. The job must be this key's and trained on the served base."""
        name, _, step = ref.rpartition(":") if ref.rpartition(":")[2].isdigit() else (ref, "", "")
        job = get_job(self.store, name, owner) or job_by_model(self.store, name, owner)
        if job is None:
            raise invalid_request(f"from_checkpoint {ref!r}: no fine-tuning job or fine-tuned model of yours by that "
                                  "name.", "from_checkpoint")
        if Path(job["base_model_dir"]) != Path(self.state.served.model_dir).resolve():
            raise invalid_request(f"from_checkpoint {ref!r}: job {job['id']} trained on {job['base_model_dir']}, not "
                                  "on the model this server serves; its adapter would not fit.", "from_checkpoint")
        if json.loads(job["spec"]).get("full"):
            raise invalid_request(f"from_checkpoint {ref!r}: job {job['id']} was a Full fine-tune; from_checkpoint "
                                  "continues a LoRA job's adapter.", "from_checkpoint")
        if job["status"] in ACTIVE:  # a running job's trainer may still rotate its checkpoints away
            raise invalid_request(f"from_checkpoint {ref!r}: job {job['id']} is {job['status']}; continue it once it "
                                  "has finished.", "from_checkpoint")
        if step:
            found = checkpoint_path(self.store, job["id"], int(step))
            if found is None:
                raise invalid_request(f"from_checkpoint {ref!r}: job {job['id']} has no checkpoint at step {step} "
                                      "(GET /v1/fine_tuning/jobs/{id}/checkpoints lists them).", "from_checkpoint")
        elif job["status"] != "succeeded" or not job["adapter_dir"]:
            raise invalid_request(f"from_checkpoint {ref!r}: job {job['id']} is {job['status']}; continue a succeeded "
                                  "job, or one of its checkpoints as `<job id>:<step>`.", "from_checkpoint")
        else:
            found = job["adapter_dir"]
        if not (Path(found) / "adapter_model.safetensors").is_file():
            raise invalid_request(f"from_checkpoint {ref!r}: its adapter is gone from {found} (workspace deleted?).",
                                  "from_checkpoint")
        return found

    def _fine_tune_file(self, file_id: str, owner: str, param: str) -> dict[str, Any]:
        row = get_file(self.store, file_id, owner)
        if row is None:
            raise invalid_request(f"No file with id '{file_id}' (upload it with POST /v1/files, purpose "
                                  f"'{FINE_TUNE_PURPOSE}').", param, "file_not_found")
        if row["purpose"] != FINE_TUNE_PURPOSE:
            raise invalid_request(f"File '{file_id}' has purpose '{row['purpose']}'; fine-tuning files need purpose "
                                  f"'{FINE_TUNE_PURPOSE}'.", param, "invalid_file_purpose")
        return row

    def _prepare(self, job_id: str, owner: str, files: dict[str, dict], spec: dict, seed: int, name: str,
                 uri: str, base_dir: Path) -> None:
        """The job's workspace: its files and the recipe derived from the request (a 400 if it is not valid)."""
        folder = self.workspace(job_id)
        paths = {}
        for param, row in files.items():
            path = folder / "files" / workspace.file_name(row["id"], row["filename"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(file_content(self.store, row["id"], owner))
            paths[param] = str(path)
        try:
            recipe = workspace.job_recipe(self.base_recipe, job_id=job_id, spec=spec, seed=seed,
                                          base_model_dir=base_dir,
                                          train_file=paths["training_file"], validation_file=paths.get("validation_file"),
                                          model_name=name, tracking_uri=uri,
                                          full_learning_rate=self.settings.full_learning_rate,
                                          project_root=self.project_root, overrides=self.settings.overrides)
        except LatheError as exc:
            raise invalid_request(f"{exc}", "hyperparameters") from None
        workspace.write_recipe(folder / "recipe.yaml", recipe)
        cache = self.state_dir / "eval-cache"  # base-model scores are reused by every job on the same base
        cache.mkdir(parents=True, exist_ok=True)
        (folder / ".lathe").mkdir(exist_ok=True)
        (folder / ".lathe" / "eval-cache").symlink_to(cache, target_is_directory=True)

    async def cancel(self, job_id: str, owner: str) -> dict[str, Any]:
        job = await self.db(get_job, job_id, owner)
        if job is None:
            raise not_found(f"No fine-tuning job with id '{job_id}'.", "fine_tuning_job_id")
        if job["status"] in FINISHED:
            raise invalid_request(f"Job '{job_id}' has already {job['status']}; only validating, queued or running "
                                  "jobs can be cancelled.", "fine_tuning_job_id", "job_not_cancellable")
        await self.db(update_job, job_id, status="cancelled", finished_at=time.time(), when_status=ACTIVE,
                      event="Job cancelled")
        running = self.runs.get(job_id)
        if running is not None:
            await running[0].stop()  # the stage's process group; its finished checkpoints stay
        kept = await asyncio.to_thread(self._record_checkpoints, job)
        if kept:
            await self.db(add_event, job_id, f"Kept {len(kept)} finished checkpoint(s): step(s) "
                                             f"{', '.join(str(c.step) for c in kept)}")
        await self.db(update_job, job_id, pid=None)
        return await self.db(get_job, job_id)

    # ---- the queue ---------------------------------------------------------------------

    async def run_forever(self) -> None:
        await asyncio.to_thread(self.recover)
        while True:
            await self._schedule()
            try:
                await asyncio.wait_for(self.wakeup.wait(), self.settings.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            self.wakeup.clear()

    async def _schedule(self) -> None:
        for job in await self.db(jobs_with_status, "validating_files"):
            if job["id"] not in self.runs:
                self._start(job, "validate")
        training = sum(1 for _, _, kind in self.runs.values() if kind == "train")
        for job in await self.db(jobs_with_status, "queued"):
            if training >= self.settings.max_concurrent_jobs:
                break
            if job["id"] in self.runs:
                continue
            if await self.db(update_job, job["id"], status="running", started_at=job["started_at"] or time.time(),
                             when_status=("queued",), event="Fine-tuning job started"):
                self._start(await self.db(get_job, job["id"]), "train")
                training += 1

    def _start(self, job: dict[str, Any], kind: str) -> None:
        run = JobRun(self, job)
        task = asyncio.create_task(self._guarded(run, kind))
        self.runs[job["id"]] = (run, task, kind)

    async def _guarded(self, run: JobRun, kind: str) -> None:
        try:
            await (run.validate() if kind == "validate" else run.train())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one job's bug must not stop the queue
            log.exception("fine-tuning job %s failed", run.id)
            if not run.stopped:
                await run.fail("internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            self.runs.pop(run.id, None)
            self.wakeup.set()

    async def aclose(self) -> None:
        """Shutdown: stop the running stages (the jobs stay `running`; the next start resumes them)."""
        for run, task, kind in list(self.runs.values()):
            if kind == "train":
                await self.db(add_event, run.id, "The server is shutting down: the running stage was stopped; the "
                                                 "job resumes when the server starts again", level="warn")
            await run.stop()
            task.cancel()

    # ---- restart -----------------------------------------------------------------------

    def recover(self) -> None:
        for job in jobs_with_status(self.store, "running"):
            folder = self.workspace(job["id"])
            if job["pid"] and kill_stale_stage(job["pid"], folder):
                log.warning("job %s: killed stage process %d left by the previous server", job["id"], job["pid"])
            stage = job["stage"] or "base"
            trainer = training_stage(json.loads(job["spec"]))
            checkpoints = self._record_checkpoints(job)  # the killed server's stage may have saved more
            if stage == trainer and not checkpoints:
                message = (f"The server restarted while the job was training (stage '{stage}') before its first "
                           "checkpoint was saved, so there is nothing to resume from; create the job again.")
                update_job(self.store, job["id"], status="failed", finished_at=time.time(), pid=None,
                           error={"code": "interrupted", "message": message, "param": None}, level="error",
                           event=f"Job failed: {message}")
                continue
            where = (f"from the checkpoint at step {checkpoints[-1].step}" if stage == trainer
                     else f"at stage '{stage}' (the stages before it are kept)")
            update_job(self.store, job["id"], status="queued", pid=None, level="warn",
                       event=f"The server restarted while stage '{stage}' was running; the job resumes {where}")
        for job in jobs_with_status(self.store, "validating_files"):
            add_event(self.store, job["id"], "The server restarted; validating the files again")

    def _record_checkpoints(self, job: dict[str, Any]) -> list:
        """Bring the job's checkpoint list up to what is on disk; returns the finished checkpoints."""
        stage = training_stage(json.loads(job["spec"]))
        found = finished_checkpoints(self.workspace(job["id"]), stage)
        sync_checkpoints(self.store, job["id"], stage, found)
        return found

    # ---- what the stages hand back -----------------------------------------------------

    def tracking_uri(self) -> str:
        """The MLflow store jobs register into: the server's own (configured from MLFLOW_TRACKING_URI or the
        project's sqlite:///mlflow.db when `lathe serve` did not configure one). Imports MLflow: call off the loop.

        The store's tables are created here, once: MLflow creates a new sqlite store on first use, and two
        jobs' stage processes doing that at the same moment fail ('table ... already exists')."""
        if self._tracking_uri is None:
            from registry import store

            uri = store.current().uri
            with store.store_lock():
                store.client(must_exist=False).search_experiments(max_results=1)
            self._tracking_uri = uri
        return self._tracking_uri

    def stage_env(self, job_id: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1",
                "LATHE_EVENTS": str(self.workspace(job_id) / EVENTS_FILE),  # progress, as structured events
                "LATHE_PIPELINE_ID": job_id,  # every stage's MLflow run nests under one parent run per job
                "MLFLOW_TRACKING_URI": self.tracking_uri()}

    async def after_stage(self, job: dict[str, Any], stage: str, folder: Path, seconds: float) -> None:
        if stage == training_stage(json.loads(job["spec"])):
            metrics = _manifest(folder, stage)["metrics"]
            await asyncio.to_thread(self.bill, job, int(metrics.get("train_tokens", 0)), seconds)
            loss = metrics.get("last_logged_loss", metrics.get("train_loss"))
            await self.db(add_event, job["id"], f"Training finished: {int(metrics.get('train_tokens', 0))} tokens, "
                                             f"final training loss {loss:.4f}" if loss is not None else
                      "Training finished", type="metrics", data=metrics)
        elif stage == "evaluate":
            scores = json.loads((folder / "artifacts/evaluate/metrics.json").read_text()).get("tuned", {})
            summary = ", ".join(f"{k}={v:.3f}" for k, v in sorted(scores.items()) if "stderr" not in k)
            await self.db(add_event, job["id"], f"Evaluation of the tuned model: {summary}" if summary else
                      "Evaluation: no suite produced a score (report: artifacts/evaluate/report.md in the workspace)",
                      type="metrics", data=scores)
        elif stage == "register":
            registered = json.loads((folder / "artifacts/register/manifest.json").read_text())
            await asyncio.to_thread(workspace.tag_version, job, registered, folder)
            await self.db(update_job, job["id"], registered={"name": registered["name"],
                                                             "version": registered["version"]},
                          event=f"Registered in MLflow as {registered['name']} version {registered['version']} "
                             "(alias candidate; promotion to champion is a separate, gated step)")

    def bill(self, job: dict[str, Any], tokens: int, seconds: float) -> None:
        """Charge the trained tokens to the job's key once (a resumed job is not billed twice)."""
        cost = tokens * self.settings.price_per_million_tokens / 1e6
        record = UsageRecord(key_id=job["owner"], model=job["fine_tuned_model"], endpoint=ENDPOINT,
                             prompt_tokens=tokens, completion_tokens=0, latency_s=seconds, status=200, job_id=job["id"])
        if not bill_job(self.store, job["id"], record, cost):
            return
        self.platform.meter.observe(record, cost)
        add_event(self.store, job["id"], f"Billed {tokens} trained tokens (${cost:.6f})")

    async def finish(self, job: dict[str, Any], folder: Path) -> None:
        """Serve the result (a LoRA job's adapter on the base, a Full job's whole model beside it) and its
        checkpoints, then mark the job succeeded (so a client that sees `succeeded` can call it)."""
        spec = json.loads(job["spec"])
        outputs = _manifest(folder, training_stage(spec))["outputs"]
        result = (folder / outputs["model_dir" if spec.get("full") else "adapter_dir"]).resolve()
        await self.db(update_job, job["id"], adapter_dir=str(result))  # the job's output: adapter or whole model
        name = job["fine_tuned_model"]
        checkpoints = await self.db(checkpoints_of, job["id"])
        served = [(name, result)] + [(f"{name}:ckpt-step-{c['step']}", Path(c["path"])) for c in checkpoints]
        if spec.get("full"):  # each checkpoint is a model too, as OpenAI names it: <fine_tuned_model>:ckpt-step-N
            for served_name, path in served:
                self.state.models.add(served_name, path)  # loaded when first called
            ok = True
        else:
            ok = await self.serve_adapter(job, result)
            if ok:
                for served_name, path in served[1:]:
                    await self.serve_adapter(job, path, served_name)
        done = await self.db(update_job, job["id"], status="succeeded", stage=None, pid=None, finished_at=time.time(),
                             when_status=("running",),
                             event=f"The job has successfully completed: model {name}" +
                                   ("" if ok else " (registered, but not served by this server: see above)"))
        if not done:  # cancelled in the meantime
            for served_name, _ in served:
                self.state.adapter_pool.pop(served_name, None)
                self.state.served.adapters.pop(served_name, None)
                self.state.models.remove(served_name)

    async def serve_adapter(self, job: dict[str, Any], adapter: Path, name: str | None = None) -> bool:
        """Load the adapter onto the running engine's base and add its name (default: the job's fine-tuned model)
        to the served models."""
        name = name or job["fine_tuned_model"]
        served = self.state.served  # one live model throughout, even if a swap comes while the adapter loads
        if Path(served.model_dir).resolve() != Path(job["base_model_dir"]):
            await self.db(add_event, job["id"], f"Not served: this server's base model is now "
                                             f"{served.model_dir}, not the {job['base_model_dir']} the "
                                             "adapter was trained on", "warn")
            return False
        add_adapter = getattr(served.engine, "add_adapter", None)
        if add_adapter is None:
            await self.db(add_event, job["id"], "Not served: this engine cannot load adapters at run time", "warn")
            return False
        await add_adapter(name, adapter)
        # The live model's adapters name the served models (state.adapter_for, /v1/models); the state's adapter pool
        # is what an engine created later (a hot swap) chooses from, keeping those that fit its base.
        served.adapters[name] = adapter
        self.state.adapter_pool[name] = adapter
        return True


def _manifest(folder: Path, stage: str) -> dict[str, Any]:
    return json.loads((folder / "artifacts" / stage / "manifest.json").read_text())
