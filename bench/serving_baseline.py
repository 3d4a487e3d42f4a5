"""The serving bench's baseline: the same model answering the same prompts one at a time with plain
transformers `generate` (greedy), in a process of its own so its thread count is its own.

    python -m bench.serving_baseline --model DIR --requests requests.json --out baseline.json

Each request's tokens are timed as `generate` produces them (a `BaseStreamer` that records the time
of each `put`), so the baseline gets the same TTFT / TPOT / ITL / E2EL statistics as the server.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers.generation.streamers import BaseStreamer

from bench.serving_client import RequestResult


class TokenClock(BaseStreamer):
    """A transformers streamer that only notes when each new token arrives. `generate` first puts
    the prompt, then one tensor per generated token."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def answer_one_at_a_time(model_dir: Path, requests: list[dict], threads: int, warmup: int = 1) -> tuple[list[RequestResult], float, dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # float32 on CPU, as the server's engines load it there.
    dtype = torch.float32 if device == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def run(request: dict) -> RequestResult:
        start = time.perf_counter()
        ids = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        input_ids = torch.tensor([ids], device=device)
        clock = TokenClock()
        with torch.inference_mode():
            model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=request["max_tokens"],
                           do_sample=False, streamer=clock, pad_token_id=pad)
        times = clock.times
        result = RequestResult(ok=bool(times), prompt_tokens=len(ids), output_tokens=len(times),
                               error=None if times else "no tokens")
        if times:
            result.ttft = times[0] - start
            result.latency = times[-1] - start
            result.itl = [b - a for a, b in zip(times, times[1:])]
        return result

    for request in requests[:warmup]:  # first call pays one-off costs (allocations, kernels)
        run({**request, "max_tokens": min(8, request["max_tokens"])})
    start, cpu = time.perf_counter(), time.process_time()
    results = []
    for request in requests:
        result = run(request)
        result.sent_at = time.perf_counter() - start - result.latency
        results.append(result)
    duration = time.perf_counter() - start
    info = {"device": device, "torch_threads": torch.get_num_threads(), "dtype": str(model.dtype),
            "cpu_s": round(time.process_time() - cpu, 3)}
    return results, duration, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--requests", required=True, type=Path, help="JSON list of {messages, max_tokens}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    requests = json.loads(args.requests.read_text())
    results, duration, info = answer_one_at_a_time(args.model, requests, args.threads)
    args.out.write_text(json.dumps({"results": [r.to_json() for r in results], "duration_s": duration, **info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
