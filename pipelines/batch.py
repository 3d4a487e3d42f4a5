"""`lathe batch run`: run a Batch API input file offline, without a server, into an output file.

    lathe batch run in.jsonl out.jsonl                       # the champion of the recipe's model
    lathe batch run in.jsonl out.jsonl --model artifacts/sft/model --endpoint /v1/completions

The input is what POST /v1/batches takes (OpenAI's `{custom_id, method, url, body}` lines or
Together's `{custom_id, body}`); `out.jsonl` gets the successful results and `out.errors.jsonl` the
failed ones, in the Batch API's output format. It is the server's batch machinery run in this
process (same validation, same worker, same route code), with its state in the recipe's
`platform.db_path`: run the same command again after an interruption and it resumes where it
stopped, with no line run twice. Usage is metered as batch usage of key `offline`.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from pathlib import Path

from pipelines.serve import ALIASES, server_settings
from recipes import LatheError
from recipes.schema import Recipe

OWNER = "offline"


def main(recipe: Recipe, args) -> int:
    from registry import models

    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise LatheError(f"{source}: no such input file")
    ref = args.model or recipe.serve.model
    if ref in ALIASES or ref.startswith("models:/"):  # the registry is only needed to resolve an alias
        from registry import tracking

        tracking.configure(recipe.registry.tracking_uri, Path.cwd())
    model_dir = models.resolve(ref, default_name=recipe.registry.model_name)
    # the server's own settings (recipe `serve:`, LATHE_SERVE_* over it), so a batch runs as `lathe serve` would
    settings = server_settings(recipe, ref, Path(model_dir), served_name=args.served_name)
    errors_path = Path(args.errors) if args.errors else target.with_name(target.stem + ".errors.jsonl")
    return asyncio.run(_run(settings, source, target, errors_path, args.endpoint))


async def _run(settings, source: Path, target: Path, errors_path: Path, endpoint: str) -> int:
    from accounts.batches import get_batch
    from serving.access import Platform
    from serving.batch_worker import BatchWorker
    from serving.batches import parse_input
    from serving.engine import create_engine
    from serving.state import ServedModel, ServerState

    content = source.read_bytes()
    lines, errors = parse_input(content, endpoint, settings.platform.batch)
    if errors:  # fail before loading the model
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise LatheError(f"{source} is not a valid batch input file:\n  " + "\n  ".join(e.message for e in errors[:10])
                         + more)
    platform = Platform(settings.platform, "127.0.0.1")
    batch_id = _batch_for(platform, content, source, target, endpoint)
    engine = create_engine(settings)
    state = ServerState(settings, ServedModel(engine, Path(settings.model_dir)))
    print(f"batch {batch_id}: {len(lines)} requests to {endpoint} on {settings.model_dir} "
          f"(model name '{settings.model_name}')", file=sys.stderr)
    try:
        await engine.load()
        if engine.load_error:
            raise LatheError(f"{settings.model_dir}: the model failed to load: {engine.load_error}")
        worker = BatchWorker(state, platform)
        await _hold(worker, batch_id, settings.platform.batch.lease_s)
        reporter = asyncio.create_task(_report_progress(platform, batch_id))
        try:
            await worker.process(batch_id)
        finally:
            reporter.cancel()
        batch = get_batch(platform.store, batch_id)
        return _write_results(platform, batch, target, errors_path)
    finally:
        engine.close()
        platform.close()


def _batch_for(platform, content: bytes, source: Path, target: Path, endpoint: str) -> str:
    """The unfinished batch of an earlier run of the same command, or a new one."""
    from accounts.batches import unfinished_with
    from accounts.files import save_file
    from serving.batches import create_batch

    run_key = hashlib.sha256(content + f"\0{endpoint}\0{target.resolve()}".encode()).hexdigest()
    earlier = unfinished_with(platform.store, OWNER, "run", run_key)
    if earlier is not None:
        print(f"resuming batch {earlier} (an earlier run of this command stopped before the end)", file=sys.stderr)
        return earlier
    limits = platform.config.batch
    upload = save_file(platform.store, OWNER, source.name, "batch", content)
    window = f"{int(limits.max_completion_window_h * 3600)}s"  # offline: no deadline but the longest allowed
    batch = create_batch(platform.store, OWNER, upload["id"], endpoint, window,
                         {"run": run_key, "input": str(source), "output": str(target)}, limits)
    return batch["id"]


async def _hold(worker, batch_id: str, lease_s: float) -> None:
    """Take the batch; an interrupted earlier run holds it until its lease ends."""
    if await worker.claim(batch_id):
        return
    print(f"batch {batch_id} is held by another worker (an interrupted run's lease lasts {lease_s:g}s); waiting",
          file=sys.stderr)
    deadline = time.monotonic() + lease_s + 5
    while not await worker.claim(batch_id):
        if time.monotonic() > deadline:
            raise LatheError(f"batch {batch_id} is still held by another worker (a server or another "
                             "`lathe batch run` on the same platform.db_path?)")
        await asyncio.sleep(1.0)


async def _report_progress(platform, batch_id: str) -> None:
    from accounts.batches import counts, get_batch

    while True:
        await asyncio.sleep(5)
        batch = get_batch(platform.store, batch_id)
        ok, failed = counts(platform.store, batch_id)
        print(f"  {batch['status']}: {ok + failed}/{batch['total']} done ({failed} failed)", file=sys.stderr)


def _write_results(platform, batch: dict, target: Path, errors_path: Path) -> int:
    from accounts.batches import counts
    from accounts.files import file_content

    if batch["status"] != "completed":
        raise LatheError(f"batch {batch['id']} ended {batch['status']}: {batch['errors'] or ''}")
    ok, failed = counts(platform.store, batch["id"])
    target.parent.mkdir(parents=True, exist_ok=True)
    output = file_content(platform.store, batch["output_file_id"], OWNER) if batch["output_file_id"] else b""
    target.write_bytes(output)
    message = f"{ok} succeeded -> {target}"
    if batch["error_file_id"]:
        errors_path.write_bytes(file_content(platform.store, batch["error_file_id"], OWNER))
        message += f"; {failed} failed -> {errors_path}"
    elif errors_path.exists():
        errors_path.unlink()  # left by an earlier run: it would describe other results
    print(message, file=sys.stderr)
    return 0
