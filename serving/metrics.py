"""Prometheus metrics (prometheus_client), served at GET /metrics.

One registry per app (not the process-global one), so several servers in one process (tests) do
not mix their numbers. Names follow Prometheus conventions (`_total` counters, `_seconds`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from serving.engine import GeneratedToken

# Latencies of a small CPU model up to a large GPU one.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self, *, running: Callable[[], int], waiting: Callable[[], int], in_flight: Callable[[], int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the `*_created` timestamp series only add noise to a scrape
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lathe_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("lathe_prompt_tokens", "Prompt tokens of admitted requests.", registry=r)
        self.generation_tokens = Counter("lathe_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram("lathe_time_to_first_token_seconds",
                              "From admission to a choice's first generated token.", buckets=_LATENCY_BUCKETS,
                              registry=r)
        self.inter_token = Histogram("lathe_inter_token_latency_seconds", "Between consecutive tokens of a choice.",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("lathe_request_duration_seconds",
                                  "From admission to the end of the response (streams: the last event).",
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.usage_tokens = Counter("lathe_usage_tokens", "Metered tokens, by key id, model, kind (prompt, "
                                    "completion) and batch (true/false).", ["key", "model", "kind", "batch"],
                                    registry=r)
        self.usage_cost = Counter("lathe_usage_cost_usd", "Metered cost in US dollars (platform.prices), by key id, "
                                  "model and batch.", ["key", "model", "batch"], registry=r)
        self.rate_limited = Counter("lathe_rate_limited", "Requests refused with 429, by key id and the limit hit "
                                    "(requests, tokens).", ["key", "limit"], registry=r)
        Gauge("lathe_requests_running", "Sequences the engine is generating now.",
              registry=r).set_function(running)
        Gauge("lathe_queue_depth", "Sequences accepted by the engine and waiting to start.",
              registry=r).set_function(waiting)
        Gauge("lathe_requests_in_flight", "Requests admitted and not finished (see max_queue).",
              registry=r).set_function(in_flight)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def choice_timer(self, admitted_at: float) -> "ChoiceTimer":
        return ChoiceTimer(self, admitted_at)


class ChoiceTimer:
    """Observes one choice's tokens: time to the first, then the gaps (times taken where made)."""

    def __init__(self, metrics: ServerMetrics, admitted_at: float) -> None:
        self._metrics = metrics
        self._admitted_at = admitted_at
        self._last: float | None = None

    def token(self, token: "GeneratedToken") -> None:
        made = token.made_at or time.perf_counter()
        if self._last is None:
            self._metrics.ttft.observe(max(0.0, made - self._admitted_at))
        else:
            self._metrics.inter_token.observe(max(0.0, made - self._last))
        self._last = made
        self._metrics.generation_tokens.inc()
