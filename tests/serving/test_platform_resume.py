"""kill -9 a server in the middle of a batch, start it again: the batch resumes, and every custom_id has
exactly one result (no line lost, none run or billed twice)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import openai

from tests.conftest import ROOT
from tests.serving.conftest import MODEL_NAME
from tests.servers import free_port, wait_ready

SERVER = """
import sys
from serving.app import run
from serving.settings import ServerSettings
run(ServerSettings(model_dir=sys.argv[1], model_name=sys.argv[2], port=int(sys.argv[3]), log_level="warning",
                   platform={"db_path": sys.argv[4], "batch": {"lease_s": 1, "poll_interval_s": 0.2}}))
"""


def _start(model_dir, db, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(model_dir), MODEL_NAME, str(port), str(db)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    assert wait_ready(base, alive=lambda: proc.poll() is None), "server did not start"
    return proc, base


def _committed(db, batch_id) -> dict[str, str]:
    """custom_id -> result id of the lines whose result is committed (read from outside the server)."""
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT custom_id, id FROM batch_results WHERE batch_id = ?", (batch_id,)).fetchall())


def test_kill_9_mid_batch_then_restart(tiny_model_dir, tmp_path):
    db, log = tmp_path / "platform.db", open(tmp_path / "server.log", "wb")
    lines = [{"custom_id": f"line-{i}", "body": {"model": MODEL_NAME, "messages": [{"role": "user", "content": str(i)}],
                                                 "max_tokens": 128, "min_tokens": 128}} for i in range(30)]
    server, base = _start(tiny_model_dir, db, log)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        upload = client.files.create(file=("in.jsonl", "\n".join(json.dumps(x) for x in lines).encode()),
                                     purpose="batch")
        batch_id = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id
        deadline = time.monotonic() + 60
        while len(_committed(db, batch_id)) < 3:
            assert time.monotonic() < deadline, "the batch did not start"
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    before = _committed(db, batch_id)
    assert 3 <= len(before) < 30, "kill the server mid-batch"

    server, base = _start(tiny_model_dir, db, log)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 120
        while (batch := client.batches.retrieve(batch_id)).status != "completed":
            assert batch.status in ("in_progress", "finalizing") and time.monotonic() < deadline, batch.status
            time.sleep(0.2)
        output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert batch.request_counts.completed == 30 and batch.error_file_id is None
    assert sorted(r["custom_id"] for r in output) == sorted(x["custom_id"] for x in lines)  # each exactly once
    by_custom_id = {r["custom_id"]: r["id"] for r in output}
    assert all(by_custom_id[c] == result_id for c, result_id in before.items())  # kept, not run again
    with sqlite3.connect(db) as conn:
        billed = conn.execute("SELECT COUNT(*) FROM usage WHERE batch_id = ?", (batch_id,)).fetchone()[0]
    assert billed == 30  # one usage row per line: none billed twice
