"""transformers' continuous batching engine driven directly, in-process, with no server around it:
the yardstick for what the Lathe server adds (bench/gpu_serve.py) and, on CPU, the profile of where
the serving bench's time goes (bench/serving.py --profile).

    python -m bench.raw_engine --model DIR --requests requests.json --concurrency 16 --sampling greedy --out r.json

`--sampling greedy` is the engine's plain greedy set-up, which Lathe's `continuous` engine gives
temperature-0 requests (its greedy manager); `--sampling lathe` is the set-up of Lathe's sampling
manager (temperature / top-k / top-p processors per request) with the same greedy requests sent as
top_k=1, so the difference between the two is the price of per-request sampling options, which a
single shared manager made greedy traffic pay; the difference between `greedy` and the server is the
price of HTTP, streaming and the rest of the server.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def cb_config(device: str, concurrency: int, max_len: int, per_request: bool):
    """As Lathe's continuous engine configures it: batch cap = streams; on CPU a KV cache sized for
    them (else transformers reserves most of the RAM) and its chunked-prefill step size."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from serving.engine.continuous_engine import CPU_TOKENS_PER_STEP

    sizes = {}
    if device == "cpu":
        page = ContinuousBatchingConfig().page_size
        sizes = {"num_blocks": -(-concurrency * max_len // page) + 1,
                 "max_batch_tokens": min(max_len, CPU_TOKENS_PER_STEP)}
    return ContinuousBatchingConfig(max_requests_per_batch=concurrency, per_request_processors=per_request, **sizes)


def run_raw_engine(model, prompts: list[list[int]], max_tokens: int, *, concurrency: int, max_len: int,
                   eos: int | list[int], pad: int, sampling: str = "greedy") -> dict:
    """Submit every prompt at once (the engine keeps at most `concurrency` in a batch) after a
    warm-up like the server's (one request alone, then a full batch of short ones)."""
    from transformers import GenerationConfig

    device = model.device.type
    per_request: dict = {}
    if sampling == "greedy":
        generation = GenerationConfig(do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=pad)
    else:
        vocab = model.config.get_text_config().vocab_size
        generation = GenerationConfig(do_sample=True, temperature=0.5, top_k=vocab, top_p=0.99,
                                      max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=pad)
        per_request = {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
    manager = model.init_continuous_batching(
        generation_config=generation,
        continuous_batching_config=cb_config(device, concurrency, max_len, per_request=bool(per_request)))
    manager.start()
    try:
        def answer(batch: list[list[int]], new_tokens: int) -> tuple[int, float, float]:
            start, cpu = time.perf_counter(), time.process_time()
            manager.add_requests(inputs=batch, max_new_tokens=new_tokens, **per_request)
            done, tokens = 0, 0
            while done < len(batch):
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("the continuous batching manager stopped")
                    continue
                if result.is_finished():
                    done += 1
                    tokens += len(result.generated_tokens)
            return tokens, time.perf_counter() - start, time.process_time() - cpu

        answer(prompts[:1], 4)
        answer(prompts[:concurrency], 4)
        tokens, seconds, cpu_seconds = answer(prompts, max_tokens)
    finally:
        manager.stop(block=True, timeout=30)
    return {"sampling": sampling, "requests": len(prompts), "concurrency": concurrency, "output_tokens": tokens,
            "duration_s": round(seconds, 3), "output_tokens_per_s": round(tokens / seconds, 1),
            "cpu_s": round(cpu_seconds, 3), "output_tokens_per_cpu_s": round(tokens / cpu_seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throughput of transformers' continuous batching engine, no server.")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--requests", required=True, type=Path, help="JSON list of {messages, max_tokens}")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=2048, help="longest prompt + answer (sizes the CPU KV cache)")
    parser.add_argument("--sampling", choices=["greedy", "lathe"], default="greedy")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32 if device == "cpu" else "auto")
    model = model.to(device).eval()
    requests = json.loads(args.requests.read_text())
    prompts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
               for r in requests]
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    pad = model.generation_config.pad_token_id
    result = run_raw_engine(model, prompts, requests[0]["max_tokens"], concurrency=args.concurrency,
                            max_len=args.max_len, eos=eos, pad=pad if pad is not None else tokenizer.eos_token_id,
                            sampling=args.sampling)
    result["torch_threads"] = torch.get_num_threads()
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
