"""The GPU benchmark, run by bench/gpu.sh: LoRA SFT tokens/s and MFU on Llama-3.1-8B's shape
(bench/gpu_train.py), then the Lathe server vs the raw continuous batching engine at 64 streams
(bench/gpu_serve.py). Prints ONE JSON summary on stdout (progress goes to stderr) and writes it
to --out. Each part runs in its own process, so the GPU is empty when the next one starts; a part
that fails or overruns is recorded and the other still runs.

    bench/gpu.sh                          # on one H100: < 8 min, no network
    bench/gpu.sh --tiny                   # CPU dry run of every code path (~1 min)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from bench.common import PYTHON, REPO, RESULTS_DIR, goal, log, machine, thread_env

SERVE_GOAL = 0.95


def versions() -> dict:
    found = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "fastapi", "uvicorn", "pydantic"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def run_train(args, work: Path, timeout: float) -> dict:
    out = work / "train.json"
    cmd = [PYTHON, "-m", "bench.gpu_train", "--out", str(out), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps)] + ["--tiny"] * args.tiny
    try:
        done = subprocess.run(cmd, cwd=REPO, env=thread_env(None), stdout=sys.stderr, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    if out.exists():
        return json.loads(out.read_text())
    return {"ok": False, "error": f"bench.gpu_train exited with status {done.returncode}"}


def run_serve(args, work: Path, timeout: float) -> dict:
    from bench import gpu_serve

    argv = ["--out", str(work / "serve.json"), "--phase-timeout", str(max(30.0, timeout / 2))] + ["--tiny"] * args.tiny
    for flag, value in (("--concurrency", args.concurrency), ("--num-prompts", args.num_prompts),
                        ("--max-tokens", args.max_tokens)):
        if value is not None:
            argv += [flag, str(value)]
    try:
        stdout, sys.stdout = sys.stdout, sys.stderr  # keep stdout for the one summary
        try:
            gpu_serve.main(argv)
        finally:
            sys.stdout = stdout
        return {"ok": True, **json.loads((work / "serve.json").read_text())}
    except Exception as exc:  # recorded in the summary; the training result still stands
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU benchmark: LoRA SFT MFU + Lathe server vs raw engine.")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run of the same code paths with tiny shapes")
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole run (both parts)")
    parser.add_argument("--train-budget", type=float, default=200)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, help="streams (default 64; tiny: 4)")
    parser.add_argument("--num-prompts", type=int, help="requests (default 192; tiny: 12)")
    parser.add_argument("--max-tokens", type=int, help="tokens per request (default 128; tiny: 8)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--out", type=Path, help="default bench/results/gpu.json (--tiny: a temporary file)")
    args = parser.parse_args(argv)
    if args.out is None:  # a dry run's numbers mean nothing: keep them out of bench/results
        args.out = Path(tempfile.gettempdir()) / "lathe-gpu-tiny.json" if args.tiny else RESULTS_DIR / "gpu.json"
    started = time.perf_counter()
    summary: dict = {"bench": "gpu", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "command": "bench/gpu.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "machine": machine(), "versions": versions()}
    try:
        summary["machine"]["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        summary["machine"]["gpu"] = None
    goals = []
    with tempfile.TemporaryDirectory(prefix="lathe-gpu-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_train:
            log("part 1: LoRA SFT, Llama-3.1-8B shape" + (" (tiny)" if args.tiny else ""))
            summary["train"] = run_train(args, work, min(args.train_budget, args.budget))
            train = summary["train"]
            goals.append(goal("LoRA SFT MFU (llm-foundry formula)", train.get("mfu_llm_foundry"), 0.45,
                              unit="", file=sys.stderr))
        if not args.skip_serve:
            remaining = args.budget - (time.perf_counter() - started)
            log(f"part 2: Lathe server vs raw engine, {args.concurrency} streams ({remaining:.0f} s left)")
            summary["serving"] = run_serve(args, work, remaining - 10)
            streams = summary["serving"].get("settings", {}).get("concurrency") or args.concurrency or (4 if args.tiny else 64)
            goals.append(goal(f"Lathe server vs raw engine output tok/s, {streams} streams",
                              summary["serving"].get("ratio"), SERVE_GOAL, file=sys.stderr))
    summary["goals"] = goals
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log(f"results: {args.out}")
    print(json.dumps(summary, default=str), flush=True)
    return 0 if all(g["met"] is not None for g in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
