"""Serving bench: the Lathe server (continuous batching) under concurrent streaming load vs the same
model answering the same prompts one at a time with plain transformers `generate`, in one run.

    python -m bench.serving              # ~3 min on 2 quiet cores: 32 prompts, 64 tokens, 16 streams
    python -m bench.serving --quick      # ~1.5 min: 16 prompts, 32 tokens
    python -m bench.serving --profile    # + the engine alone, greedy and with Lathe's set-up (+1-2 min)
    python -m bench.serving --request-rate 2 --concurrency 16   # Poisson arrivals, 2 req/s

Phases, back to back: (1) baseline, in its own process; (2) with --profile, the same continuous
batching engine with no server around it (bench/raw_engine.py); (3) the server is started, warmed
up, then answers a few prompts one at a time (the single-request TTFT) and (4) all prompts with
`--concurrency` streams in flight. Goals (on SmolLM2-135M, 2 cores, 16 streams): output tokens/s
≥ 8× the baseline; TTFT p50 under load ≤ 3× the single-request TTFT. Rates per CPU second are
printed too: on a shared machine they show the work done, whatever other programs took.
Writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, REPO, alpaca_messages, goal, log, model_arg, summary, thread_env, write_result
from bench.server_process import start_server
from bench.serving_client import RequestResult, format_metrics, metrics, run_load

THROUGHPUT_GOAL = 8.0
TTFT_GOAL = 3.0


def build_requests(n: int, max_tokens: int, seed: int) -> list[dict]:
    """Real instructions of mixed lengths (34 to 200 prompt tokens with the chat template)."""
    return [{"messages": [conv[0]], "max_tokens": max_tokens} for conv in alpaca_messages(n, seed)]


def run_baseline(model_dir: Path, requests: list[dict], threads: int, work: Path) -> dict:
    requests_file, out_file = work / "requests.json", work / "baseline.json"
    requests_file.write_text(json.dumps(requests))
    subprocess.run([PYTHON, "-m", "bench.serving_baseline", "--model", str(model_dir), "--requests",
                    str(requests_file), "--threads", str(threads), "--out", str(out_file)],
                   cwd=REPO, env=thread_env(threads), check=True)
    raw = json.loads(out_file.read_text())
    results = [RequestResult(**r) for r in raw["results"]]
    m = metrics(results, raw["duration_s"])
    m["cpu_s"] = raw["cpu_s"]
    m["output_tokens_per_cpu_s"] = round(m["output_tokens"] / raw["cpu_s"], 2)
    return {"metrics": m, "device": raw["device"], "torch_threads": raw["torch_threads"]}


def run_server_phases(model_dir: Path, requests: list[dict], args, work: Path) -> dict:
    server = start_server(model_dir, work / "server.log", engine=args.engine, max_batch_size=args.concurrency,
                          max_queue=max(64, len(requests) + args.concurrency), torch_threads=args.server_threads)
    try:
        log(f"server ready in {server.ready_s:.1f} s; warming up")
        # The first requests pay one-off costs (continuous batching's first step, allocator growth):
        # one alone, then a full batch of short ones.
        warm = [{**r, "max_tokens": 4} for r in requests[: args.concurrency]]
        asyncio.run(run_load(server.api, "lathe", warm[:1], concurrency=1))
        asyncio.run(run_load(server.api, "lathe", warm, concurrency=args.concurrency))
        log(f"single-request pass: {args.single} prompts one at a time")
        single, single_s = asyncio.run(run_load(server.api, "lathe", requests[: args.single], concurrency=1))
        log(f"load pass: {len(requests)} prompts, {args.concurrency} streams, rate {args.request_rate}")
        cpu_before = server.cpu_seconds()
        load, load_s = asyncio.run(run_load(server.api, "lathe", requests, concurrency=args.concurrency,
                                            request_rate=args.request_rate, seed=args.seed))
        cpu_after = server.cpu_seconds()
    finally:
        status = server.stop()
    if status not in (0, None):
        log(f"server exited with status {status}; log tail:\n{server.log_tail()}")
    load_metrics = metrics(load, load_s)
    # The first `concurrency` requests arrive together (a burst: each waits for all their prompt
    # passes); the later ones arrive as earlier ones finish (with answers of equal length those end
    # together too, so closed-loop load stays bursty; --request-rate spreads arrivals out).
    load_metrics["ttft_ms_after_first_wave"] = summary([r.ttft for r in load[args.concurrency:] if r.ok], 1000)
    if cpu_before is not None and cpu_after is not None:
        load_metrics["server_cpu_s"] = round(cpu_after - cpu_before, 3)
        load_metrics["output_tokens_per_cpu_s"] = round(load_metrics["output_tokens"] / (cpu_after - cpu_before), 2)
    return {"ready_s": round(server.ready_s, 2), "single": metrics(single, single_s), "load": load_metrics}


def run_raw_engines(model_dir: Path, requests: list[dict], args, work: Path) -> dict:
    """The profile: the same engine with no server around it, greedy and with Lathe's sampling
    set-up (bench/raw_engine.py), same threads as the server."""
    requests_file = work / "requests.json"
    requests_file.write_text(json.dumps(requests))
    # The server's default for `continuous` (serving/engine/__init__.py batched_threads): half the cores.
    threads = args.server_threads or max(1, len(os.sched_getaffinity(0)) // 2)
    out = {}
    for sampling in ("greedy", "lathe"):
        log(f"profile: raw continuous batching engine, {sampling} set-up, {threads} thread(s)")
        result_file = work / f"raw-{sampling}.json"
        subprocess.run([PYTHON, "-m", "bench.raw_engine", "--model", str(model_dir), "--requests", str(requests_file),
                        "--concurrency", str(args.concurrency), "--sampling", sampling, "--threads", str(threads),
                        "--max-len", "2048", "--out", str(result_file)], cwd=REPO, env=thread_env(threads), check=True)
        out[sampling] = json.loads(result_file.read_text())
        print(f"raw engine ({sampling}): {out[sampling]['output_tokens_per_s']:.1f} output tok/s, "
              f"{out[sampling]['output_tokens_per_cpu_s']:.1f} per CPU second", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lathe server (continuous batching) vs one-at-a-time generate.")
    parser.add_argument("--model", help="HF model dir (default: SmolLM2-135M-Instruct, built once)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (greedy)")
    parser.add_argument("--concurrency", type=int, default=16, help="streams in flight at most")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="Poisson arrivals per second (default inf: all at once, capped by --concurrency)")
    parser.add_argument("--single", type=int, default=6, help="prompts answered one at a time for the single-request TTFT")
    parser.add_argument("--engine", default="continuous", choices=["continuous", "transformers"])
    parser.add_argument("--server-threads", type=int, help="server torch threads (default: the server's own choice)")
    parser.add_argument("--baseline-threads", type=int, default=1,
                        help="baseline torch threads (default 1: the fastest for one sequence on this machine)")
    parser.add_argument("--profile", action="store_true",
                        help="also run the engine with no server around it (greedy, and with Lathe's sampling "
                             "set-up): shows where the server's time goes (+1-2 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="16 prompts, 32 tokens, 4 single requests")
    parser.add_argument("--out", help="results file (default bench/results/serving.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_prompts, args.max_tokens, args.single = 16, 32, 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = model_arg(args.model)
    requests = build_requests(args.num_prompts, args.max_tokens, args.seed)

    with tempfile.TemporaryDirectory(prefix="lathe-bench-serving-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        log(f"baseline: {len(requests)} prompts one at a time with transformers generate")
        baseline = run_baseline(model_dir, requests, args.baseline_threads, work)
        print(format_metrics("baseline (generate, one at a time)", baseline["metrics"]), flush=True)
        raw = run_raw_engines(model_dir, requests, args, work) if args.profile else None
        server = run_server_phases(model_dir, requests, args, work)
        print(format_metrics("lathe, one request at a time", server["single"]), flush=True)
        print(format_metrics(f"lathe, {args.concurrency} streams", server["load"]), flush=True)

    steady = server["load"]["ttft_ms_after_first_wave"]
    if steady["n"]:
        print(f"TTFT p50 after the first wave: {steady['p50']:.1f} ms (n={steady['n']})", flush=True)
    base_tps = baseline["metrics"]["output_tokens_per_s"]
    load_tps = server["load"]["output_tokens_per_s"]
    single_ttft = server["single"]["ttft_ms"]["p50"]
    load_ttft = server["load"]["ttft_ms"]["p50"]
    throughput_ratio = round(load_tps / base_tps, 3) if base_tps and load_tps else None
    cpu_ratio = None
    if server["load"].get("output_tokens_per_cpu_s"):
        cpu_ratio = round(server["load"]["output_tokens_per_cpu_s"] / baseline["metrics"]["output_tokens_per_cpu_s"], 3)
        print(f"output tokens per CPU second: server {server['load']['output_tokens_per_cpu_s']:.1f} vs baseline "
              f"{baseline['metrics']['output_tokens_per_cpu_s']:.1f} → {cpu_ratio:.2f}x (wall clock: "
              f"{throughput_ratio:.2f}x)", flush=True)
    ttft_ratio = round(load_ttft / single_ttft, 3) if single_ttft and load_ttft else None
    goals = [goal(f"serving output tok/s, {args.concurrency} streams vs one-at-a-time generate", throughput_ratio,
                  THROUGHPUT_GOAL),
             goal("serving TTFT p50 under load vs single request", ttft_ratio, TTFT_GOAL, higher_is_better=False)]
    write_result("serving", {
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "model_dir": str(model_dir),
                     "request_rate": str(args.request_rate)},
        "baseline": baseline, "lathe": server, "raw_engine": raw,
        "ratios": {"output_tokens_per_s": throughput_ratio, "output_tokens_per_cpu_s": cpu_ratio,
                   "ttft_p50_load_vs_single": ttft_ratio,
                   "ttft_p50_after_first_wave_vs_single": round(steady["p50"] / single_ttft, 3) if steady["n"] else None,
                   "raw_engine_greedy_vs_baseline": round(raw["greedy"]["output_tokens_per_s"] / base_tps, 3)
                   if raw else None,
                   "raw_engine_lathe_setup_vs_greedy": round(raw["lathe"]["output_tokens_per_s"]
                                                             / raw["greedy"]["output_tokens_per_s"], 3) if raw else None,
                   "server_vs_raw_engine_lathe_setup": round(load_tps / raw["lathe"]["output_tokens_per_s"], 3)
                   if raw else None,
                   "raw_engine_lathe_setup_vs_greedy_per_cpu_s": round(
                       raw["lathe"]["output_tokens_per_cpu_s"] / raw["greedy"]["output_tokens_per_cpu_s"], 3)
                   if raw else None},
        "goals": goals, "wall_s": round(time.perf_counter() - started, 1)}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
