"""GPU serving bench: the Lathe server (engine `continuous`, over HTTP with streaming) vs the raw
engine (transformers' ContinuousBatchingManager driven directly in-process, greedy), on the same
random-weight model with Llama-3.1-8B's shape, the same prompts, 64 streams. Goal: Lathe's output
tokens/s ≥ 0.95× the raw engine's.

No network and no tokenizer files are needed: the model is random, and so is its tokenizer (a
word-level vocabulary `w4 … wN` covering every id, plus ChatML control tokens), so any generated
id decodes. A random model almost never emits its end-of-turn token, so every request generates
its full `max_tokens`, as vLLM's bench does with `ignore_eos`.

    python -m bench.gpu_serve --out serve.json            # on the GPU (part of bench/gpu.sh)
    python -m bench.gpu_serve --tiny --out serve.json     # the same code path, tiny shape, on CPU
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, REPO, log, thread_env
from bench.server_process import start_server
from bench.serving_client import format_metrics, metrics, run_load

SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
EOS, PAD = SPECIAL.index("<|im_end|>"), SPECIAL.index("<pad>")


def word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<|im_end|>", bos_token="<|im_start|>", chat_template=CHATML)


def make_requests(n: int, vocab_size: int, min_words: int, max_words: int, max_tokens: int, seed: int) -> list[dict]:
    """Prompts of mixed lengths (uniform in [min_words, max_words] tokens), random words."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        words = " ".join(f"w{rng.randrange(len(SPECIAL), vocab_size)}" for _ in range(rng.randint(min_words, max_words)))
        requests.append({"messages": [{"role": "user", "content": words}], "max_tokens": max_tokens})
    return requests


def build_and_run_raw(args) -> dict:
    """Build the random model, save it (with its tokenizer) for the server, then answer every
    request with the raw engine (greedy), in this process."""
    import torch
    from transformers import GenerationConfig

    from bench.gpu_train import LLAMA_31_8B, TINY, build_model
    from bench.raw_engine import run_raw_engine

    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    shape = dict(TINY if args.tiny else LLAMA_31_8B, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=1)
    started = time.perf_counter()
    model = build_model(shape, device, torch.bfloat16 if cuda else torch.float32).eval()
    model.config.use_cache = True
    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=1)
    tokenizer = word_tokenizer(shape["vocab_size"])
    model.save_pretrained(args.model_dir)
    tokenizer.save_pretrained(args.model_dir)
    saved_s = time.perf_counter() - started
    requests = json.loads(Path(args.requests).read_text())
    prompts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
               for r in requests]
    result = run_raw_engine(model, prompts, requests[0]["max_tokens"], concurrency=args.concurrency,
                            max_len=args.max_len, eos=EOS, pad=PAD, sampling="greedy")
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", **result, "build_and_save_s": round(saved_s, 1)}


def compare(args, work: Path) -> dict:
    from bench.gpu_train import LLAMA_31_8B, TINY

    vocab = (TINY if args.tiny else LLAMA_31_8B)["vocab_size"]
    requests = make_requests(args.num_prompts, vocab, args.min_words, args.max_words, args.max_tokens, args.seed)
    requests_file, raw_file = work / "requests.json", work / "raw.json"
    requests_file.write_text(json.dumps(requests))
    model_dir = work / "model"
    max_len = args.max_words + args.max_tokens + 16  # + chat template
    log(f"raw engine: building and saving the model, then {len(requests)} requests")
    cmd = [PYTHON, "-m", "bench.gpu_serve", "--raw", "--model-dir", str(model_dir), "--requests", str(requests_file),
           "--concurrency", str(args.concurrency), "--max-len", str(max_len), "--out", str(raw_file)]
    cmd += ["--tiny"] * args.tiny + ["--cpu"] * args.cpu
    # On CPU (the dry run) one thread: two on a busy 2-core machine were up to 10x slower here.
    threads = 1 if (args.tiny or args.cpu) else None
    subprocess.run(cmd, cwd=REPO, env=thread_env(threads), check=True, timeout=args.phase_timeout, stdout=sys.stderr)
    raw = json.loads(raw_file.read_text())
    log(f"raw engine: {raw['output_tokens_per_s']} output tok/s; starting the Lathe server")
    server = start_server(model_dir, work / "server.log", engine="continuous", max_batch_size=args.concurrency,
                          max_queue=len(requests) + args.concurrency, max_model_len=max_len,
                          ready_timeout=args.phase_timeout)
    try:
        model_name = "lathe"
        asyncio.run(run_load(server.api, model_name, [{**requests[0], "max_tokens": 4}], concurrency=1))
        asyncio.run(run_load(server.api, model_name, [{**r, "max_tokens": 4} for r in requests[: args.concurrency]],
                             concurrency=args.concurrency))
        results, duration = asyncio.run(run_load(server.api, model_name, requests, concurrency=args.concurrency))
    finally:
        status = server.stop()
    lathe = metrics(results, duration)
    log(format_metrics(f"lathe server, {args.concurrency} streams", lathe))
    ratio = round(lathe["output_tokens_per_s"] / raw["output_tokens_per_s"], 3) if lathe["completed"] else None
    return {"raw_engine": raw, "lathe": lathe, "lathe_ready_s": round(server.ready_s, 1), "server_exit": status,
            "ratio": ratio, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "requests")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lathe server vs raw continuous batching engine, random model.")
    parser.add_argument("--tiny", action="store_true", help="tiny shape (CPU dry run of the same code)")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--num-prompts", type=int, help="default 192 (tiny: 12)")
    parser.add_argument("--concurrency", type=int, help="default 64 (tiny: 4)")
    parser.add_argument("--max-tokens", type=int, help="default 128 (tiny: 8)")
    parser.add_argument("--min-words", type=int, help="shortest prompt, default 32 (tiny: 4)")
    parser.add_argument("--max-words", type=int, help="longest prompt, default 512 (tiny: 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase-timeout", type=float, default=240)
    parser.add_argument("--out", type=Path, required=True)
    # internal: the raw-engine subprocess
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-len", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw:
        args.out.write_text(json.dumps(build_and_run_raw(args)))
        return 0
    defaults = (12, 4, 8, 4, 32) if args.tiny else (192, 64, 128, 32, 512)
    for name, value in zip(("num_prompts", "concurrency", "max_tokens", "min_words", "max_words"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    with tempfile.TemporaryDirectory(prefix="lathe-gpu-serve-") as tmp:
        result = compare(args, Path(tmp))
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"ratio": result["ratio"], "raw": result["raw_engine"]["output_tokens_per_s"],
                      "lathe": result["lathe"]["output_tokens_per_s"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
