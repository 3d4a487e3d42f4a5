"""vLLM's async engine behind the `Engine` Protocol (GPU serving).

vLLM is optional and imported only here, when `engine: vllm` is chosen: the PyPI wheel is CUDA-only
and pins its own torch (STACK-NOTES), so it is not part of the default install. Without it,
creating this engine is a LatheError that says what to do.

The HTTP layer is unchanged: it gives token ids and `SamplingParams`, and gets tokens back as they
are made (`RequestOutputKind.DELTA`). Stop strings stay in the HTTP layer (it cancels the request),
so both engines stop identically. Written against vLLM's v1 API (0.10 and later).
"""

from __future__ import annotations

import importlib.util
import logging
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from recipes import LatheError
from serving.engine.base import EngineFinish, GeneratedToken, LoadState, SamplingParams, TokenLogprob

log = logging.getLogger("lathe.serving")


class VLLMEngine(LoadState):
    unsupported = frozenset({"adapter"})

    def __init__(self, model_dir: Path, *, dtype: str = "auto", max_model_len: int | None = None,
                 max_num_seqs: int = 8, gpu_memory_utilization: float = 0.9) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise LatheError("engine 'vllm' needs the vllm package, which is not installed. Install it on a GPU "
                             "machine (`pip install vllm`, CUDA only), or serve with engine 'transformers' or "
                             "'continuous'.")
        self.model_dir = Path(model_dir)
        self._args = dict(model=str(self.model_dir), dtype=dtype, max_model_len=max_model_len,
                          max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization)
        self._engine: Any = None
        self._running: set[str] = set()
        self.tokenizer: Any = None
        self.max_model_len = 0
        self.vocab_size = 0

    @property
    def num_running(self) -> int:
        return len(self._running)  # vLLM schedules them itself; its own metrics split running/waiting

    @property
    def num_waiting(self) -> int:
        return 0

    async def load(self) -> None:
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs, AsyncLLMEngine

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            args = AsyncEngineArgs(**{k: v for k, v in self._args.items() if v is not None})
            self._engine = AsyncLLMEngine.from_engine_args(args)
            config = self._engine.model_config if hasattr(self._engine, "model_config") else \
                await self._engine.get_model_config()
            self.max_model_len = int(config.max_model_len)
            self.vocab_size = int(config.get_vocab_size())
        except Exception as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            raise
        self._ready = True
        log.info("vLLM engine ready: %s (context %d)", self.model_dir, self.max_model_len)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> "_VLLMStream":
        return _VLLMStream(self, prompt_ids, params)

    async def prompt_logprobs(self, prompt_ids: list[int], top_n: int,
                              adapter: str | None = None) -> list[TokenLogprob | None]:
        from vllm import SamplingParams as VSamplingParams

        request_id = f"score-{uuid.uuid4().hex}"
        final = None
        async for output in self._engine.generate({"prompt_token_ids": prompt_ids},
                                                  VSamplingParams(max_tokens=1, prompt_logprobs=top_n), request_id):
            final = output
        scored: list[TokenLogprob | None] = []
        for token_id, entry in zip(prompt_ids, final.prompt_logprobs):
            scored.append(None if entry is None else _token_logprob(token_id, entry, top_n))
        return scored

    def close(self) -> None:
        if self._engine is not None and hasattr(self._engine, "shutdown"):
            self._engine.shutdown()
        self._engine = None


def _token_logprob(token_id: int, entry: dict, top_n: int) -> TokenLogprob:
    ranked = sorted(entry.items(), key=lambda item: item[1].logprob, reverse=True)[:top_n]
    return TokenLogprob(token_id, float(entry[token_id].logprob), tuple((t, float(lp.logprob)) for t, lp in ranked))


def _vllm_params(params: SamplingParams) -> Any:
    from vllm import SamplingParams as VSamplingParams
    from vllm.sampling_params import RequestOutputKind

    extra: dict[str, Any] = {}
    if params.guide is not None:
        import json

        spec = {"json": json.loads(params.guide.text)} if params.guide.kind == "json_schema" else \
            {"grammar": params.guide.text}
        try:  # vLLM >= 0.10.2
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(**spec)
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            extra["guided_decoding"] = GuidedDecodingParams(**spec)
    return VSamplingParams(
        max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1, min_p=params.min_p,
        repetition_penalty=params.repetition_penalty, presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty, min_tokens=params.min_tokens, seed=params.seed,
        logprobs=params.logprobs, output_kind=RequestOutputKind.DELTA, **extra)


class _VLLMStream:
    def __init__(self, engine: VLLMEngine, prompt_ids: list[int], params: SamplingParams) -> None:
        self._engine = engine
        self._request_id = f"lathe-{uuid.uuid4().hex}"
        self._prompt_ids = prompt_ids
        self._params = params
        self._iterator: AsyncIterator[GeneratedToken] | None = None
        self.finish_reason: EngineFinish | None = None

    def __aiter__(self) -> AsyncIterator[GeneratedToken]:
        if self._iterator is None:
            self._iterator = self._tokens()
        return self._iterator

    async def _tokens(self) -> AsyncIterator[GeneratedToken]:
        if self._params.max_tokens == 0:
            self.finish_reason = "length"
            return
        engine = self._engine
        engine._running.add(self._request_id)
        try:
            async for output in engine._engine.generate({"prompt_token_ids": self._prompt_ids},
                                                        _vllm_params(self._params), self._request_id):
                completion = output.outputs[0]
                now = time.perf_counter()
                for i, token_id in enumerate(completion.token_ids):
                    logprob = None
                    if self._params.logprobs is not None and completion.logprobs:
                        logprob = _token_logprob(token_id, completion.logprobs[i], self._params.logprobs)
                    yield GeneratedToken(int(token_id), logprob, now)
                if completion.finish_reason is not None:
                    self.finish_reason = "abort" if completion.finish_reason == "abort" else (
                        "length" if completion.finish_reason == "length" else "stop")
        finally:
            engine._running.discard(self._request_id)

    def cancel(self) -> None:
        if self.finish_reason is None and self._engine._engine is not None:
            import asyncio

            asyncio.ensure_future(self._engine._engine.abort(self._request_id))

    async def aclose(self) -> None:
        if self.finish_reason is None and self._engine._engine is not None:
            await self._engine._engine.abort(self._request_id)
        if self._iterator is not None:
            await self._iterator.aclose()
