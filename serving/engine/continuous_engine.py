"""transformers' continuous batching (`ContinuousBatchingManager`) behind the `Engine` Protocol.

The manager's own thread schedules every running sequence into shared forward passes over a paged
KV cache; requests join and leave between steps. On CPU this gave ~3x the throughput of one
`generate` at a time with 8 concurrent streams (STACK-NOTES), so all cores are used by default.

Two managers share the model and its weights, each with its own paged cache and thread: a *greedy*
one (argmax, no logits processors) for temperature-0 requests, and a *sampling* one for the rest.
A single manager would have to run every request through the per-request temperature / top-k / top-p
processors, two full sorts of the vocabulary per sequence per step: 28% of a 16-stream decode step
on one CPU core (bench/README.md, "serving"), paid by greedy traffic (evals, tools, structured
output) for nothing. When both kinds run at once the two threads share the cores.

What a manager supports per request (transformers 5.24): max_new_tokens, EOS, and, with
`per_request_processors`, temperature / top_k / top_p. Everything else
(penalties, min_p, min_tokens, log-probabilities, constrained decoding, adapters) is listed in
`unsupported`, so requests asking for it get a 400 naming the field instead of being silently
approximated. `seed` is accepted but not reproducible per request: the manager has one generator.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from serving.engine.base import EngineFinish, GeneratedToken, LoadState, SamplingParams, TokenLogprob

log = logging.getLogger("lathe.serving")

CPU_TOKENS_PER_STEP = 256
"""Chunked prefill on CPU. A prompt pass is compute-bound there, so a burst of prompts read in one step
delays every first token until the last prompt is read; 256-token steps let the first requests stream
while later prompts are still being read. Measured (bench.serving, 16 streams, SmolLM2-135M, 1 core):
TTFT p50 843 ms vs 1,473 ms with 2,048-token steps, output tokens/s unchanged (84.4 vs 85.6)."""


class ContinuousBatchingEngine(LoadState):
    unsupported = frozenset({"min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
                             "logprobs", "top_logprobs", "prompt_logprobs", "guide", "adapter"})

    def __init__(self, model_dir: Path, *, device: str = "auto", dtype: str = "auto", torch_threads: int = 1,
                 max_model_len: int | None = None, max_batch_size: int = 8) -> None:
        self.model_dir = Path(model_dir)
        self._device_setting = device
        self._dtype_setting = dtype
        self._threads = torch_threads
        self._max_model_len_setting = max_model_len
        self._max_batch_size = max_batch_size
        self._managers: dict[str, Any] = {}
        """'greedy' and 'sampling' (see the module docstring)."""
        self._streams: set[_CBStream] = set()
        self.tokenizer: Any = None
        self.max_model_len = 0
        self.vocab_size = 0

    @property
    def num_running(self) -> int:
        return sum(1 for s in self._streams if s.started)

    @property
    def num_waiting(self) -> int:
        return sum(1 for s in self._streams if not s.started)

    async def load(self) -> None:
        try:
            await asyncio.to_thread(self._load_sync)
        except Exception as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            raise
        self._ready = True

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from serving.engine.transformers_engine import _eos_ids

        torch.set_num_threads(self._threads)
        device = self._device_setting
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype: Any = getattr(torch, self._dtype_setting) if self._dtype_setting != "auto" else (
            torch.float32 if device == "cpu" else "auto")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(device).eval()
        config = model.config.get_text_config()
        self.vocab_size = int(config.vocab_size)
        self.max_model_len = self._max_model_len_setting or int(
            getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length)
        self.eos_ids = _eos_ids(model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        pad = model.generation_config.pad_token_id
        pad = pad if pad is not None else self.eos_ids[0]
        for mode in ("greedy", "sampling"):
            self._managers[mode] = self._start_manager(model, mode, device, pad)
        log.info("loaded %s on %s for continuous batching (%d torch threads, batch <= %d, context %d)",
                 self.model_dir, device, torch.get_num_threads(), self._max_batch_size, self.max_model_len)

    def _start_manager(self, model, mode: str, device: str, pad: int):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if mode == "greedy":
            generation_config = GenerationConfig(do_sample=False, max_new_tokens=256, eos_token_id=self.eos_ids,
                                                 pad_token_id=pad)
        else:
            # Non-neutral defaults so that the temperature / top-k / top-p processors exist: transformers only
            # builds a processor whose setting differs from the neutral one, and only an existing processor
            # takes per-request values. Every sampled request passes all three (see _CBStream).
            generation_config = GenerationConfig(
                do_sample=True, temperature=0.5, top_k=self.vocab_size, top_p=0.99, max_new_tokens=256,
                eos_token_id=self.eos_ids, pad_token_id=pad)
        if device == "cpu":  # else the KV cache takes 60% of the machine's RAM, zeroed on the first request
            page = ContinuousBatchingConfig().page_size
            cache_size = {"num_blocks": -(-self._max_batch_size * self.max_model_len // page) + 1,
                          "max_batch_tokens": min(self.max_model_len, CPU_TOKENS_PER_STEP)}
        else:  # each manager sizes its cache from the memory free when it starts: the two share it
            cache_size = {"max_memory_percent": 0.45 if mode == "greedy" else 0.8}
        cb_config = ContinuousBatchingConfig(per_request_processors=mode == "sampling",
                                             max_requests_per_batch=self._max_batch_size, **cache_size)
        manager = model.init_continuous_batching(generation_config=generation_config,
                                                 continuous_batching_config=cb_config)
        manager.start()
        return manager

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> "_CBStream":
        return _CBStream(self, prompt_ids, params)

    async def prompt_logprobs(self, prompt_ids: list[int], top_n: int,
                              adapter: str | None = None) -> list[TokenLogprob | None]:
        raise NotImplementedError("prompt log-probabilities need engine 'transformers'")  # refused by the routes

    def close(self) -> None:
        for stream in list(self._streams):
            stream.cancel()
        for manager in self._managers.values():
            manager.stop(block=True, timeout=5)
        self._managers.clear()


class _CBStream:
    """One request's tokens, pushed by the manager's result handler (it runs on the event loop)."""

    _DONE = object()

    def __init__(self, engine: ContinuousBatchingEngine, prompt_ids: list[int], params: SamplingParams) -> None:
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self._sent = 0
        self._manager: Any = None
        self._done = False  # the end is queued: later outputs (a step in flight at a cancel) are dropped
        self.started = False
        self.finish_reason: EngineFinish | None = None
        self.request_id = f"lathe-{uuid.uuid4().hex}"
        if params.max_tokens == 0:
            self._finish("length")
            return
        if params.temperature == 0:
            self._manager, per_request = engine._managers["greedy"], {}
        else:
            self._manager = engine._managers["sampling"]
            per_request = {"temperature": float(params.temperature), "top_k": int(params.top_k or engine.vocab_size),
                           "top_p": float(params.top_p)}
        manager = self._manager
        engine._streams.add(self)
        manager.register_result_handler(self.request_id, self._on_output)
        accepted = manager.add_request(prompt_ids, request_id=self.request_id, max_new_tokens=params.max_tokens,
                                       streaming=True, eos_token_id=engine.eos_ids, **per_request)
        if accepted is None:
            self._forget_handler()
            self._fail("the continuous batching manager is not accepting requests (stopping?)")

    def _on_output(self, output) -> None:
        if self._done:
            return
        now = time.perf_counter()
        new = output.generated_tokens[self._sent:]
        self._sent += len(new)
        self.started = True
        for token_id in new:
            self._queue.put_nowait(GeneratedToken(int(token_id), None, now))
        if output.error is not None:
            self._fail(output.error)
        elif output.is_finished():
            last = output.generated_tokens[-1] if output.generated_tokens else None
            self._finish("stop" if last in self._engine.eos_ids else "length")

    def _finish(self, reason: EngineFinish | Exception) -> None:
        if self._done:
            return
        self._done = True
        self._engine._streams.discard(self)
        self._queue.put_nowait((self._DONE, reason))

    def _fail(self, error: str) -> None:
        self._finish(RuntimeError(f"continuous batching failed: {error}"))

    def _forget_handler(self) -> None:
        """A cancelled or refused request gets no final output, so its handler would stay registered forever."""
        router = self._manager.output_router
        with router._lock:
            router.result_handlers.pop(self.request_id, None)

    def __aiter__(self) -> "_CBStream":
        return self

    async def __anext__(self) -> GeneratedToken:
        if self.finish_reason is not None:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, tuple) and item[0] is self._DONE:
            if isinstance(item[1], Exception):
                self.finish_reason = "abort"
                raise item[1]
            self.finish_reason = item[1]
            raise StopAsyncIteration
        return item

    def cancel(self) -> None:
        if self.finish_reason is not None or self not in self._engine._streams:
            return
        if self._engine._managers:  # not closed
            self._manager.cancel_request(self.request_id)
            self._forget_handler()
        log.info("generation cancelled after %d of its tokens", self._sent)
        self._finish("abort")

    async def aclose(self) -> None:
        self.cancel()
