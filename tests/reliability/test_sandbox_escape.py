"""The HumanEval sandbox against escape attempts: every program below tries to reach outside its
directory (writes, deletes, renames, links), start processes (fork bombs, subprocess and the calls
underneath it, exec, ctypes), use the network, exhaust memory, or kill the evaluator. Each must be
refused (scored as a failure) and leave no trace; a well-behaved program still passes.

Reading files is allowed on purpose: a program may read what the evaluating user can read
(`/etc/passwd` included), but with no network and no writes outside its directory it cannot send it
anywhere. What the sandbox does not claim: resisting a deliberate adversary (run evaluation in a
container for that, eval/README.md)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.sandbox import run_program, run_programs


def attacks(outside: Path, victim: Path, port: int) -> dict[str, str]:
    marker = str(outside / "escaped")
    return {
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "fork bomb via multiprocessing": "import multiprocessing as mp\nwhile True:\n    mp.Process(target=print).start()\n",
        "pty.fork": f"import pty\nif pty.fork() == 0:\n    open({marker!r}, 'w').write('x')\n",
        "os.system": f"import os\nos.system('touch {marker}')\n",
        "subprocess": f"import subprocess\nsubprocess.run(['touch', {marker!r}])\n",
        "_posixsubprocess.fork_exec": (
            "import _posixsubprocess, os\nr, w = os.pipe()\n"
            f"_posixsubprocess.fork_exec(['/bin/sh', '-c', 'touch {marker}'], [b'/bin/sh'], True, (), None, None,"
            " -1, -1, -1, -1, -1, -1, r, w, True, False, 0, None, None, None, -1, None, False)\n"
            "import time\ntime.sleep(1)\n"),
        "os.execv": "import os\nos.execv('/bin/sh', ['sh', '-c', 'true'])\n",
        "os.posix_spawn": "import os\nos.posix_spawn('/bin/true', ['true'], {})\n",
        "ctypes libc.system": f"import ctypes\nctypes.CDLL(None).system(b'touch {marker}')\n",
        "thread bomb": "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()\n",
        "memory bomb": "block = bytearray(8 * 2**30)\n",
        "memory creep": "hoard = []\nwhile True:\n    hoard.append(' ' * 10**6)\n",
        "write outside": f"open({marker!r}, 'w').write('x')\n",
        "write outside via os.open": f"import os\nos.write(os.open({marker!r}, os.O_WRONLY | os.O_CREAT), b'x')\n",
        "write outside via pathlib": f"import pathlib\npathlib.Path({marker!r}).write_text('x')\n",
        "write outside via chdir": f"import os\nos.chdir({str(outside)!r})\nopen('escaped', 'w').write('x')\n",
        "write through a symlink": f"import os\nos.symlink({str(outside)!r}, 'link')\nopen('link/escaped', 'w').write('x')\n",
        "rename into outside": f"open('mine', 'w').write('x')\nimport os\nos.rename('mine', {marker!r})\n",
        "delete outside": f"import os\nos.remove({str(victim)!r})\n",
        "rmtree outside": f"import shutil\nshutil.rmtree({str(outside)!r})\n",
        "write /proc": "open('/proc/self/mem', 'r+b')\n",
        "temp file in /tmp": "import tempfile\ntempfile.NamedTemporaryFile(dir='/tmp', delete=False).write(b'x')\n",
        "fill the disk": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 10**6)\n",
        "flood stdout": "import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)\n",
        "tcp connect": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n",
        "raw _socket": "import _socket\n_socket.socket()\n",
        "udp sendto": f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))\n",
        "dns lookup": "import socket\nsocket.getaddrinfo('example.com', 80)\n",
        "raise the memory limit": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
        "infinite loop": "while True:\n    pass\n",
        "exit 0 half-way": "import os\nos._exit(0)\nassert False\n",
    }


def test_escape_attempts_are_refused_and_leave_no_trace(tmp_path, tally):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    programs = attacks(outside, victim, listener.getsockname()[1])
    programs["well-behaved, reads /etc/passwd and writes its own files"] = (
        "text = open('/etc/passwd').read()\nopen('copy.txt', 'w').write(text)\n"
        "import os\nos.remove('copy.txt')\nassert text\n")
    tally.fault(len(programs) - 1)

    started = time.monotonic()
    results = dict(zip(programs, run_programs(list(programs.values()), workers=2, timeout_s=2.0)))
    elapsed = time.monotonic() - started

    passed = {name for name, result in results.items() if result.passed}
    assert passed == {"well-behaved, reads /etc/passwd and writes its own files"}, \
        {name: results[name].status for name in passed}
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"] and victim.read_text() == "keep me"
    listener.settimeout(0.2)
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing reached the listening socket
    listener.close()
    refused = [name for name, r in results.items() if "PermissionError" in r.status]
    assert {"fork bomb", "_posixsubprocess.fork_exec", "tcp connect", "write outside", "delete outside",
            "os.system", "ctypes libc.system"} <= set(refused), \
        {name: results[name].status for name in results}
    assert any(word in results["memory bomb"].status for word in ("MemoryError", "killed"))
    assert results["infinite loop"].status.startswith("timed out")
    assert elapsed < 60


def test_a_program_cannot_kill_the_evaluator(tally):
    """os.kill is refused by the audit hook; os.pidfd_open / signal.pidfd_send_signal raise no audit
    event, so the sandbox removes them. The evaluator here is a throw-away process, so a regression
    kills it and not the test run."""
    tally.fault(3)
    for program in ("import os\nos.kill(os.getppid(), 9)\n",
                    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)\n",
                    "import os, signal\nfd = os.open(f'/proc/{os.getppid()}', os.O_RDONLY)\n"
                    "signal.pidfd_send_signal(fd, signal.SIGKILL)\n"):
        evaluator = (f"from eval.sandbox import run_program\nresult = run_program({program!r})\n"
                     "print('evaluator alive; program passed:', result.passed)\n")
        done = subprocess.run([sys.executable, "-c", evaluator], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0 and "evaluator alive; program passed: False" in done.stdout, done


def test_status_names_the_refusal():
    result = run_program("import subprocess\n")
    assert not result.passed and result.status == ("failed: PermissionError: sandbox: importing _posixsubprocess "
                                                   "is not allowed")
