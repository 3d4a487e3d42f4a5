"""Fine-tuning jobs, their events and checkpoints: rows of the platform's database (tables: accounts/store.py).

Everything a restarted server needs is here: the job's status, the stage it was running (and the
process running it), the stages already done, and whether its tokens were billed. The API objects
(`fine_tuning.job`, `.event`, `.checkpoint`) are built from these rows.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from accounts.store import Store, get_row
from accounts.usage import UsageRecord, write_usage

ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


def bill_job(store: Store, job_id: str, record: UsageRecord, cost: float) -> bool:
    """Record the job's trained tokens and bill them, once: False if it was billed already (a resumed job)."""
    with store.transaction() as conn:
        if not conn.execute("UPDATE fine_tuning_jobs SET trained_tokens = ? WHERE id = ? AND trained_tokens IS NULL",
                            (record.prompt_tokens, job_id)).rowcount:
            return False
        write_usage(conn, record, cost)
    return True


def succeeded_outputs(db: Path, full: bool, base_model_dir: str | None = None) -> list[tuple[str, str]]:
    """(served name, directory) of the succeeded jobs' results and of their checkpoints
    (`<fine_tuned_model>:ckpt-step-N`): LoRA jobs' adapters trained on `base_model_dir`, or (`full`) Full jobs'
    whole models. Read-only (before a server opens the database for writing); [] when the database has no jobs
    table yet."""
    where = ("j.status = 'succeeded' AND COALESCE(json_extract(j.spec, '$.full'), 0) = ? AND "
             "(? IS NULL OR j.base_model_dir = ?)")
    params = (int(full), base_model_dir, base_model_dir)
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(
                f"SELECT j.fine_tuned_model, j.adapter_dir FROM fine_tuning_jobs j WHERE {where} UNION ALL "
                "SELECT j.fine_tuned_model || ':ckpt-step-' || c.step, c.path FROM fine_tuning_checkpoints c "
                f"JOIN fine_tuning_jobs j ON j.id = c.job_id WHERE {where}", params + params).fetchall()
    except sqlite3.OperationalError:
        return []


def checkpoints_of(store: Store, job_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in store.rows("SELECT * FROM fine_tuning_checkpoints WHERE job_id = ? ORDER BY step", (job_id,))]


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


def insert_job(store: Store, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    with store.transaction() as conn:
        conn.execute(f"INSERT INTO fine_tuning_jobs ({columns}) VALUES ({', '.join(':' + c for c in row)})", row)
        _event(conn, row["id"], "Created fine-tuning job", created_at=row["created_at"])


def get_job(store: Store, job_id: str, owner: str | None = None) -> dict[str, Any] | None:
    return get_row(store, "fine_tuning_jobs", job_id, owner)


def job_by_model(store: Store, fine_tuned_model: str, owner: str) -> dict[str, Any] | None:
    row = store.row("SELECT * FROM fine_tuning_jobs WHERE fine_tuned_model = ? AND owner = ?", (fine_tuned_model, owner))
    return dict(row) if row else None


def checkpoint_path(store: Store, job_id: str, step: int) -> str | None:
    row = store.row("SELECT path FROM fine_tuning_checkpoints WHERE job_id = ? AND step = ? ORDER BY seq DESC",
                    (job_id, step))
    return row["path"] if row else None


def jobs_with_status(store: Store, *statuses: str) -> list[dict[str, Any]]:
    marks = ", ".join("?" * len(statuses))
    return [dict(r) for r in store.rows(f"SELECT * FROM fine_tuning_jobs WHERE status IN ({marks}) ORDER BY seq",
                                        statuses)]


def update_job(store: Store, job_id: str, *, event: str | None = None, level: str = "info",
               when_status: tuple[str, ...] | None = None, **fields: Any) -> bool:
    """Set `fields` (and add `event`) in one transaction; with `when_status`, only if the job's status is one of
    those (so a cancel and a finishing stage cannot both win). Returns whether the job was updated."""
    fields = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
    sql = f"UPDATE fine_tuning_jobs SET {', '.join(f'{k} = :{k}' for k in fields)} WHERE id = :job_id"
    if when_status:
        sql += f" AND status IN ({', '.join(repr(s) for s in when_status)})"
    with store.transaction() as conn:
        changed = conn.execute(sql, {**fields, "job_id": job_id}).rowcount if fields else 1
        if changed and event:
            _event(conn, job_id, event, level)
    return bool(changed)


def add_event(store: Store, job_id: str, message: str, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    with store.transaction() as conn:
        _event(conn, job_id, message, level, type, data)


def _event(conn, job_id: str, message: str, level: str = "info", type: str = "message", data: dict | None = None,
           created_at: float | None = None) -> None:
    conn.execute("INSERT INTO fine_tuning_events (id, job_id, created_at, level, message, type, data) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (f"ftevent-{secrets.token_hex(12)}", job_id, created_at or time.time(), level, message, type,
                  json.dumps(data) if data is not None else None))


def sync_checkpoints(store: Store, job_id: str, stage: str, found: list) -> None:
    """Make the job's checkpoint list the stage's finished checkpoints on disk (`progress.Checkpoint`s): a new
    one is added with a `Checkpoint created` event; one the trainer rotated away (it keeps the last
    `save_total_limit`) leaves the list, which only names checkpoints that exist. The events keep the history."""
    with store.transaction() as conn:
        known = {row[0] for row in conn.execute("SELECT step FROM fine_tuning_checkpoints WHERE job_id = ? AND "
                                                "stage = ?", (job_id, stage))}
        steps = {ckpt.step for ckpt in found}
        for step in known - steps:
            conn.execute("DELETE FROM fine_tuning_checkpoints WHERE job_id = ? AND stage = ? AND step = ?",
                         (job_id, stage, step))
        for ckpt in found:
            if ckpt.step in known:
                continue
            conn.execute("INSERT INTO fine_tuning_checkpoints (id, job_id, stage, step, path, metrics, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (f"ftckpt-{secrets.token_hex(12)}", job_id, stage, ckpt.step,
                                                          str(ckpt.path), json.dumps(ckpt.metrics), time.time()))
            _event(conn, job_id, f"Checkpoint created at step {ckpt.step}", type="metrics",
                   data={"step": ckpt.step, **ckpt.metrics})


def list_object(data: list[dict]) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


# ---------------------------------------------------------------- API objects

def job_object(job: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `fine_tuning.job` object (plus Together's `training_type` and `registered_model`: where the result
    lives in MLflow)."""
    spec = json.loads(job["spec"])
    auto = lambda key: spec.get(key) if spec.get(key) is not None else "auto"  # noqa: E731
    hyper = {"batch_size": auto("batch_size"), "learning_rate_multiplier": auto("learning_rate_multiplier"),
             "n_epochs": auto("n_epochs")}
    method_hyper = {**hyper, "beta": auto("beta")} if spec["method"] == "dpo" else hyper
    stamp = lambda key: int(job[key]) if job[key] is not None else None  # noqa: E731
    return {
        "id": job["id"], "object": "fine_tuning.job", "model": job["model"], "created_at": stamp("created_at"),
        "finished_at": stamp("finished_at"),
        "fine_tuned_model": job["fine_tuned_model"] if job["status"] == "succeeded" else None,
        "organization_id": job["owner"], "result_files": [], "status": job["status"],
        "validation_file": job["validation_file"], "training_file": job["training_file"],
        "hyperparameters": hyper, "trained_tokens": job["trained_tokens"],
        "error": json.loads(job["error"]) if job["error"] else None, "seed": job["seed"],
        "estimated_finish": None, "integrations": [], "user_provided_suffix": job["suffix"],
        "metadata": json.loads(job["metadata"]) if job["metadata"] else None,
        "method": {"type": spec["method"], spec["method"]: {"hyperparameters": method_hyper}},
        # Together's: what was trained ("auto": the base recipe's value)
        "training_type": {"type": "Full"} if spec.get("full") else {
            "type": "Lora", "lora_r": auto("lora_r"), "lora_alpha": auto("lora_alpha"),
            "lora_dropout": auto("lora_dropout"), "lora_trainable_modules": auto("target_modules")},
        "registered_model": json.loads(job["registered"]) if job["registered"] else None,
    }


def metrics_rows(store: Store, job_id: str) -> list[dict[str, Any]]:
    """The numbers of each logged training step (its metrics events' data), oldest first, each with
    `object: fine_tuning.job.metrics`; the evaluation's scores are in their own event."""
    rows = store.rows("SELECT data FROM fine_tuning_events WHERE job_id = ? AND type = 'metrics' ORDER BY seq", (job_id,))
    data = [json.loads(row["data"]) for row in rows if row["data"]]
    return [{"object": "fine_tuning.job.metrics", **item} for item in data if "total_steps" in item]  # per-step logs


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.event", "created_at": int(row["created_at"]),
            "level": row["level"], "message": row["message"], "type": row["type"],
            "data": json.loads(row["data"]) if row["data"] else None}


def checkpoint_object(row: dict[str, Any], fine_tuned_model: str) -> dict[str, Any]:
    return {"id": row["id"], "object": "fine_tuning.job.checkpoint", "created_at": int(row["created_at"]),
            "fine_tuning_job_id": row["job_id"], "step_number": row["step"],
            "fine_tuned_model_checkpoint": f"{fine_tuned_model}:ckpt-step-{row['step']}",
            "metrics": {"step": float(row["step"]), **json.loads(row["metrics"])}}
