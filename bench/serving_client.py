"""A load generator for an OpenAI-compatible server, in the style of vLLM's benchmark_serving:
streaming chat requests sent at a fixed concurrency or with Poisson arrivals, and the latency
statistics computed here from the arrival time of each streamed chunk (the server's own metrics are
not used).

Definitions (as vLLM's `benchmarks/benchmark_serving.py`):
- TTFT: request sent → first chunk with content.
- TPOT: (end-to-end latency − TTFT) / (output tokens − 1): decode time per token after the first.
- ITL: the gap between consecutive content chunks, pooled over all requests.
- E2EL: request sent → last chunk.
Output tokens come from the server's `usage` (`stream_options.include_usage`), not from counting
chunks, since a chunk may carry more than one token.

Only aiohttp and the standard library are used, so the same client runs on the GPU machine
(bench/gpu.py), whose image has aiohttp but not the `openai` package.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field

from bench.common import summary


@dataclass
class RequestResult:
    """One request as the client saw it; all times in seconds."""

    ok: bool = False
    error: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    ttft: float | None = None
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    sent_at: float = 0.0
    """Seconds since the load started (shows the arrival process)."""

    def to_json(self) -> dict:
        return asdict(self)


async def stream_chat(session, url: str, model: str, messages: list[dict], max_tokens: int) -> RequestResult:
    """One streaming chat completion, timed chunk by chunk."""
    payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
               "stream": True, "stream_options": {"include_usage": True}}
    result = RequestResult()
    start = time.perf_counter()
    last = start
    try:
        async with session.post(url, json=payload) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return result
            async for raw in response.content:  # one SSE line at a time
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    result.output_tokens = chunk["usage"].get("completion_tokens") or 0
                if "error" in chunk:
                    result.error = json.dumps(chunk["error"])[:300]
                    return result
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
        result.latency = last - start
        result.ok = result.ttft is not None
        if not result.ok:
            result.error = "no content streamed"
    except Exception as exc:  # a failed request is counted, not fatal to the run
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def run_load(base_url: str, model: str, requests: list[dict], *, concurrency: int,
                   request_rate: float = float("inf"), seed: int = 0) -> tuple[list[RequestResult], float]:
    """Send `requests` ({messages, max_tokens}) with at most `concurrency` in flight; arrivals are a
    Poisson process of `request_rate` per second (inf: all at once, held back by the concurrency cap).
    Returns the results in request order and the wall time from the first send to the last byte."""
    import aiohttp

    rng = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)
    url = base_url.rstrip("/") + "/chat/completions"
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=3600, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def one(request: dict) -> RequestResult:
            async with gate:
                sent = time.perf_counter() - start
                result = await stream_chat(session, url, model, request["messages"], request["max_tokens"])
                result.sent_at = sent
                return result

        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(one(request)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return list(results), duration


def metrics(results: list[RequestResult], duration: float) -> dict:
    """Throughput and latency statistics of one load (the same for the server and the baseline)."""
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    errors = sorted({r.error for r in results if not r.ok})
    return {
        "completed": len(ok), "failed": len(results) - len(ok), "errors": errors[:5],
        "duration_s": round(duration, 3),
        "requests_per_s": round(len(ok) / duration, 4) if duration else None,
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / duration, 2) if duration else None,
        "prompt_tokens": summary([r.prompt_tokens for r in ok if r.prompt_tokens is not None], digits=1),
        "output_tokens_per_request": summary([r.output_tokens for r in ok], digits=1),
        "ttft_ms": summary([r.ttft for r in ok], 1000),
        "tpot_ms": summary(tpot, 1000),
        "itl_ms": summary([gap for r in ok for gap in r.itl], 1000),
        "e2el_ms": summary([r.latency for r in ok], 1000),
    }


def format_metrics(label: str, m: dict) -> str:
    def row(name: str, s: dict) -> str:
        if not s.get("n"):
            return f"  {name:<6} n/a"
        return f"  {name:<6} p50 {s['p50']:>9.1f}  p90 {s['p90']:>9.1f}  p99 {s['p99']:>9.1f}  (ms, n={s['n']})"
    lines = [f"{label}: {m['completed']} ok, {m['failed']} failed in {m['duration_s']:.1f} s; "
             f"{m['requests_per_s']:.3f} req/s, {m['output_tokens_per_s']:.1f} output tok/s"]
    lines += [row("TTFT", m["ttft_ms"]), row("TPOT", m["tpot_ms"]), row("ITL", m["itl_ms"]), row("E2EL", m["e2el_ms"])]
    return "\n".join(lines)


async def wait_ready(base: str, process=None, timeout: float = 600.0, path: str = "/ready",
                     poll_s: float = 0.1) -> float:
    """Poll GET {base}{path} (/ready: the model loaded; /health: the server answers) until 200; returns the
    seconds waited. Fails early if `process` died."""
    import aiohttp

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.perf_counter() - start < timeout:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode} before {path} answered")
            try:
                async with session.get(base.rstrip("/") + path) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(poll_s)
    raise TimeoutError(f"{base}{path} not 200 after {timeout:.0f} s")
