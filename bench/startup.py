"""Start-up bench: how long `lathe --help` takes (goal ≤ 1.5 s: heavy imports are deferred), and
`lathe serve`'s time to listening (GET /health 200), to ready (GET /ready 200: model loaded) and to
the first streamed token of a first request.

    python -m bench.startup            # ~1 min
    python -m bench.startup --quick    # ~30 s

`lathe serve` runs in a temporary working directory (its MLflow store is created there) with
`--recipe default --model <model dir>`. The slowest imports of `lathe --help` are listed from
`python -X importtime`, so a regression names its cause. Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, REPO, free_port, goal, log, median, model_arg, thread_env, write_result
from bench.serving_client import run_load, wait_ready

HELP_GOAL_S = 1.5


def lathe_command() -> list[str]:
    """The installed `lathe` entry point next to this interpreter, else the module."""
    script = Path(PYTHON).parent / "lathe"
    return [str(script)] if script.exists() else [PYTHON, "-m", "pipelines.cli"]


def time_help(runs: int) -> dict:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(lathe_command() + ["--help"], cwd=REPO, env=thread_env(None), check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return {"runs": runs, "seconds": [round(t, 3) for t in times], "median_s": round(median(times), 3),
            "slowest_imports": slowest_imports()}


def slowest_imports(top: int = 8) -> list[dict]:
    """`python -X importtime` of the CLI module: the top-level imports by cumulative import time."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-c", "import pipelines.cli"], cwd=REPO, env=thread_env(None),
                          capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if cumulative.strip().isdigit() and not name[1:].startswith(" "):  # nesting shows as indentation
            rows.append({"module": name.strip(), "cumulative_ms": int(cumulative) / 1000})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def time_serve(model_dir: Path, work: Path) -> dict:
    port = free_port()
    cmd = lathe_command() + ["serve", "--recipe", "default", "--model", str(model_dir), "--port", str(port)]
    log_path = work / f"serve-{port}.log"
    start = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(cmd, cwd=work, env=thread_env(None), stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        listening = asyncio.run(_wait_health(base, process))
        ready = asyncio.run(wait_ready(base, process, timeout=600)) + listening
        request = [{"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}]
        sent = time.perf_counter() - start
        results, _ = asyncio.run(run_load(base + "/v1", Path(model_dir).name, request, concurrency=1))
        first = results[0]
        if not first.ok:
            raise RuntimeError(f"first request failed: {first.error}")
    except Exception:
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    return {"listening_s": round(listening, 3), "ready_s": round(ready, 3),
            "first_token_s": round(sent + first.ttft, 3), "first_request_ttft_s": round(first.ttft, 3)}


async def _wait_health(base: str, process, timeout: float = 120) -> float:
    return await wait_ready(base, process, timeout, path="/health", poll_s=0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="`lathe --help` time and `lathe serve` time-to-ready.")
    parser.add_argument("--model", help="HF model dir (default: SmolLM2-135M-Instruct, built once)")
    parser.add_argument("--help-runs", type=int, default=10)
    parser.add_argument("--serve-runs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="5 --help runs, 1 serve run")
    parser.add_argument("--out", help="results file (default bench/results/startup.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.help_runs, args.serve_runs = 5, 1
    model_dir = model_arg(args.model)
    started = time.perf_counter()
    log(f"`lathe --help` x{args.help_runs}")
    help_result = time_help(args.help_runs)
    print(f"lathe --help: median {help_result['median_s']:.3f} s over {args.help_runs} runs "
          f"(slowest import: {help_result['slowest_imports'][0]['module']} "
          f"{help_result['slowest_imports'][0]['cumulative_ms']:.0f} ms)", flush=True)
    serve_runs = []
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-startup-"))
    try:
        for i in range(args.serve_runs):
            log(f"`lathe serve` run {i + 1}/{args.serve_runs}")
            serve_runs.append(time_serve(model_dir, work))
            r = serve_runs[-1]
            print(f"lathe serve: listening {r['listening_s']:.2f} s, ready {r['ready_s']:.2f} s, "
                  f"first token {r['first_token_s']:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    serve = {key: round(median(r[key] for r in serve_runs), 3) for key in serve_runs[0]} if serve_runs else {}
    goals = [goal("`lathe --help` wall time (median)", help_result["median_s"], HELP_GOAL_S, higher_is_better=False,
                  unit=" s")]
    write_result("startup", {"settings": {**{k: v for k, v in vars(args).items() if k != "out"},
                                          "model_dir": str(model_dir), "command": lathe_command()},
                             "help": help_result, "serve": {"median": serve, "runs": serve_runs},
                             "goals": goals, "wall_s": round(time.perf_counter() - started, 1)}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
