"""The engine interface: what the HTTP layer needs from whatever runs the model.

The HTTP layer owns the OpenAI semantics (chat templates, stop strings, n, echo, usage); an engine
only turns token ids into token ids. That keeps a swap local: transformers' continuous batching
or vLLM can replace `TransformersEngine` by implementing this Protocol, without touching routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Literal, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EngineFinish = Literal["stop", "length", "abort"]

# Request features an engine may lack; the HTTP layer checks `Engine.unsupported` against these.
FEATURES = ("seed", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
            "logprobs", "top_logprobs", "prompt_logprobs", "guide", "adapter")


@dataclass(frozen=True)
class Guide:
    """A constraint on the generated text, enforced token by token (constrained decoding).

    `kind` 'json_schema': `text` is a JSON schema; 'lark': `text` is an llguidance Lark grammar (which
    may embed JSON schemas with `%json`). Both are what llguidance, and vLLM's structured outputs, take."""

    kind: Literal["json_schema", "lark"]
    text: str


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    min_p: float = 0.0  # 0 means off
    repetition_penalty: float = 1.0  # transformers'/vLLM's multiplicative penalty over prompt + output; 1 is off
    presence_penalty: float = 0.0  # OpenAI's additive penalties, over the generated tokens only
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    seed: int | None = None
    logprobs: int | None = None  # how many alternatives per generated token; None: compute none
    guide: Guide | None = None
    adapter: str | None = None  # a LoRA adapter's name; None: the base model


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = field(default=())  # (token id, logprob), most likely first


@dataclass(frozen=True)
class GeneratedToken:
    token_id: int
    logprob: TokenLogprob | None = None
    made_at: float | None = None  # time.perf_counter() when the engine produced it (latency metrics)


class GenerationStream(Protocol):
    """Tokens of one sequence as they are produced.

    `finish_reason` is set when iteration ends: 'stop' (an EOS token, which is yielded too),
    'length' (max_tokens) or 'abort' (cancelled). `aclose()` cancels an unfinished generation and
    must be called (routes do it in `finally`), so a disconnected client frees the engine.
    """

    finish_reason: EngineFinish | None

    def __aiter__(self) -> AsyncIterator[GeneratedToken]: ...

    def cancel(self) -> None: ...

    async def aclose(self) -> None: ...


class LoadState:
    """Whether an engine's model has loaded, or why loading failed (every engine loads in the background)."""

    _ready: bool = False
    _load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def load_error(self) -> str | None:
        return self._load_error


class Engine(Protocol):
    tokenizer: "PreTrainedTokenizerBase"
    max_model_len: int
    vocab_size: int
    unsupported: frozenset[str]
    """Request features this engine cannot honour (names from `FEATURES`); routes answer 400 for them."""

    @property
    def ready(self) -> bool: ...

    @property
    def load_error(self) -> str | None: ...

    @property
    def num_running(self) -> int:
        """Sequences being generated now (the /metrics gauge)."""

    @property
    def num_waiting(self) -> int:
        """Sequences accepted but not started yet (the /metrics queue depth)."""

    async def load(self) -> None:
        """Load weights; the server answers /health meanwhile and /ready once this returns."""

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationStream: ...

    async def prompt_logprobs(self, prompt_ids: list[int], top_n: int,
                              adapter: str | None = None) -> list[TokenLogprob | None]:
        """Log-probability of each prompt token given the ones before it (None for the first)."""

    def close(self) -> None: ...
