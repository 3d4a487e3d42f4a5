"""The Batch API with the official openai client: files.create -> batches.create -> retrieve -> files.content,
validation failures, limits, cancel, expiry, listing, priority of online traffic, and `lathe batch run`."""

from __future__ import annotations

import json
import time

import httpx2
import openai
import pytest

from pipelines.cli import main as lathe
from tests.serving.conftest import MODEL_NAME, running_server

CHAT = "/v1/chat/completions"
FINAL = ("completed", "failed", "expired", "cancelled")


def chat_body(text: str, tokens: int = 6, **extra) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": text}], "max_tokens": tokens,
            "temperature": 0, **extra}


def slow_lines(n: int) -> list[dict]:
    """Lines that each generate 128 tokens (~0.2 s on the tiny model; 30 of them outlast a 1 s window)."""
    return [{"custom_id": f"slow-{i}", "body": chat_body(f"line {i}", 128, min_tokens=128)} for i in range(n)]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("batches") / "platform.db"
    platform = {"db_path": str(db), "batch": {"max_lines": 40, "max_file_bytes": 100_000, "poll_interval_s": 0.2}}
    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME, platform=platform) as base:
        yield base


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def submit(client, lines: list, endpoint=CHAT, window="24h", purpose="batch"):
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    upload = client.files.create(file=("input.jsonl", text.encode()), purpose=purpose)
    return client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window=window)


def wait_final(client, batch_id: str, timeout: float = 60.0, seen: set | None = None):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if seen is not None:
            seen.add(batch.status)
        if batch.status in FINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)


def jsonl(client, file_id: str | None) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()] if file_id else []


def test_mixed_batch_through_the_openai_client(client):
    good = [{"custom_id": f"ok-{i}", "method": "POST", "url": CHAT, "body": chat_body(f"Hello {i}")} for i in range(3)]
    together_form = {"custom_id": "together", "body": chat_body("Hi there")}
    bad = [{"custom_id": "no-model", "body": {**chat_body("x"), "model": "nope"}},
           {"custom_id": "hot", "body": chat_body("x", temperature=5)},
           {"custom_id": "stream", "body": chat_body("x", stream=True)}]
    created = submit(client, [*good, together_form, *bad])
    assert created.status == "validating" and created.endpoint == CHAT
    seen: set[str] = set()
    batch = wait_final(client, created.id, seen=seen)
    assert batch.status == "completed" and seen <= {"validating", "in_progress", "finalizing", "completed"}
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 4, 3)
    assert batch.progress == 100.0 and batch.in_progress_at and batch.finalizing_at and batch.completed_at

    output, errors = jsonl(client, batch.output_file_id), jsonl(client, batch.error_file_id)
    assert [r["custom_id"] for r in output] == ["ok-0", "ok-1", "ok-2", "together"]  # input order
    assert {r["custom_id"]: r["response"]["status_code"] for r in errors} == {"no-model": 404, "hot": 400, "stream": 400}
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert errors[1]["response"]["body"]["error"]["param"] == "temperature"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"

    # The same serving code as online: a greedy line answers exactly what the endpoint answers.
    online = client.chat.completions.create(**chat_body("Hello 1"))
    line = output[1]["response"]
    assert line["status_code"] == 200 and line["request_id"] == line["body"]["id"]
    assert line["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content
    assert line["body"]["usage"]["prompt_tokens"] == online.usage.prompt_tokens


def test_auth_off_on_loopback_and_anonymous_callers_are_not_throttled(server):
    answer = httpx2.get(f"{server}/v1/models")  # no key: platform.auth 'auto' on 127.0.0.1
    assert answer.status_code == 200 and "x-ratelimit-limit-requests" not in answer.headers


def test_together_purpose_and_completions_endpoint(client):
    lines = [{"custom_id": "a", "body": {"model": MODEL_NAME, "prompt": "Once upon", "max_tokens": 3}}]
    batch = wait_final(client, submit(client, lines, endpoint="/v1/completions", purpose="batch-api").id)
    assert batch.status == "completed"
    assert jsonl(client, batch.output_file_id)[0]["response"]["body"]["object"] == "text_completion"


def test_invalid_input_fails_the_batch_naming_each_line(client):
    lines = [{"custom_id": "a", "body": chat_body("x")}, '{"custom_id": "b", "body": ',
             {"custom_id": "a", "body": chat_body("y")}, {"custom_id": "c", "url": "/v1/embeddings", "method": "POST",
                                                         "body": chat_body("z")}]
    batch = wait_final(client, submit(client, lines).id)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert [(e.line, e.code) for e in batch.errors.data] == [(2, "invalid_json"), (3, "duplicate_custom_id"),
                                                           (4, "invalid_url")]
    assert batch.errors.data[1].message == "Line 3: custom_id 'a' is already used on line 1."


def test_limits_are_clear_errors(client):
    too_many = [{"custom_id": f"{i}", "body": chat_body("x")} for i in range(41)]  # max_lines 40
    batch = wait_final(client, submit(client, too_many).id)
    assert batch.status == "failed" and batch.errors.data[0].code == "too_many_lines"
    with pytest.raises(openai.BadRequestError, match="larger than 100000 bytes"):
        client.files.create(file=("big.jsonl", b"x" * 100_001), purpose="batch")
    upload = client.files.create(file=("in.jsonl", b"{}"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint '/v1/embeddings' is not supported"):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window 'soon'"):
        client.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="soon")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-missing")


def _exactly_once(client, batch, lines) -> tuple[list, list]:
    output, errors = jsonl(client, batch.output_file_id), jsonl(client, batch.error_file_id)
    ids = [r["custom_id"] for r in output + errors]
    assert len(ids) == len(set(ids)) and set(ids) <= {x["custom_id"] for x in lines}
    assert (len(output), len(errors)) == (batch.request_counts.completed, batch.request_counts.failed)
    return output, errors


def test_cancel(client):
    lines = slow_lines(30)
    created = submit(client, lines)
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait_final(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    output, _ = _exactly_once(client, batch, lines)
    assert len(output) < 30
    assert client.batches.cancel(created.id).status == "cancelled"  # cancelling again changes nothing
    done = wait_final(client, submit(client, [{"custom_id": "a", "body": chat_body("x")}]).id)
    with pytest.raises(openai.ConflictError, match="completed and can no longer be cancelled"):
        client.batches.cancel(done.id)


def test_expiry_sends_unfinished_lines_to_the_error_file(client):
    lines = slow_lines(30)
    batch = wait_final(client, submit(client, lines, window="1s").id)
    assert batch.status == "expired" and batch.expired_at and batch.request_counts.total == 30
    output, errors = _exactly_once(client, batch, lines)
    assert len(output) + len(errors) == 30 and len(output) < 30
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)


def test_list_pages_newest_first(client):
    ids = [submit(client, [{"custom_id": "a", "body": chat_body("x", 1)}]).id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert [b.id for b in client.batches.list(limit=2, after=ids[1]).data][0] == ids[0]
    listed = [b.id for b in client.batches.list(limit=2)]  # the client follows the pages
    assert listed[:3] == ids[::-1] and len(listed) == len(set(listed))
    for batch_id in ids:
        wait_final(client, batch_id)


def _in_flight(server) -> float:
    """Admitted generation requests (online ones and the batch worker's line)."""
    metrics = httpx2.get(f"{server}/metrics").text
    return float(next(x for x in metrics.splitlines() if x.startswith("lathe_requests_in_flight ")).split()[1])


def test_online_requests_go_before_batch_lines(client, server):
    created = submit(client, slow_lines(20))
    deadline = time.monotonic() + 30
    while client.batches.retrieve(created.id).request_counts.completed < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stream = iter(client.chat.completions.create(**chat_body("online", 400), extra_body={"min_tokens": 400},
                                                 stream=True))
    next(stream), next(stream)  # generating: the line that was running when it came has finished
    in_flight = [_in_flight(server) for _ in range(5)]
    assert sum(1 for _ in stream) > 0
    # The worker starts no line while an online request is in flight (it would be waiting in the engine).
    assert max(in_flight) == 1.0
    assert wait_final(client, created.id).status == "completed"  # and resumes once online traffic is done


def test_lathe_batch_run_offline(client, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LATHE_SERVE_MAX_N", "1")  # the server's settings, environment layer included, apply offline
    lines = [{"custom_id": "g", "body": chat_body("Hello 1")}, {"custom_id": "b", "body": chat_body("x", temperature=9)},
             {"custom_id": "n", "body": chat_body("Hello 1", n=2)}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines))
    args = ["batch", "run", str(source), str(tmp_path / "out.jsonl"), f"platform.db_path={tmp_path / 'p.db'}",
            "--recipe", "default", "--model", str(tiny_model_dir), "--served-name", MODEL_NAME]
    assert lathe(args) == 0
    output = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in output] == ["g"] and [r["custom_id"] for r in errors] == ["b", "n"]
    assert "server limit max_n" in json.dumps(errors[1])
    online = client.chat.completions.create(**chat_body("Hello 1"))
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content
    assert "1 succeeded" in capsys.readouterr().err

    (tmp_path / "bad.jsonl").write_text('{"custom_id": "a", "body": {}}\nnope\n')
    assert lathe(["batch", "run", str(tmp_path / "bad.jsonl"), str(tmp_path / "o.jsonl"),
                  f"platform.db_path={tmp_path / 'p.db'}", "--recipe", "default", "--model", str(tiny_model_dir)]) == 2
    assert "Line 2: not valid JSON" in capsys.readouterr().err
