"""What every bench shares: the model under test, the real data, the machine description, the
statistics, the goal lines and the JSON results file.

Nothing here imports torch or transformers at module level: the serving client and the start-up
bench must stay light (they share the 2 cores with what they measure).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
SHARED_DATA = Path(os.environ.get("LATHE_SHARED_DATA", REPO.parent / "shared" / "data"))
ALPACA = "sft/alpaca_en_demo.json"  # 999 real instruction/answer pairs of mixed lengths (PROVENANCE.md)
PYTHON = sys.executable
_LOAD_AT_START = os.getloadavg()  # contention when the bench began (machine() adds the load at the end)


# --- the model and the data -------------------------------------------------------------------

def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, built once by Lathe's own `base` stage
    (the embedded PyPI wheel, no hub) into ~/.cache/lathe/bench and reused afterwards."""
    root = Path(os.environ.get("LATHE_CACHE", Path.home() / ".cache" / "lathe")) / "bench" / "artifacts"
    manifest = root / "base" / "manifest.json"
    if manifest.exists():
        model_dir = Path(json.loads(manifest.read_text())["outputs"]["model_dir"])
        if any(model_dir.glob("*.safetensors")):
            return model_dir
    from pipelines.base import run_base
    from recipes.schema import Recipe

    log(f"building the default model into {root} (once, ~30 s)")
    return run_base(Recipe(), root)


def run_options(parser, name: str, profile: str, quick: str) -> None:
    """The options every bench shares: --profile (what the extra timing shows), --quick (what it shrinks), --out."""
    parser.add_argument("--profile", action="store_true", help=profile)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", help=f"results file (default bench/results/{name}.json)")


def model_arg(value: str | None) -> Path:
    return Path(value).resolve() if value else default_model_dir()


def alpaca_messages(limit: int | None = None, seed: int = 0) -> list[list[dict]]:
    """The real, variable-length SFT set as chat conversations [user, assistant], shuffled with `seed`."""
    import random

    path = SHARED_DATA / ALPACA
    if not path.exists():
        sys.exit(f"bench: {path} not found; set LATHE_SHARED_DATA to the shared data directory")
    rows = json.loads(path.read_text())
    random.Random(seed).shuffle(rows)
    conversations = []
    for row in rows[:limit]:
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        conversations.append([{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}])
    return conversations


# --- statistics (computed here, not taken from the server) --------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), so numbers match vLLM's bench."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float], scale: float = 1.0, digits: int = 2) -> dict:
    """mean, p50, p90, p99 (and n) of `values`, multiplied by `scale` (1000: seconds → ms)."""
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None}
    out = {"n": len(values), "mean": round(sum(values) / len(values) * scale, digits)}
    for q in (50, 90, 99):
        out[f"p{q}"] = round(percentile(values, q) * scale, digits)
    return out


def median(values: Iterable[float]) -> float:
    return percentile(list(values), 50)


# --- goals -------------------------------------------------------------------------------------

def goal(name: str, value: float | None, target: float, higher_is_better: bool = True, unit: str = "x",
         file=None) -> dict:
    """One goal line, printed (stdout unless `file`) and returned for the JSON file."""
    if value is None:
        met = None
    else:
        met = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    status = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[met]
    shown = "n/a" if value is None else f"{value:.3g}{unit}"
    print(f"GOAL {name}: {shown} (goal {sign} {target:g}{unit}) {status}", file=file or sys.stdout, flush=True)
    return {"name": name, "value": value, "goal": f"{sign} {target:g}{unit}", "met": met}


# --- machine, environment and results ------------------------------------------------------------

def machine() -> dict:
    """What the numbers came from: CPU, cores this process may use, memory, load, versions, commit."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "lm_eval", "fastapi", "uvicorn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"host": socket.gethostname(), "cpu": cpu, "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": mem_gib, "load_average_start": _LOAD_AT_START, "load_average_end": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "git": _git()}


def _git() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def write_result(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """bench/results/<name>.json (or `out`), written atomically, with the command and the machine."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"bench": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(shlex.quote(a) for a in [Path(PYTHON).name, "-m", f"bench.{name}", *sys.argv[1:]]),
                "machine": machine(), "commit": START_COMMIT, **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    print(f"results: {path}", flush=True)
    return path


def _commit() -> str:
    """The commit measured, marked `+changes` when the working tree differs from it."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def copy_project(dest: Path) -> None:
    """The working tree (tracked and untracked, not ignored files) as a fresh one-commit git project."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], cwd=dest, check=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment for a child process: offline, unbuffered, the repo importable and, with `threads`,
    limited to that many intra-op threads (OpenMP and MKL read these at start-up)."""
    env = dict(os.environ)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


START_COMMIT = _commit()
"""The commit a bench measures: taken when it starts (a long bench's copies are made then), not when it writes."""
