"""The recipe's serving sections: `serve:` (the server) and `platform:` (API keys, rate-limit tiers,
prices and the Batch API). Part of the one recipe schema (recipes/schema.py re-exports them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recipes.section import Section


class FineTuningConfig(Section):
    """The fine-tuning jobs API of `lathe serve` (serving/README.md, Fine-tuning API): off unless enabled."""

    enabled: bool = False
    """Serve /v1/fine_tuning/jobs and run the jobs (a training queue in the server's process tree)."""
    base_recipe: str = "default"
    """The recipe a job's recipe is derived from (a path, or a name under recipes/: `default` is
    recipes/default.yaml): its training, eval, gate and registry settings apply unless the request or
    `overrides` change them. Relative paths resolve against the server's working directory (the project root)."""
    state_dir: Path = Path(".lathe/fine_tuning")
    """Job workspaces (`jobs/<job id>/`: files, recipe.yaml, artifacts, checkpoints, stage logs, events) and the
    evaluation cache the jobs share."""
    max_concurrent_jobs: int = Field(1, ge=1)
    """Jobs training at once; more wait as `queued`."""
    price_per_million_tokens: float = Field(0.50, ge=0)
    """US dollars per million trained tokens (every token of every epoch), charged to the key that created the job."""
    max_file_bytes: int = Field(512_000_000, gt=0)
    """Largest training or validation file a job takes."""
    min_rows: int = Field(1, ge=1)
    """Fewest valid rows a training file must have."""
    max_errors_reported: int = Field(20, ge=1)
    """Bad rows named (file id, line, reason) in a failed job's error message."""
    n_checkpoints: int = Field(1, ge=1)
    """Checkpoints saved per training run unless the request sets Together's `n_checkpoints`; a job interrupted
    by a restart resumes from the last one."""
    full_learning_rate: float = Field(1e-5, gt=0)
    """The learning rate of a Full job that names none (`learning_rate_multiplier` scales it): the base recipe's
    rate is a LoRA one, ~100x too high when every weight trains."""
    overrides: list[str] = Field(default_factory=list)
    """`key.sub=value` recipe overrides applied to every job after the request's settings (e.g.
    `sft.max_steps=200` to cap jobs, `eval.suites=[{name: skills}]`)."""
    cancel_grace_s: float = Field(10.0, ge=0)
    """After SIGTERM, how long a stage may take to exit before it is killed (cancel, shutdown)."""
    poll_interval_s: float = Field(1.0, gt=0)
    """How often running stages are checked for new events and checkpoints, and the queue for free slots."""


class ServerTuning(Section):
    """How a server runs: the one definition of every knob, shared by the recipe's `serve:` (ServeConfig) and the
    server's own settings (serving.settings.ServerSettings), so `lathe serve` passes them through unchanged."""

    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 exposes the server to the network."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    engine: Literal["transformers", "continuous", "vllm"] = "transformers"
    """`transformers` (model.generate, one request at a time, every option), `continuous` (transformers'
    continuous batching: throughput for many concurrent streams on CPU, fewer options) or `vllm` (vLLM's async
    engine; GPU, needs vllm installed)."""
    max_batch_size: int = Field(8, ge=1)
    """Most sequences batched at once (engines `continuous`, `vllm`); `continuous` applies it to greedy and to
    sampled requests separately."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vLLM's share of GPU memory."""
    max_queue: int = Field(64, ge=1)
    """Requests admitted at once (running + waiting); more get 503."""
    torch_threads: int | None = Field(None, ge=1)
    """torch intra-op threads; None: 1 for engine `transformers` (one sequence: more threads only fight,
    STACK-NOTES saw 1 thread 5-10x faster than 2), half the usable cores for `continuous`."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu`, `cuda` or `cuda:N`."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; `auto` is float32 on CPU and the checkpoint's dtype on GPU."""
    max_model_len: int | None = Field(None, ge=1)
    """Context length (prompt + completion); None: the model config's."""
    max_n: int = Field(8, ge=1)
    """Largest `n` (choices per prompt) a request may ask for."""
    max_stop_strings: int = Field(16, ge=0)
    """Most stop strings per request (OpenAI allows 4; stock HumanEval sends 6)."""
    max_logprobs: int = Field(20, ge=0)
    """Largest `logprobs` / `top_logprobs` a request may ask for."""
    sanitize_control_tokens: bool = True
    """Encode control tokens written inside chat messages as plain text (no prompt injection)."""
    max_full_models: int = Field(1, ge=0)
    """Whole models (Full fine-tuning jobs' results and checkpoints) kept loaded beside the served one: each loads
    when first called, and the least recently called is unloaded to make room (each costs a full model's memory).
    0: Full fine-tuning jobs are refused."""
    watch_interval_s: float = Field(30.0, ge=0)
    """How often to check whether the served alias moved (0: never); on a move the new version is loaded and
    swapped in without dropping requests."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM: new requests are refused and in-flight ones get this long to finish."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """The server's log level."""


class ServeConfig(ServerTuning):
    """The recipe's `serve:` section: what `lathe serve` serves, how (every ServerTuning field), and whether it
    also runs the fine-tuning jobs plane."""

    model: str = "champion"
    """What to serve: `champion`/`candidate` (aliases of the registered model), `models:/name@alias`,
    or a local model directory. Served from an alias, the server follows it when it moves."""
    fine_tuning: FineTuningConfig = Field(default_factory=FineTuningConfig)
    """The fine-tuning jobs API (off by default: `serve.fine_tuning.enabled=true` turns it on)."""


class TierConfig(Section):
    requests_per_minute: int = Field(6000, gt=0)
    """Requests per minute per key (a token bucket: bursts up to this many, refilled evenly)."""
    tokens_per_minute: int | None = Field(2_000_000, gt=0)
    """Prompt + completion tokens per minute per key; None: unlimited."""
    batch_requests_per_minute: int | None = Field(None, gt=0)
    """Batch lines per minute per key, from a pool of its own (batch work never uses the online
    buckets); None: the same number as requests_per_minute."""
    batch_tokens_per_minute: int | None = Field(None, gt=0)
    """Batch tokens per minute per key, from the batch pool; None: the same as tokens_per_minute."""


def _default_tiers() -> dict[str, TierConfig]:
    # Together's published serverless tiers: Build (top tier: 6,000 RPM, 2M TPM) and Scale
    # (9,000 RPM; Scale has no published token limit, so none here).
    return {"build": TierConfig(), "scale": TierConfig(requests_per_minute=9000, tokens_per_minute=None)}


class PriceConfig(Section):
    input_per_million: float = Field(0.30, ge=0)
    """US dollars per million prompt tokens."""
    output_per_million: float = Field(0.30, ge=0)
    """US dollars per million completion tokens."""


class BatchConfig(Section):
    max_file_bytes: int = Field(200_000_000, gt=0)
    """Largest file POST /v1/files accepts (OpenAI's limit: 200 MB)."""
    max_lines: int = Field(50_000, gt=0)
    """Most requests in one batch input file (OpenAI's limit)."""
    max_completion_window_h: float = Field(168.0, gt=0)
    """Longest completion_window a batch may ask for (`24h` is what OpenAI clients send)."""
    lease_s: float = Field(30.0, gt=0)
    """A worker holds the batch it runs for this long, renewed after every line; a server killed
    mid-batch is resumed by the next worker once the lease runs out."""
    poll_interval_s: float = Field(1.0, gt=0)
    """How often an idle worker looks for new batches."""


class PlatformConfig(Section):
    db_path: str = ".lathe/platform.db"
    """SQLite database holding API keys, usage, files and batches (relative to the working directory)."""
    auth: Literal["auto", "on", "off"] = "auto"
    """Require an API key (`Authorization: Bearer ...`) on every /v1 route. `auto`: on unless the
    server binds to a loopback address (127.0.0.1, ::1, localhost)."""
    protect_metrics: bool = True
    """With auth on, GET /metrics needs a key too (Prometheus can send one: `authorization` in its scrape config)."""
    protect_health: bool = False
    """With auth on, GET /health and /ready need a key too (load balancers usually probe without one)."""
    default_tier: str = "build"
    """Tier of `lathe keys create` without --tier."""
    anonymous_tier: str | None = None
    """Tier of callers when auth is off; None: they are not rate-limited (usage is still metered), so a
    local benchmark or eval run is never throttled."""
    tiers: dict[str, TierConfig] = Field(default_factory=_default_tiers)
    """Rate-limit tiers by name. Tiers given here are added to (or replace) the defaults `build` and `scale`."""
    prices: dict[str, PriceConfig] = Field(default_factory=lambda: {"default": PriceConfig()})
    """Price per served model name; `default` prices every other model ($0.30 per million tokens,
    input and output alike)."""
    batch_price_factor: float = Field(0.5, ge=0)
    """Batch requests cost this fraction of the online price."""
    batch: BatchConfig = Field(default_factory=BatchConfig)
    """Batch API limits and worker timing."""

    @field_validator("tiers", mode="before")
    @classmethod
    def _add_default_tiers(cls, tiers):
        return {**_default_tiers(), **tiers} if isinstance(tiers, dict) else tiers

    @field_validator("prices", mode="before")
    @classmethod
    def _add_default_price(cls, prices):
        return {"default": PriceConfig(), **prices} if isinstance(prices, dict) else prices

    @model_validator(mode="after")
    def _known_default_tier(self):
        for name in ("default_tier", "anonymous_tier"):
            tier = getattr(self, name)
            if tier is not None and tier not in self.tiers:
                raise ValueError(f"{name} '{tier}' is not one of the tiers: {', '.join(self.tiers)}")
        return self
