"""Load: many concurrent streaming clients against a real server process on 127.0.0.1.

64 clients share a fixed number of streaming chat requests; the server admits at most `max_queue`
at once and answers the rest 503 `queue_full` at once (deliberate back-pressure). The contract:
no answer other than 200 or a deliberate 503/429, every 200 stream complete (a finish reason, the
usage chunk, [DONE]) with the tokens it reports, the admission bound never exceeded (sampled from
/ready while the load runs), and the server's memory bounded. p50/p99 latencies are reported.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest

LONG = os.environ.get("LATHE_RELIABILITY") == "long"
CLIENTS = 64
REQUESTS = 1024 if LONG else 128
MAX_TOKENS = 32 if LONG else 8
MAX_QUEUE = 16
RSS_GROWTH_LIMIT_MB = 300


@pytest.fixture(scope="module")
def load_server(tiny_model_dir, tmp_path_factory):
    from tests.reliability.conftest import server_process

    with server_process(tiny_model_dir, tmp_path_factory.mktemp("load"), max_queue=MAX_QUEUE,
                        drain_timeout_s=5.0, log_level="warning") as server:
        yield server


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _one_stream(client, index: int) -> dict:
    import openai

    started = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"count to {index % 10}"}], max_tokens=MAX_TOKENS,
            temperature=0.8, seed=index, stream=True, stream_options={"include_usage": True})
        first_token_at, finishes, usage, pieces = None, [], None, 0
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces += 1
                    first_token_at = first_token_at or time.perf_counter()
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
        return {"status": 200, "latency": time.perf_counter() - started,
                "ttft": (first_token_at or time.perf_counter()) - started, "finishes": finishes, "usage": usage,
                "pieces": pieces}
    except openai.APIStatusError as exc:
        code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
        return {"status": exc.status_code, "code": code, "latency": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 - a dropped connection or broken stream is the finding
        return {"status": None, "error": f"{type(exc).__name__}: {exc}", "latency": time.perf_counter() - started}


async def _run_load(base: str, pid: int) -> tuple[list[dict], dict]:
    import httpx2
    import openai
    import psutil

    process = psutil.Process(pid)
    peaks = {"in_flight": 0, "rss_mb": process.memory_info().rss / 2**20}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)
    results: list[dict] = []
    done = asyncio.Event()

    async def client_loop(client) -> None:
        while not queue.empty():
            result = await _one_stream(client, queue.get_nowait())
            results.append(result)
            if result["status"] in (429, 503):  # back off as a polite client does, then take the next request
                await asyncio.sleep(0.05)

    async def watch(http) -> None:  # the admission count and the server's memory, while the load runs
        while not done.is_set():
            ready = (await http.get(f"{base}/ready")).json()
            peaks["in_flight"] = max(peaks["in_flight"], ready["in_flight"])
            peaks["max_queue"] = ready["max_queue"]
            peaks["rss_mb"] = max(peaks["rss_mb"], process.memory_info().rss / 2**20)
            await asyncio.sleep(0.01)

    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120) as client, \
            httpx2.AsyncClient(timeout=30) as http:
        watcher = asyncio.create_task(watch(http))
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
        done.set()
        await watcher
    return results, peaks


def test_64_streaming_clients_get_complete_streams_or_a_deliberate_503(load_server, tally):
    import httpx2
    import psutil

    base, proc, log_path = load_server
    httpx2.post(f"{base}/v1/completions", json={"prompt": "warm up", "max_tokens": 4}, timeout=60)  # first-use costs
    baseline_mb = psutil.Process(proc.pid).memory_info().rss / 2**20

    started = time.perf_counter()
    results, peaks = asyncio.run(_run_load(base, proc.pid))
    wall = time.perf_counter() - started
    tally.requests(len(results))

    assert len(results) == REQUESTS
    unexpected = [r for r in results if r["status"] not in (200, 503, 429)]
    assert not unexpected, unexpected[:5]
    refused = [r for r in results if r["status"] in (503, 429)]
    assert all(r["code"] in ("queue_full", "rate_limit_exceeded") for r in refused), refused[:5]
    ok = [r for r in results if r["status"] == 200]
    incomplete = [r for r in ok if r["finishes"] not in (["stop"], ["length"]) or r["usage"] is None
                  or r["usage"].completion_tokens > MAX_TOKENS
                  or (r["finishes"] == ["length"] and r["usage"].completion_tokens != MAX_TOKENS)]
    tally.lost(len(incomplete))
    assert not incomplete, incomplete[:5]
    assert len(ok) >= MAX_QUEUE and refused, "the load neither filled the queue nor was refused"
    assert peaks["max_queue"] == MAX_QUEUE and 0 < peaks["in_flight"] <= MAX_QUEUE, peaks
    assert peaks["rss_mb"] - baseline_mb < RSS_GROWTH_LIMIT_MB, (baseline_mb, peaks)
    assert proc.poll() is None and httpx2.get(f"{base}/health").status_code == 200

    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok]
    tally.note(f"load: {CLIENTS} clients, {REQUESTS} streaming requests (max_tokens {MAX_TOKENS}) in {wall:.1f} s: "
               f"{len(ok)} complete 200 streams, {len(refused)} refused 503/429, 0 other; peak in flight "
               f"{peaks['in_flight']}/{MAX_QUEUE}; server RSS {baseline_mb:.0f} -> peak {peaks['rss_mb']:.0f} MiB")
    tally.note(f"load latency (200s): p50 {statistics.median(latencies) * 1000:.0f} ms, "
               f"p99 {_percentile(latencies, 0.99) * 1000:.0f} ms; time to first token p50 "
               f"{statistics.median(ttfts) * 1000:.0f} ms, p99 {_percentile(ttfts, 0.99) * 1000:.0f} ms; "
               f"503 answered in p99 {_percentile([r['latency'] for r in refused], 0.99) * 1000:.0f} ms")
