"""Running choices: engine tokens -> text deltas (with stop strings), merged across `n` choices.

Shared by the chat and completions routes, streaming or not, so both paths produce the same text.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from serving.engine import Engine, GeneratedToken, SamplingParams
from serving.errors import APIError
from serving.metrics import ChoiceTimer
from serving.protocol import FinishReason
from serving.text import IncrementalText

T = TypeVar("T")


@dataclass
class Delta:
    text: str
    tokens: list[GeneratedToken]  # the tokens consumed since the previous delta
    finish_reason: FinishReason | None = None  # set on a choice's last delta only


@dataclass
class ChoiceResult:
    text: str = ""
    tokens: list[GeneratedToken] = field(default_factory=list)
    finish_reason: FinishReason | None = None


def decode(engine: Engine, ids: list[int]) -> str:
    return engine.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def token_text(engine: Engine, token_id: int) -> str:
    return engine.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice i samples with seed + i: the n choices differ, and the same request repeats exactly."""
    return params if params.seed is None else dataclasses.replace(params, seed=params.seed + index)


async def run_choice(engine: Engine, prompt_ids: list[int], params: SamplingParams, stop: list[str],
                     timer: ChoiceTimer | None = None) -> AsyncIterator[Delta]:
    stream = engine.generate(prompt_ids, params)
    text = IncrementalText(lambda ids: decode(engine, ids), stop)
    pending: list[GeneratedToken] = []
    try:
        async for token in stream:
            if timer is not None:
                timer.token(token)
            pending.append(token)
            piece = text.add(token.token_id)
            if text.stopped:
                stream.cancel()  # the rest would be thrown away: free the engine now
                yield Delta(piece, pending, "stop")
                return
            if piece:
                yield Delta(piece, pending)
                pending = []
        if stream.finish_reason == "abort":
            raise APIError(503, "Generation was aborted (the server is shutting down).", "server_error")
        yield Delta(text.flush(), pending, "stop" if stream.finish_reason == "stop" else "length")
    finally:
        await stream.aclose()


async def collect(deltas: AsyncIterator[Delta]) -> ChoiceResult:
    result = ChoiceResult()
    async for delta in deltas:
        result.text += delta.text
        result.tokens += delta.tokens
        result.finish_reason = delta.finish_reason
    return result


async def merge(iterators: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items from several async iterators as they come, tagged with the iterator's index."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, iterator: AsyncIterator[T]) -> None:
        try:
            async for item in iterator:
                await queue.put((index, item))
            await queue.put((index, done))
        except Exception as exc:  # surfaces in the consumer
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(iterators)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:  # cancelling a pump runs its iterator's `finally`, which cancels that generation
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def unless_disconnected(disconnected: Callable[[], Awaitable[bool]], work: Awaitable[T], poll_s: float = 0.1) -> T:
    """Await `work`, cancelling it (and so its generations) if the client hangs up meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await disconnected():
                raise APIError(499, "The client closed the request.", "client_disconnected")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
