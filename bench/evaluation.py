"""Evaluation bench: Lathe's lm-eval harness (`eval.harness.run_suites`, hf backend, offline mirror)
on the four benchmarks — MMLU, HellaSwag (log-likelihood), GSM8K, HumanEval (generation) — batched
vs batch size 1, same items, same model, in one run. Goal: batched ≥ 4× faster overall.

    python -m bench.evaluation             # ~3 min on 2 cores
    python -m bench.evaluation --quick     # ~1.5 min
    python -m bench.evaluation --batch-size 16 --limit 16
    python -m bench.evaluation --profile   # + prompt pass vs decoding, batch 1 vs batched, outside lm-eval

The scores of both runs are compared too: batching must not change them (log-likelihood scores
are identical up to float noise; greedy generations may differ where padding changes a near tie).
Writes bench/results/evaluation.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import SHARED_DATA, goal, log, model_arg, run_options, write_result

GOAL = 4.0
MMLU_SUBJECTS = ["high_school_geography", "marketing"]


def suites(limit: int, max_gen_toks: int):
    """Small limits and few shots (as recipes/default.yaml), so that batch size 1 fits the budget too."""
    from recipes.schema import SuiteConfig

    return [SuiteConfig(name="mmlu", subjects=MMLU_SUBJECTS, limit=max(1, limit // 2), num_fewshot=1),
            SuiteConfig(name="hellaswag", limit=limit, num_fewshot=0),
            SuiteConfig(name="gsm8k", limit=limit, num_fewshot=1, max_gen_toks=max_gen_toks),
            SuiteConfig(name="humaneval", limit=limit, max_gen_toks=max_gen_toks)]


def evaluate(model_dir: Path, batch_size: int, args, out: Path) -> dict:
    from eval.harness import run_suites

    start, cpu = time.perf_counter(), time.process_time()
    results = run_suites(model_dir, suites(args.limit, args.max_gen_toks), mirror_dir=SHARED_DATA, skills_file=None,
                         out_dir=out, batch_size=batch_size, label=f"bs{batch_size}", cache_dir=None)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    per_suite = {}
    for name, entry in results["suites"].items():
        if entry["status"] != "ok":
            raise SystemExit(f"bench: suite {name} did not run: {entry.get('reason')}")
        per_suite[name] = {"seconds": entry["duration_s"], "primary": entry["primary"],
                           "score": entry["metrics"][entry["primary"]],
                           "items": entry["settings"]["n_samples"]["scored"]}
    return {"batch_size": batch_size, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "suites": per_suite}


def forward_profile(model_dir: Path, batch_size: int, length: int = 256, decode_steps: int = 16) -> dict:
    """Where batching can help on this machine: tokens/s of a prompt pass (what log-likelihood
    scoring is) and of decoding with a KV cache (what generation is), one sequence at a time vs
    `batch_size` at once, same tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(100, model.config.vocab_size, (batch_size, length), generator=torch.Generator().manual_seed(0))

    def run(batch: torch.Tensor) -> tuple[float, float]:
        with torch.inference_mode():
            start = time.perf_counter()
            out = model(input_ids=batch, use_cache=True)
            prefill = time.perf_counter() - start
            cache, token = out.cache, batch[:, -1:]
            start = time.perf_counter()
            for _ in range(decode_steps):
                out = model(input_ids=token, cache=cache, use_cache=True)
                cache = out.cache
            return prefill, time.perf_counter() - start

    run(ids[:1, :32])  # warm-up
    one = [run(ids[i:i + 1]) for i in range(batch_size)]
    batched = run(ids)
    tokens_prefill, tokens_decode = batch_size * length, batch_size * decode_steps
    result = {"sequence_tokens": length, "decode_steps": decode_steps, "batch_size": batch_size,
              "prefill_tokens_per_s": {"bs1": round(tokens_prefill / sum(p for p, _ in one), 1),
                                       "batched": round(tokens_prefill / batched[0], 1)},
              "decode_tokens_per_s": {"bs1": round(tokens_decode / sum(d for _, d in one), 1),
                                      "batched": round(tokens_decode / batched[1], 1)}}
    for kind in ("prefill", "decode"):
        rates = result[f"{kind}_tokens_per_s"]
        rates["speedup"] = round(rates["batched"] / rates["bs1"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lm-eval on MMLU, HellaSwag, GSM8K, HumanEval: batched vs batch size 1.")
    parser.add_argument("--model", help="HF model dir (default: SmolLM2-135M-Instruct, built once)")
    parser.add_argument("--batch-size", type=int, default=8, help="the batched run's batch size (the recipe default)")
    parser.add_argument("--limit", type=int, default=8, help="items per benchmark (MMLU: half of it per subject)")
    parser.add_argument("--max-gen-toks", type=int, default=64, help="generation cap for GSM8K and HumanEval")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    run_options(parser, "evaluation", profile="also time a prompt pass and decoding, batch 1 vs batched, outside "
                "lm-eval: shows where batching can help (+20 s)", quick="4 items per benchmark, 32 generated tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.max_gen_toks = 4, 32
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    model_dir = model_arg(args.model)
    started = time.perf_counter()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="lathe-bench-eval-") as tmp:
        for batch_size in (1, args.batch_size):
            log(f"evaluation bench: batch size {batch_size}")
            runs[f"bs{batch_size}"] = evaluate(model_dir, batch_size, args, Path(tmp) / f"bs{batch_size}")
    one, batched = runs["bs1"], runs[f"bs{args.batch_size}"]
    speedups = {name: round(one["suites"][name]["seconds"] / batched["suites"][name]["seconds"], 3)
                for name in one["suites"]}
    total_one = sum(s["seconds"] for s in one["suites"].values())
    total_batched = sum(s["seconds"] for s in batched["suites"].values())
    overall = round(total_one / total_batched, 3)
    cpu_ratio = round(one["cpu_s"] / batched["cpu_s"], 3)
    scores_equal = {name: one["suites"][name]["score"] == batched["suites"][name]["score"] for name in one["suites"]}
    print(f"{'suite':<10} {'bs1 s':>8} {'bs' + str(args.batch_size) + ' s':>8} {'speed-up':>9}  score bs1 / batched")
    for name in one["suites"]:
        a, b = one["suites"][name], batched["suites"][name]
        print(f"{name:<10} {a['seconds']:>8.1f} {b['seconds']:>8.1f} {speedups[name]:>8.2f}x  "
              f"{a['score']:.3f} / {b['score']:.3f} ({a['primary']}, {a['items']} items)")
    print(f"{'all':<10} {total_one:>8.1f} {total_batched:>8.1f} {overall:>8.2f}x  (per CPU second: {cpu_ratio:.2f}x)",
          flush=True)
    profile = None
    if args.profile:
        log("profile: prompt pass and decoding, batch 1 vs batched")
        profile = forward_profile(model_dir, args.batch_size)
        print(f"profile: prompt pass {profile['prefill_tokens_per_s']['speedup']}x faster batched, "
              f"decoding {profile['decode_tokens_per_s']['speedup']}x ({profile['prefill_tokens_per_s']}, "
              f"{profile['decode_tokens_per_s']} tokens/s)", flush=True)
    goals = [goal(f"lm-eval batch {args.batch_size} vs batch 1 (four benchmarks, wall time)", overall, GOAL)]
    write_result("evaluation", {
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "model_dir": str(model_dir),
                     "suites": [s.model_dump() for s in suites(args.limit, args.max_gen_toks)]},
        "runs": runs, "speedup_per_suite": speedups, "speedup_overall": overall, "speedup_cpu_time": cpu_ratio,
        "scores_equal": scores_equal, "profile": profile,
        "goals": goals, "wall_s": round(time.perf_counter() - started, 1)}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
