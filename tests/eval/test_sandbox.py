"""The sandbox that scores HumanEval: canonical solutions pass, wrong ones fail, and programs that
loop, allocate without bound, write outside their directory or open sockets are stopped and scored
as failures while the others carry on."""

from __future__ import annotations

import gzip
import json
import socket
import time

import pytest

from eval.sandbox import run_program, run_programs
from eval.suites import HUMANEVAL_FILE
from eval.tasks.humaneval_utils import build_predictions, pass_at_1


@pytest.fixture(scope="module")
def problems(shared_data) -> list[dict]:
    with gzip.open(shared_data / HUMANEVAL_FILE, "rt") as fh:
        return [json.loads(line) for line in fh]


def test_every_canonical_solution_passes(problems):
    programs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"
                for p in problems]
    results = run_programs(programs, workers=2)
    failed = {p["task_id"]: r.status for p, r in zip(problems, results) if not r.passed}
    assert len(problems) == 164 and failed == {}


def test_the_task_metric_scores_a_canonical_solution_1_and_a_wrong_one_0(problems):
    doc = problems[0]  # has_close_elements
    reference = doc["test"] + "\n" + f"check({doc['entry_point']})"
    right = build_predictions([[doc["canonical_solution"]]], [doc])
    wrong = build_predictions([["    return False\n"]], [doc])
    assert pass_at_1([reference], right) == 1.0
    assert pass_at_1([reference], wrong) == 0.0


def test_misbehaving_programs_are_stopped_and_the_rest_carry_on(tmp_path):
    outside = tmp_path / "escaped.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    programs = {
        "good": "def f(x):\n    return x + 1\nassert f(1) == 2\n",
        "infinite loop": "while True:\n    pass\n",
        "write outside": f"open({str(outside)!r}, 'w').write('x')\n",
        "delete outside": f"import os\nos.remove({str(victim)!r})\n",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n",
        "unbounded allocation": "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n",
        "exits early with status 0": "import os\nos._exit(0)\nassert False\n",
        "good, with its own files": ("import os, warnings\nopen('mine.txt', 'w').write('ok')\n"
                                     "os.remove('mine.txt')\nwarnings.warn('allowed')\n"),
    }
    started = time.time()
    results = dict(zip(programs, run_programs(list(programs.values()), workers=2, timeout_s=2.0)))
    elapsed = time.time() - started
    assert {name: r.passed for name, r in results.items()} == {
        name: name.startswith("good") for name in programs}
    assert results["infinite loop"].status.startswith("timed out")
    assert "PermissionError" in results["write outside"].status
    assert "PermissionError" in results["delete outside"].status
    assert "MemoryError" in results["unbounded allocation"].status or "killed" in results["unbounded allocation"].status
    assert not outside.exists() and victim.read_text() == "keep me"
    server.settimeout(0.2)
    with pytest.raises(socket.timeout):
        server.accept()  # the program never reached the listening socket
    server.close()
    assert elapsed < 30


def test_a_failing_program_reports_its_error():
    result = run_program("def f():\n    return 1\nassert f() == 2, 'f is wrong'\n")
    assert not result.passed and result.status == "failed: AssertionError: f is wrong"
