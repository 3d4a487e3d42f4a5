"""Usage metering of inference: every generation request (online or batch) is billed through the one billing
writer (accounts/usage.py) and added to the Prometheus counters `lathe_usage_tokens_total` and
`lathe_usage_cost_usd_total`.

The generation handlers report what they used through `track_usage` (the gate middleware reads it when
the response has ended); the batch worker records its lines itself, in the transaction that stores
the line's result, so a resumed batch is never billed twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

from accounts.store import Store
from accounts.usage import UsageRecord, bill, inference_cost
from recipes.schema import PlatformConfig

if TYPE_CHECKING:
    from serving.generation import Delta
    from serving.metrics import ServerMetrics

@dataclass
class RequestUsage:
    """What one request used; a generation route fills it through `track_usage`."""

    model: str | None = None  # None: the request never reached generation (nothing to bill)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    async def counted(self, deltas: AsyncIterator["Delta"]) -> AsyncIterator["Delta"]:
        try:
            async for delta in deltas:
                self.completion_tokens += len(delta.tokens)
                yield delta
        finally:
            await deltas.aclose()  # a client that left must still cancel the generation underneath


def track_usage(usage: "RequestUsage | None", model: str, prompt_tokens: int, choices: list) -> list:
    """Count the tokens of a call's choices into its RequestUsage (the metering middleware's or the batch
    worker's; None: not metered); returns the choices to run."""
    if usage is None:
        return choices
    usage.model, usage.prompt_tokens = model, prompt_tokens
    return [usage.counted(choice) for choice in choices]


class Meter:
    def __init__(self, store: Store, config: PlatformConfig, metrics: "ServerMetrics | None" = None) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, batch: bool) -> float:
        return inference_cost(self.config, model, prompt_tokens, completion_tokens, batch)

    def record(self, record: UsageRecord) -> None:
        """Bill one request (blocking: call it off the event loop) and count it in Prometheus."""
        cost = self.cost(record.model, record.prompt_tokens, record.completion_tokens, record.batch)
        bill(self.store, record, cost)
        self.observe(record, cost)

    def observe(self, record: UsageRecord, cost: float) -> None:
        if self.metrics is None:
            return
        batch = "true" if record.batch else "false"
        tokens = self.metrics.usage_tokens
        tokens.labels(record.key_id, record.model, "prompt", batch).inc(record.prompt_tokens)
        tokens.labels(record.key_id, record.model, "completion", batch).inc(record.completion_tokens)
        self.metrics.usage_cost.labels(record.key_id, record.model, batch).inc(cost)
