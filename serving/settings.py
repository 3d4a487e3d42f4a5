"""The server's settings: one typed object that the CLI fills and `create_app` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recipes.schema import PlatformConfig


class ServerSettings(BaseModel):
    """How to serve one model. Unknown keys are rejected, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: Path = Field(description="A Hugging Face model directory (config.json, weights, tokenizer).")
    model_name: str = Field("lathe", min_length=1, description="The id clients pass as `model`.")
    model_ref: str | None = Field(
        None, description="The registry reference `model_dir` was resolved from (`champion`, `candidate`, "
                          "`models:/name@alias`). With an alias the server follows it: see watch_interval_s.")
    registry_model_name: str | None = Field(
        None, description="The registered model that `champion`/`candidate` in model_ref belong to.")
    watch_interval_s: float = Field(
        30.0, ge=0, description="How often to check whether model_ref's alias moved (0: never); on a move "
                                "the new version is loaded and swapped in without dropping requests.")
    adapters: dict[str, Path] = Field(
        default_factory=dict, description="LoRA adapters of model_dir's base, served side by side: "
                                          "`model` = the key chooses one (engine 'transformers').")
    engine: Literal["transformers", "continuous", "vllm"] = Field(
        "transformers", description="'transformers': model.generate, one request at a time, every option. "
        "'continuous': transformers' continuous batching (throughput; fewer options). 'vllm': vLLM's async "
        "engine (GPU; needs vllm installed).")
    max_batch_size: int = Field(8, ge=1, description="Most sequences batched at once (engines 'continuous', 'vllm'); "
                                "'continuous' applies it to greedy and to sampled requests separately.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM's share of GPU memory.")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM: new requests are refused and in-flight ones get this long to finish.")
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server to the network.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    max_queue: int = Field(64, ge=1, description="Requests admitted at once (running + waiting); more get 503.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; default: 1 for engine 'transformers' (one sequence: "
        "more threads only fight, STACK-NOTES saw 1 thread 5-10x faster than 2), half the usable cores for "
        "'continuous' (batched matmuls can use them).")
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is float32 on CPU and the checkpoint's dtype on GPU."
    )
    max_model_len: int | None = Field(
        None, ge=1, description="Context length (prompt + completion); default: the model config's."
    )
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per prompt) a request may ask for.")
    max_stop_strings: int = Field(
        16, ge=0, description="Most stop strings per request (OpenAI allows 4; stock HumanEval sends 6)."
    )
    max_logprobs: int = Field(20, ge=0, description="Largest `logprobs` / `top_logprobs` a request may ask for.")
    sanitize_control_tokens: bool = Field(
        True, description="Encode control tokens written inside chat messages as plain text (no prompt injection)."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    platform: PlatformConfig = Field(
        default_factory=PlatformConfig, description="API keys, rate-limit tiers, usage prices and the Batch API "
        "(the recipe's `platform` section; its SQLite database keeps them across restarts).")

    @model_validator(mode="after")
    def _check_adapters(self):
        if self.adapters and self.engine != "transformers":
            raise ValueError(f"adapters are served by engine 'transformers' only (engine is '{self.engine}')")
        if self.model_name in self.adapters:
            raise ValueError(f"adapter name '{self.model_name}' is already the base model's model_name")
        return self
