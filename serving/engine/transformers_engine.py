"""The transformers engine: `model.generate` in one worker thread, streamed token by token.

One worker thread runs every model call, one at a time: on a small CPU, parallel generations only
fight over the same cores (STACK-NOTES: 1 torch thread was 5-10x faster than 2), and a single
thread makes `torch.manual_seed` per request reproducible. Requests wait in the executor's queue;
the HTTP layer bounds that queue. transformers' continuous batching can replace this class behind
the `Engine` Protocol when throughput matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

# Heavy, but this module is only imported when a server is created (serving.app imports it lazily).
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList,
                          StoppingCriteria, StoppingCriteriaList)
from transformers.generation.streamers import BaseStreamer

from serving.engine.base import EngineFinish, GeneratedToken, LoadState, SamplingParams, TokenLogprob
from serving.engine.processors import GuidedDecoding, LogprobRecorder, OpenAIPenalties

log = logging.getLogger("lathe.serving")

_LOGPROB_CHUNK = 256  # prompt positions per log_softmax, so long prompts do not hold seq x vocab twice


class TransformersEngine(LoadState):
    unsupported: frozenset[str] = frozenset()

    def __init__(self, model_dir: Path, *, device: str = "auto", dtype: str = "auto", torch_threads: int = 1,
                 max_model_len: int | None = None, adapters: dict[str, Path] | None = None) -> None:
        self.model_dir = Path(model_dir)
        self._adapters = dict(adapters or {})
        self._device_setting = device
        self._dtype_setting = dtype
        self._threads = torch_threads
        self._max_model_len_setting = max_model_len
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lathe-engine",
                                            initializer=self._init_worker)
        self._active: set[threading.Event] = set()  # cancel flags of running generations
        self._submitted = 0  # generations handed to the worker and not finished (running or waiting)
        self._ll_tokenizer: Any = None  # llguidance's view of the vocabulary, built on first use
        self.tokenizer: Any = None
        self.model: Any = None
        self.max_model_len = 0
        self.vocab_size = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def _init_worker(self) -> None:
        # The intra-op pool size is what decides CPU speed here; set it in the thread that runs torch.
        torch.set_num_threads(self._threads)

    @property
    def num_running(self) -> int:
        return len(self._active)

    @property
    def num_waiting(self) -> int:
        return max(0, self._submitted - len(self._active))

    def _one_finished(self) -> None:  # on the event loop thread, like the increment
        self._submitted -= 1

    async def load(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)
        except Exception as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            raise
        self._ready = True

    def _load_sync(self) -> None:
        device = self._device_setting
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self._dtype_setting != "auto":
            dtype: Any = getattr(torch, self._dtype_setting)
        else:  # half precision on CPU is slow and sometimes unsupported; the checkpoint's dtype on GPU
            dtype = torch.float32 if device == "cpu" else "auto"
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        if self._adapters:  # PEFT keeps several LoRA adapters on one base; each request picks one
            from peft import PeftModel

            (first, first_dir), *others = self._adapters.items()
            model = PeftModel.from_pretrained(model, first_dir, adapter_name=first)
            for name, adapter_dir in others:
                model.load_adapter(adapter_dir, adapter_name=name)
        self.model = model.to(device).eval()
        self.device = device

        config = self.model.get_base_model().config.get_text_config() if self._adapters else \
            self.model.config.get_text_config()
        self.vocab_size = int(config.vocab_size)
        self.max_model_len = self._max_model_len_setting or int(
            getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length)
        self.eos_ids = _eos_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        pad = self.model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.pad_token_id or self.eos_ids[0])
        log.info("loaded %s on %s (%s, %d torch threads, context %d, eos %s)", self.model_dir, device,
                 self.model.dtype, torch.get_num_threads(), self.max_model_len, self.eos_ids)

    def close(self) -> None:
        for cancel in list(self._active):  # so the worker thread, and with it the process, can exit
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load one more LoRA adapter of this base (a fine-tuning job's result) without reloading the base.
        It runs in the worker thread, between two generations, so no request sees a half-loaded adapter."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._add_adapter_sync, name, Path(adapter_dir))

    def _add_adapter_sync(self, name: str, adapter_dir: Path) -> None:
        if self.model is not None:  # else load() has not run yet, and loads it with the others
            if self._adapters:
                self.model.load_adapter(adapter_dir, adapter_name=name)
            else:  # the first adapter turns the plain model into a PeftModel
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=name).eval()
        self._adapters[name] = adapter_dir

    # ---- generation ------------------------------------------------------------------------

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> "_TokenStream":
        return _TokenStream(self, prompt_ids, params)

    def _generate_sync(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event,
                       emit: Callable[[GeneratedToken], None]) -> EngineFinish:
        if cancel.is_set():
            return "abort"
        if params.max_tokens == 0:
            return "length"
        self._active.add(cancel)
        try:
            return self._run_generate(prompt_ids, params, cancel, emit)
        finally:
            self._active.discard(cancel)

    def _run_generate(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event,
                      emit: Callable[[GeneratedToken], None]) -> EngineFinish:
        if params.seed is not None:
            torch.manual_seed(params.seed)  # safe: this is the only thread that samples
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            min_new_tokens=params.min_tokens or None,
            do_sample=sample,
            # When sampling, explicit values: unset ones would be filled from the model's defaults
            # (top_k=50). Greedy ignores them; None keeps transformers from warning about that.
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=params.top_k if sample else None,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        if sample and params.min_p:
            config.min_p = params.min_p
        if params.repetition_penalty != 1.0:
            config.repetition_penalty = params.repetition_penalty
        recorder = LogprobRecorder() if params.logprobs is not None else None
        processors = LogitsProcessorList([recorder] if recorder else [])
        if params.presence_penalty or params.frequency_penalty:
            processors.append(OpenAIPenalties(len(prompt_ids), params.presence_penalty, params.frequency_penalty))
        if params.guide is not None:
            processors.append(GuidedDecoding(self._guidance_tokenizer(), params.guide, len(prompt_ids)))
        streamer = _TokenStreamer(emit, recorder, params.logprobs or 0)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        with torch.inference_mode(), self._using_adapter(params.adapter):
            self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                logits_processor=processors or None,
                stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]), streamer=streamer)
        if streamer.last_token in self.eos_ids and streamer.count >= params.min_tokens:
            return "stop"
        if streamer.count >= params.max_tokens:
            return "length"
        if cancel.is_set():
            log.info("generation cancelled after %d of %d tokens", streamer.count, params.max_tokens)
            return "abort"
        return "length"

    def _using_adapter(self, adapter: str | None) -> Any:
        """Select the request's LoRA adapter (safe: one worker thread runs every model call)."""
        if not self._adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _guidance_tokenizer(self) -> Any:
        if self._ll_tokenizer is None:  # ~1 s for a large vocabulary: once per engine, on the worker thread
            import llguidance.hf

            self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                              eos_token=self.eos_ids)
        return self._ll_tokenizer

    # ---- scoring ---------------------------------------------------------------------------

    async def prompt_logprobs(self, prompt_ids: list[int], top_n: int,
                              adapter: str | None = None) -> list[TokenLogprob | None]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._prompt_logprobs_sync, prompt_ids, top_n, adapter)

    def _prompt_logprobs_sync(self, prompt_ids: list[int], top_n: int,
                              adapter: str | None) -> list[TokenLogprob | None]:
        input_ids = torch.tensor([prompt_ids], device=self.device)
        with torch.inference_mode(), self._using_adapter(adapter):
            logits = self.model(input_ids).logits[0, :-1]
            targets = input_ids[0, 1:]
            result: list[TokenLogprob | None] = [None]
            for start in range(0, logits.shape[0], _LOGPROB_CHUNK):
                logprobs = torch.log_softmax(logits[start:start + _LOGPROB_CHUNK].float(), dim=-1)
                chunk_targets = targets[start:start + _LOGPROB_CHUNK]
                chosen = logprobs.gather(-1, chunk_targets[:, None])[:, 0].tolist()
                tops = logprobs.topk(top_n, dim=-1) if top_n > 0 else None
                for i, token_id in enumerate(chunk_targets.tolist()):
                    top = tuple(zip(tops.indices[i].tolist(), tops.values[i].tolist())) if tops else ()
                    result.append(TokenLogprob(token_id, chosen[i], top))
        return result


def _eos_ids(generation_eos: int | list[int] | None, tokenizer_eos: int | None) -> list[int]:
    ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    if tokenizer_eos is not None and tokenizer_eos not in ids:
        ids.append(tokenizer_eos)
    if not ids:
        raise ValueError("the model has no EOS token (generation_config.eos_token_id and tokenizer.eos_token)")
    return ids


class _TokenStream:
    """Bridges the worker thread's tokens onto the event loop as an async iterator."""

    _DONE = object()

    def __init__(self, engine: TransformersEngine, prompt_ids: list[int], params: SamplingParams) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancel = threading.Event()
        self.finish_reason: EngineFinish | None = None
        engine._submitted += 1
        self._future: Future = engine._executor.submit(
            engine._generate_sync, prompt_ids, params, self._cancel, self._put)
        self._future.add_done_callback(lambda _: self._put(self._DONE))
        self._future.add_done_callback(lambda _: self._call_on_loop(engine._one_finished))

    def _put(self, item: object) -> None:
        self._call_on_loop(self._queue.put_nowait, item)

    def _call_on_loop(self, func: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self._cancel.set()

    def __aiter__(self) -> "_TokenStream":
        return self

    async def __anext__(self) -> GeneratedToken:
        if self.finish_reason is not None:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is self._DONE:
            self.finish_reason = "abort" if self._future.cancelled() else self._future.result()
            raise StopAsyncIteration
        return item

    def cancel(self) -> None:
        self._cancel.set()
        self._future.cancel()  # drops it if still queued; a running one stops at its next token

    async def aclose(self) -> None:
        if not self._future.done():
            self.cancel()


class _TokenStreamer(BaseStreamer):
    """A transformers streamer that forwards each new token id (with its log-probability)."""

    def __init__(self, emit: Callable[[GeneratedToken], None], recorder: LogprobRecorder | None,
                 top_n: int) -> None:
        self._emit = emit
        self._recorder = recorder
        self._top_n = top_n
        self._prompt_seen = False
        self.count = 0
        self.last_token: int | None = None

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands the streamer the prompt
            self._prompt_seen = True
            return
        token_id = int(value.reshape(-1)[0])
        logprob = None
        if self._recorder is not None and self._recorder.last is not None:
            row = self._recorder.last
            top = ()
            if self._top_n > 0:
                values, indices = row.topk(self._top_n)
                top = tuple(zip(indices.tolist(), values.tolist()))
            logprob = TokenLogprob(token_id, float(row[token_id]), top)
        self.count += 1
        self.last_token = token_id
        self._emit(GeneratedToken(token_id, logprob, time.perf_counter()))

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    """A stopping criterion: stop when the request was cancelled (client gone, stop string seen)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)
