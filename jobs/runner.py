"""One job's work: validate its files (the `data` stage), then run the pipeline's stages, each as a
`python -m pipelines.cli <stage> --recipe recipe.yaml` process with cwd = the job's workspace.

A stage tells its progress and its error as structured events (recipes/events.py: JSON lines appended to
`logs/events.jsonl`, named by $LATHE_EVENTS); its printed output goes to `logs/<stage>.log` for people and is
never parsed. Each stage runs in a process group of its own (start_new_session): cancel and shutdown signal the whole
group, so whatever a stage started (torchrun, DeepSpeed workers) stops with it. Finished checkpoints
stay on disk (they live outside the stage's output folder) and in the job's checkpoint list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from accounts.files import get_file
from accounts.jobs import add_event, get_job, sync_checkpoints, update_job
from jobs import progress, workspace
from recipes.events import EventReader
from recipes.stages import JOB_STAGES

if TYPE_CHECKING:
    from jobs.service import FineTuningService

log = logging.getLogger("lathe.serving")

TAIL_LINES = 40
EVENTS_FILE = "logs/events.jsonl"  # $LATHE_EVENTS of the job's stage processes (recipes/events.py)


def training_stage(spec: dict[str, Any]) -> str:
    return "preference" if spec["method"] == "dpo" else "sft"


@dataclass
class StageExit:
    code: int
    error: str | None
    """The stage's own error event (`kind: message`), None if it wrote none (killed by a signal, out of memory)."""
    tail: list[str]
    """Its last output lines: shown when there is no error event, never parsed."""

    def why(self) -> str:
        if self.error:
            return self.error
        return "the stage reported no error (killed?); its last output: " + (
            " | ".join(line.strip() for line in self.tail[-5:]) or "none")


class JobRun:
    """Runs one job's validation or training; `stop()` ends the running stage's process group."""

    def __init__(self, service: "FineTuningService", job: dict[str, Any]) -> None:
        self.service = service
        self.store = service.store
        self.job = job
        self.id = job["id"]
        self.spec = json.loads(job["spec"])
        self.workspace = service.workspace(self.id)
        self.process: asyncio.subprocess.Process | None = None
        self.stopped = False  # cancel or shutdown: the stage's exit is not a failure

    # ---- processes ---------------------------------------------------------------------

    async def run_stage(self, stage: str, cwd: Path, on_events: Callable[[list[dict]], None] | None = None,
                        on_tick: Callable[[], None] | None = None) -> StageExit:
        """Run `lathe <stage>` in `cwd`. Output goes to logs/<stage>.log; its structured events (appended to
        the job's events file) are handed to `on_events` as they come, and its error event is returned."""
        settings = self.service.settings
        logs = self.workspace / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        events_path = self.workspace / EVENTS_FILE
        reader = EventReader(events_path, events_path.stat().st_size if events_path.exists() else 0)
        error: str | None = None

        def drain() -> None:
            nonlocal error
            new = [e for e in reader.read() if e.get("stage") == stage]
            for event in new:
                if event["type"] == "error" and error is None:  # the first: a launched stage's ranks tell the cause
                    # before the launcher reports that they failed. A user's error is said as is.
                    kind, message = event.get("kind"), event.get("message", "")
                    error = message if kind == "user" else f"{kind} error: {message}"
            if on_events and new:
                on_events(new)

        env = await asyncio.to_thread(self.service.stage_env, self.id)  # the first call opens the MLflow store
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipelines.cli", stage, "--recipe", "recipe.yaml", cwd=cwd,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        if self.stopped:  # cancelled while the process was being started
            _signal_group(self.process.pid, signal.SIGTERM)
        if cwd == self.workspace:
            await self.service.db(update_job, self.id, pid=self.process.pid)
        tail: list[str] = []
        ticked = time.monotonic()
        with open(logs / f"{stage}.log", "a", encoding="utf-8") as log_file:
            while True:
                try:
                    chunk = await asyncio.wait_for(self.process.stdout.read(1 << 16), settings.poll_interval_s)
                except asyncio.TimeoutError:
                    chunk = None
                if time.monotonic() - ticked >= settings.poll_interval_s:
                    await self._off_loop(drain, on_tick)
                    ticked = time.monotonic()
                if chunk is None:
                    continue
                if not chunk:
                    break
                text = chunk.decode("utf-8", errors="replace")
                log_file.write(text)
                lines = text.replace("\r", "\n").splitlines()  # tqdm redraws end with \r; kept for people, not parsed
                tail = (tail + [line for line in lines if line.strip()])[-TAIL_LINES:]
        code = await self.process.wait()
        await self._off_loop(drain, on_tick)
        self.process = None
        return StageExit(code, error, tail)

    @staticmethod
    async def _off_loop(*work: Callable[[], None] | None) -> None:
        """Reading the events file and writing events and checkpoint rows (disk and SQLite), in a worker thread: the
        server's event loop keeps answering requests meanwhile."""
        def run() -> None:
            for step in work:
                if step is not None:
                    step()

        await asyncio.to_thread(run)

    async def stop(self) -> None:
        """SIGTERM to the running stage's process group; SIGKILL after `cancel_grace_s`."""
        self.stopped = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.service.settings.cancel_grace_s)
        except asyncio.TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()

    # ---- validation --------------------------------------------------------------------

    async def validate(self) -> None:
        """validating_files -> queued, or failed with every bad row named (file id, line, reason). One `data`
        run checks both files: the validation file is the recipe's `data.*_validation`, trained as written."""
        settings, job = self.service.settings, self.job
        if not await self._still("validating_files"):
            return
        params = {"training_file": job["training_file"]}
        if job["validation_file"]:
            params["validation_file"] = job["validation_file"]
        for param, file_id in params.items():
            size = (await self.service.db(get_file, file_id, job["owner"]) or {}).get("bytes", 0)
            if size > settings.max_file_bytes:
                return await self.fail("invalid_file", f"File {file_id} is {size} bytes; fine-tuning files may have at "
                                                 f"most {settings.max_file_bytes} bytes.", param)
        result = await self.run_stage("data", self.workspace)
        if self.stopped:
            return
        if result.code != 0:  # a whole file it could not read: the message names it
            message = self._name_files(result.why())
            param = next((p for p, f in reversed(params.items()) if f in message), "training_file")
            return await self.fail(f"invalid_{param}", message, param)
        rows = self._rows()
        for param, file_id in params.items():
            problem = await asyncio.to_thread(self._check_data, file_id, rows[param])  # reads every rejected row
            if problem:
                return await self.fail(f"invalid_{param}", problem, param)
        recipe_path = self.workspace / "recipe.yaml"
        recipe = workspace.read_recipe(recipe_path)
        every = workspace.save_steps(recipe, rows["training_file"], self.spec.get("n_checkpoints")
                                     or settings.n_checkpoints)
        recipe[training_stage(self.spec)]["save_steps"] = every
        if self.spec.get("n_evals"):  # Together's n_evals: validation loss that many times over the run
            recipe[training_stage(self.spec)]["eval_steps"] = workspace.save_steps(recipe, rows["training_file"],
                                                                                  self.spec["n_evals"])
        workspace.write_recipe(recipe_path, recipe)
        counts = f"{rows['training_file']} training rows" + (
            f", {rows['validation_file']} validation rows" if "validation_file" in params else "")
        await self.service.db(update_job, self.id, status="queued", pid=None, when_status=("validating_files",),
                              event=f"Files validated ({counts}); job queued")

    def _rows(self) -> dict[str, int]:
        """Usable rows per file, from the data stage's manifest."""
        outputs = json.loads((self.workspace / "artifacts/data/manifest.json").read_text())["outputs"]
        prefix = "pref" if self.spec["method"] == "dpo" else "sft"
        return {"training_file": outputs[f"{prefix}_train"]["rows"], "validation_file": outputs[f"{prefix}_val"]["rows"]}

    def _check_data(self, file_id: str, rows: int) -> str | None:
        """Why the file cannot be trained on (each of its rejected rows, named), or None."""
        data = self.workspace / "artifacts" / "data"
        rejects = [json.loads(line) for line in (data / "rejects.jsonl").read_text(encoding="utf-8").split("\n")
                   if line.strip()]  # "\n" only: a user's rejected line may hold U+2028, which splitlines() splits at
        rejects = [r for r in rejects if Path(r["file"]).name.startswith(file_id + ".")]
        if rejects:
            limit = self.service.settings.max_errors_reported
            named = "; ".join(f"{r['where']}: {r['reason']}" for r in rejects[:limit])
            more = f" (and {len(rejects) - limit} more)" if len(rejects) > limit else ""
            layout = "prompt/chosen/rejected preference rows" if self.spec["method"] == "dpo" else "chat rows"
            return (f"File {file_id} has {len(rejects)} invalid row(s) for a {self.spec['method']} job "
                    f"({layout}): {named}{more}")
        if rows < self.service.settings.min_rows:
            return f"File {file_id} has {rows} usable row(s); at least {self.service.settings.min_rows} needed."
        return None

    def _name_files(self, message: str) -> str:
        """Stage errors name the workspace copy of a file; the client knows it by its file id."""
        return message.replace(str(self.workspace / "files") + os.sep, "")

    # ---- training ----------------------------------------------------------------------

    async def train(self) -> None:
        """running -> succeeded (stages done, tokens billed, model served) or failed, unless stopped."""
        if not await self._still("running"):
            return
        done = json.loads(self.job["done_stages"])
        trainer = training_stage(self.spec)
        for stage in JOB_STAGES:
            if self.stopped:
                return
            if stage in done:
                continue
            await self.service.db(update_job, self.id, stage=stage, event=f"Running stage '{stage}'")
            started = time.monotonic()
            if stage == trainer:
                result = await self._train_stage(stage)
            else:
                result = await self.run_stage(stage, self.workspace)
            if self.stopped:
                return
            if result.code != 0:
                return await self.fail("stage_failed", f"Stage '{stage}' failed (exit code {result.code}): "
                                                       f"{result.why()} (its output: logs/{stage}.log in the job's "
                                                       "workspace)")
            await self.service.after_stage(self.job, stage, self.workspace, time.monotonic() - started)
            done.append(stage)
            await self.service.db(update_job, self.id, done_stages=done, pid=None,
                                  event=f"Stage '{stage}' finished in {time.monotonic() - started:.0f} s")
        if not self.stopped:
            await self.service.finish(self.job, self.workspace)

    async def _train_stage(self, stage: str) -> StageExit:
        """The training stage: its log events become metrics events, its checkpoints checkpoint rows."""
        resumed = progress.finished_checkpoints(self.workspace, stage)
        if resumed:
            await self.service.db(add_event, self.id,
                                  f"Resuming training from the checkpoint at step {resumed[-1].step}")

        def on_events(events: list[dict]) -> None:
            for event in events:
                if event["type"] != "log":
                    continue
                metrics, step, total = event.get("metrics", {}), event["step"], event.get("total_steps")
                if "train_loss" in metrics:
                    message = f"Step {step}" + (f"/{total}" if total else "") + f": training loss={metrics['train_loss']:.4f}"
                elif "valid_loss" in metrics:
                    message = f"Step {step}: validation loss={metrics['valid_loss']:.4f}"
                else:
                    continue
                add_event(self.store, self.id, message, type="metrics",
                          data={"step": step, "total_steps": total, **metrics})

        def on_tick() -> None:
            sync_checkpoints(self.store, self.id, stage, progress.finished_checkpoints(self.workspace, stage))

        return await self.run_stage(stage, self.workspace, on_events, on_tick)

    async def _still(self, status: str) -> bool:
        """Whether the job is still `status` now that this run is registered (a cancel that came between the queue's
        read and the start is seen here; one that comes later stops the run)."""
        job = await self.service.db(get_job, self.id)
        return job is not None and job["status"] == status

    async def fail(self, code: str, message: str, param: str | None = None) -> None:
        error = {"code": code, "message": message, "param": param}
        await self.service.db(update_job, self.id, status="failed", error=error, finished_at=time.time(), pid=None,
                              when_status=("validating_files", "running"), level="error",
                              event=f"Job failed: {message}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is the stage process's pid
    except ProcessLookupError:
        pass


def alive_stage_process(pid: int | None, cwd: Path) -> bool:
    """Whether `pid` is still a stage process of the job in `cwd` (a server killed with -9 leaves its stage
    running; a reused pid of something else is left alone)."""
    if not pid:
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == cwd.resolve() and \
            b"pipelines.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def kill_stale_stage(pid: int, cwd: Path, timeout_s: float = 30.0) -> bool:
    """SIGKILL the orphaned stage's process group and wait for it to go; True if there was one."""
    if not alive_stage_process(pid, cwd):
        return False
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init to reap it, but it holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
