"""The completions handler (POST /v1/completions and batch lines): raw prompts (text or token ids), with `echo` and legacy `logprobs`.

`echo=True, logprobs=k` returns the log-probability of every prompt token, which is how lm-eval's
`local-completions` client scores log-likelihood tasks against a server.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from serving.engine import Engine, GeneratedToken, SamplingParams, TokenLogprob
from serving.errors import invalid_request
from serving.generation import choice_params, collect, merge, run_choice, token_text, unless_disconnected
from serving.handlers import Call, Stream
from serving.metering import track_usage
from serving.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, UsageInfo
from serving.sampling import check_engine_supports, check_logprobs, check_supported, sampling_params
from serving.state import ServerState
from serving.structured import checked_guide, response_format_guide


@dataclass
class Prompt:
    text: str
    ids: list[int]
    params: SamplingParams


async def create_completion(state: ServerState, body: CompletionRequest, call: Call):
    state.check_model(body.model)
    settings = state.settings
    check_supported(body, settings)
    if body.suffix:
        raise invalid_request("suffix is not supported by this server.", "suffix")
    if body.best_of not in (None, body.n):
        raise invalid_request("best_of different from n is not supported by this server.", "best_of")
    check_logprobs(body.logprobs, "logprobs", settings)
    guide = checked_guide(response_format_guide(body.response_format), "response_format")
    served, adapter = await state.target(body.model)  # a whole model of the pool loads here, once the body is valid
    engine = state.ready_engine(served)

    prompts = [Prompt(text, ids, sampling_params(body, max_tokens=body.max_tokens, prompt_len=len(ids),
                                                 prompt_param="prompt", max_model_len=engine.max_model_len,
                                                 logprobs=body.logprobs, guide=guide, adapter=adapter))
               for text, ids in _tokenized_prompts(engine, body.prompt)]
    check_engine_supports(engine, prompts[0].params, settings,
                          prompt_logprobs=body.echo and body.logprobs is not None)
    stop = body.stop_strings()
    admission = state.admit(engine, adapter, served)
    prompt_tokens = sum(len(p.ids) for p in prompts)
    state.metrics.prompt_tokens.inc(prompt_tokens)
    # Choice index = prompt index * n + sample index, as OpenAI and vLLM number them.
    model = body.model or settings.model_name
    choices = track_usage(call.usage, model, prompt_tokens, [
        run_choice(engine, p.ids, choice_params(p.params, i), stop, state.metrics.choice_timer(admission.admitted_at))
        for p in prompts for i in range(body.n)])
    request_id = f"cmpl-{uuid.uuid4().hex}"
    response = CompletionResponse(id=request_id, model=model, choices=[])

    if body.stream:
        chunks = _stream_chunks(engine, body, prompts, choices, response, prompt_tokens)
        return Stream(chunks, admission.slot, include_usage=body.include_usage_in_stream)

    with admission.slot:
        heads = await unless_disconnected(call.disconnected, _prompt_heads(engine, body, prompts))
        results = await unless_disconnected(call.disconnected, asyncio.gather(*(collect(c) for c in choices)))
    for index, result in enumerate(results):
        head = heads[index // body.n]
        logprobs = None
        if body.logprobs is not None:
            logprobs, _ = _logprobs(engine, head.entries + _generated_entries(result.tokens), offset=0)
        response.choices.append(CompletionChoice(index=index, text=head.text + result.text, logprobs=logprobs,
                                                 finish_reason=result.finish_reason))
    response.usage = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=sum(len(r.tokens) for r in results),
                               total_tokens=prompt_tokens + sum(len(r.tokens) for r in results))
    return response


def _tokenized_prompts(engine: Engine, prompt) -> list[tuple[str, list[int]]]:
    """str | list[str] | list[int] | list[list[int]] -> [(text, token ids)] with ids checked."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise invalid_request("prompt must not be empty.", "prompt")
    out = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            ids = list(engine.tokenizer.encode(item))
            text = item
        else:
            bad = [t for t in item if not 0 <= t < engine.vocab_size]
            if bad:
                raise invalid_request(f"prompt[{i}] has token ids outside the vocabulary "
                                      f"(0..{engine.vocab_size - 1}): {bad[:5]}", "prompt")
            ids = list(item)
            text = engine.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not ids:
            raise invalid_request(f"prompt[{i}] is empty (no tokens).", "prompt")
        out.append((text, ids))
    return out


@dataclass
class _Head:
    """What a choice starts with: the echoed prompt and its logprob entries (empty without echo)."""

    text: str
    entries: list[tuple[int, TokenLogprob | None]]


async def _prompt_heads(engine: Engine, body: CompletionRequest, prompts: list[Prompt]) -> list[_Head]:
    heads = []
    for p in prompts:
        entries: list[tuple[int, TokenLogprob | None]] = []
        if body.echo and body.logprobs is not None:
            scored = await engine.prompt_logprobs(p.ids, body.logprobs, p.params.adapter)
            entries = list(zip(p.ids, scored))
        heads.append(_Head(p.text if body.echo else "", entries))
    return heads


def _generated_entries(tokens: list[GeneratedToken]) -> list[tuple[int, TokenLogprob | None]]:
    return [(t.token_id, t.logprob) for t in tokens]


def _logprobs(engine: Engine, entries: list[tuple[int, TokenLogprob | None]],
              offset: int) -> tuple[CompletionLogprobs, int]:
    """The legacy format, and the text offset after its last token.

    `top_logprobs` always includes the chosen token: lm-eval's is_greedy compares against it."""
    out = CompletionLogprobs()
    for token_id, scored in entries:
        text = token_text(engine, token_id)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        if scored is None:  # the first prompt token has no context to be scored in
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(scored.logprob)
        top = {token_text(engine, t): lp for t, lp in scored.top}
        top.setdefault(text, scored.logprob)
        out.top_logprobs.append(top)
    return out, offset


async def _stream_chunks(engine: Engine, body: CompletionRequest, prompts: list[Prompt], choices,
                         response: CompletionResponse, prompt_tokens: int) -> AsyncIterator[CompletionResponse]:
    def chunk(index: int, text: str, logprobs: CompletionLogprobs | None, finish=None) -> CompletionResponse:
        return response.model_copy(update={"choices": [CompletionChoice(
            index=index, text=text, logprobs=logprobs, finish_reason=finish)]})

    offsets = [0] * len(choices)  # text_offset continues across a choice's chunks
    heads = await _prompt_heads(engine, body, prompts)
    if body.echo:
        for index in range(len(choices)):
            head = heads[index // body.n]
            logprobs = None
            offsets[index] = len(head.text)
            if body.logprobs is not None:
                logprobs, offsets[index] = _logprobs(engine, head.entries, 0)
            yield chunk(index, head.text, logprobs)
    completion_tokens = 0
    async for index, delta in merge(choices):
        completion_tokens += len(delta.tokens)
        logprobs = None
        if body.logprobs is not None:
            logprobs, offsets[index] = _logprobs(engine, _generated_entries(delta.tokens), offsets[index])
        if delta.text or delta.finish_reason or delta.tokens:
            yield chunk(index, delta.text, logprobs, delta.finish_reason)
    if body.include_usage_in_stream:
        yield response.model_copy(update={"usage": UsageInfo(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens)})
