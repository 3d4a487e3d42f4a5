"""A batch's output file stays one JSON object per line for every reader: a result that quotes the characters
str.splitlines() and JavaScript take for line ends (a model can generate anything) is written escaped."""

from __future__ import annotations

import json
import time

from accounts.batches import claim, end, get_batch, insert_batch, mark_finalizing, pending_lines, store_result, validated
from accounts.files import file_content
from accounts.store import Store

TEXT = "a\u2028b\u0085c\u2029d é\x1ee"


def test_results_quoting_line_separators_stay_one_line_each(tmp_path):
    store = Store(tmp_path / "platform.db")
    try:
        insert_batch(store, {"id": "batch_1", "owner": "k", "input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                             "completion_window": "24h", "status": "validating", "created_at": time.time(),
                             "expires_at": time.time() + 3600, "metadata": None})
        assert validated(store, "batch_1", [(1, "one", "{}"), (2, "two", "{}")], [])
        assert claim(store, "w", 30.0, "batch_1") == "batch_1"
        for line in pending_lines(store, "batch_1"):
            body = {"choices": [{"message": {"role": "assistant", "content": f"{line['custom_id']} {TEXT}"}}]}
            assert store_result(store, "batch_1", "w", 30.0, line, 200, body, None)
        mark_finalizing(store, "batch_1")
        assert end(store, get_batch(store, "batch_1"), "w", "completed")
        batch = get_batch(store, "batch_1")
        text = file_content(store, batch["output_file_id"], "k").decode("utf-8")
        lines = [json.loads(line) for line in text.splitlines()]  # how many clients read a JSONL file
        assert [r["custom_id"] for r in lines] == ["one", "two"]
        assert lines[1]["response"]["body"]["choices"][0]["message"]["content"] == f"two {TEXT}"  # nothing lost
        assert "é" in text  # other text stays as written (UTF-8), only the line ends are escaped
    finally:
        store.close()
