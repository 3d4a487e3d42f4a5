"""Malformed batch files. The input check (`serving.batches.parse_input`) takes any bytes and either
accepts every line or rejects the file naming each bad line, never raising; a batch that runs
accounts for every line — each custom_id once, in the output file or the error file — whatever its
custom_ids hold and whichever of its lines fail while running."""

from __future__ import annotations

import io
import json
import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes.schema import BatchConfig
from serving.batches import parse_input

LONG = os.environ.get("LATHE_RELIABILITY") == "long"
CHAT = "/v1/chat/completions"

good_line = st.builds(lambda cid, text: {"custom_id": cid, "body": {"messages": [{"role": "user", "content": text}]}},
                      st.text(min_size=1, max_size=12), st.text(max_size=20))
bad_line = st.sampled_from([b"{", b"[1]", b"null", b'{"custom_id": ""}', b'{"custom_id": 3, "body": {}}',
                            b'{"custom_id": "x", "body": []}', b'{"custom_id": "y", "method": "GET", "body": {}}',
                            b'{"custom_id": "z", "url": "/v1/embeddings", "body": {}}', b"\xff\xfe",
                            b'{"custom_id": "\\ud800", "body": {}}'])
lines = st.lists(st.one_of(good_line.map(lambda d: json.dumps(d).encode()), bad_line, st.binary(max_size=30),
                           st.sampled_from([b"", b"  "])), max_size=30)


@settings(max_examples=400 if LONG else 60, deadline=None, database=None, derandomize=not LONG,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=lines.map(lambda ls: b"\n".join(ls)) | st.binary(max_size=200))
def test_any_input_file_is_accepted_whole_or_refused_line_by_line(tally, content):
    tally.bad_input()
    limits = BatchConfig(max_lines=20)
    accepted, errors = parse_input(content, CHAT, limits)
    if errors:
        assert accepted == []  # a file with a bad line is refused whole, as OpenAI does
        n_lines = content.count(b"\n") + 1
        for error in errors:
            assert error.message and error.code
            assert error.line is None or 1 <= error.line <= n_lines
    else:
        text = content.decode("utf-8")
        assert len(accepted) == sum(1 for raw in text.split("\n") if raw.strip())
        assert len({line.custom_id for line in accepted}) == len(accepted)


def test_every_line_of_a_batch_ends_in_the_output_or_the_error_file(tiny_server, tally):
    """custom_ids with line separators, emoji, quotes and 300 characters; lines that fail while
    running (unknown model, context overflow, invalid values, stream, invalid unicode): each
    custom_id comes back exactly once."""
    import openai

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    good_ids = ["plain", "line\u2028separator", "next\u0085line", "emoji 🦜", 'quote "x"', "x" * 300, "tab\tid"]
    failing = {"unknown model": {**chat, "model": "nope"}, "too long": {**chat, "max_tokens": 10**6},
               "bad value": {**chat, "temperature": 9}, "stream": {**chat, "stream": True},
               "invalid unicode": {**chat, "messages": [{"role": "user", "content": "\ud800"}]},
               "no messages": {"model": "tiny"}}
    rows = [{"custom_id": cid, "method": "POST", "url": CHAT, "body": chat} for cid in good_ids]
    rows += [{"custom_id": cid, "body": body} for cid, body in failing.items()]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    tally.bad_input(len(failing))
    tally.requests(len(rows))

    client = openai.OpenAI(base_url=f"{tiny_server}/v1", api_key="unused", max_retries=0)
    upload = client.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)

    assert batch.status == "completed", batch
    def read(file_id):
        return [json.loads(x) for x in client.files.content(file_id).text.split("\n") if x] if file_id else []
    output, errors = read(batch.output_file_id), read(batch.error_file_id)
    returned = [r["custom_id"] for r in output + errors]
    lost = len(rows) - len(set(returned))
    tally.lost(max(lost, 0))
    assert sorted(returned) == sorted(row["custom_id"] for row in rows)  # each exactly once
    assert {r["custom_id"] for r in output} == set(good_ids)
    assert {r["custom_id"]: r["response"]["status_code"] for r in errors} == {
        "unknown model": 404, "too long": 400, "bad value": 400, "stream": 400, "invalid unicode": 400,
        "no messages": 400}
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == \
        (len(rows), len(good_ids), len(failing))


def test_a_custom_id_with_invalid_unicode_fails_validation_not_the_worker(tiny_server, tally):
    """`"\\ud800"` is valid JSON but no text: the file must be refused naming the line, not leave the
    batch in `validating` forever (SQLite cannot store the id, and the worker retried for ever)."""
    import openai

    row = {"custom_id": "\ud800", "body": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}}
    tally.bad_input()
    client = openai.OpenAI(base_url=f"{tiny_server}/v1", api_key="unused", max_retries=0)
    upload = client.files.create(file=("batch.jsonl", io.BytesIO((json.dumps(row) + "\n").encode())), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 15
    while batch.status in ("validating", "in_progress", "finalizing") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    tally.lost(batch.status == "validating")
    assert batch.status == "failed", batch
    assert batch.errors.data[0].line == 1
