"""The chat completions handler (POST /v1/chat/completions and batch lines): messages -> the model's chat template
-> generated reply.

With `tools`, the reply may carry `tool_calls` (structured.py says how they are generated and read
back); with `response_format` json_object / json_schema, the content is JSON that fits the schema.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import AsyncIterator


from serving.engine import Engine, GeneratedToken
from serving.errors import invalid_request
from serving.generation import ChoiceResult, choice_params, collect, merge, run_choice, token_text, unless_disconnected
from serving.metering import track_usage
from serving.protocol import (AssistantMessage, ChatChoice, ChatChoiceLogprobs, ChatChoiceLogprobsTogether,
                              ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
                              ChatTokenLogprob, DeltaMessage, DeltaToolCall, FinishReason, ResponseFunctionCall,
                              TopLogprob, ToolCall, UsageInfo)
from serving.sampling import check_engine_supports, check_logprobs, check_supported, sampling_params
from serving.handlers import Call, Stream
from serving.state import ServerState
from serving.structured import (ParsedToolCall, ToolCallExtractor, checked_guide, response_format_guide,
                                template_tools, tool_mode, tools_guide)

async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, call: Call):
    state.check_model(body.model)
    settings = state.settings
    check_supported(body, settings)
    _check_chat_options(body)
    top_logprobs, together = _logprobs_request(body)
    check_logprobs(top_logprobs, "top_logprobs" if not together else "logprobs", settings)
    guide, guide_param = _guide(body)
    served, adapter = await state.target(body.model)  # a whole model of the pool loads here, once the body is valid
    engine = state.ready_engine(served)

    prompt_ids = encode_chat(engine, body, settings.sanitize_control_tokens)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = sampling_params(body, max_tokens=max_tokens, prompt_len=len(prompt_ids), prompt_param="messages",
                             max_model_len=engine.max_model_len, logprobs=top_logprobs, guide=guide, adapter=adapter)
    check_engine_supports(engine, params, settings, guide_param=guide_param)
    stop = body.stop_strings()
    admission = state.admit(engine, adapter, served)
    state.metrics.prompt_tokens.inc(len(prompt_ids))
    model = body.model or settings.model_name
    choices = track_usage(call.usage, model, len(prompt_ids), [
        run_choice(engine, prompt_ids, choice_params(params, i), stop,
                   state.metrics.choice_timer(admission.admitted_at)) for i in range(body.n)])
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    reply = _Reply(engine, tool_mode(body), top_logprobs is not None, together)

    if body.stream:
        chunks = _stream_chunks(reply, choices, request_id, model, len(prompt_ids), body.include_usage_in_stream)
        return Stream(chunks, admission.slot, include_usage=body.include_usage_in_stream)

    with admission.slot:
        results = await unless_disconnected(call.disconnected, _gather(choices))
    return ChatCompletionResponse(
        id=request_id, model=model, choices=[reply.choice(i, r) for i, r in enumerate(results)],
        usage=_usage(len(prompt_ids), sum(len(r.tokens) for r in results)),
    )


def _check_chat_options(body: ChatCompletionRequest) -> None:
    if body.tool_choice not in (None, "none") and not body.tools:
        raise invalid_request("tool_choice needs tools.", "tool_choice")
    if tool_mode(body) != "none" and body.response_format and body.response_format.type != "text":
        raise invalid_request("response_format cannot be combined with tools (a tool call has its own format); "
                              "set tool_choice='none' or drop response_format.", "response_format")
    if body.top_logprobs and body.logprobs is False:
        raise invalid_request("top_logprobs requires logprobs=true.", "top_logprobs")
    if body.continue_final_message and body.messages[-1].role != "assistant":
        raise invalid_request("continue_final_message needs an assistant message last.", "messages")


def _logprobs_request(body: ChatCompletionRequest) -> tuple[int | None, bool]:
    """(alternatives per token or None for no logprobs, whether Together's integer form was used)."""
    if isinstance(body.logprobs, bool):  # before int: a bool is an int in Python
        return ((body.top_logprobs or 0) if body.logprobs else None), False
    return (body.top_logprobs if body.top_logprobs is not None else body.logprobs), True


def _guide(body: ChatCompletionRequest):
    guide = tools_guide(body)
    if guide is not None:
        return checked_guide(guide, "tools"), "tools"
    return checked_guide(response_format_guide(body.response_format), "response_format"), "response_format"


def encode_chat(engine: Engine, body: ChatCompletionRequest, sanitize: bool) -> list[int]:
    """Render with the model's own chat template and tokenize (the template adds BOS etc. itself)."""
    from jinja2 import TemplateError

    from chat.templates import chat_format

    tokenizer = engine.tokenizer
    if not tokenizer.chat_template:
        raise invalid_request("This model has no chat template; use /v1/completions with a plain prompt.",
                              "messages")
    # Tools reach a template without tool syntax as training put them there (chat/templates.py).
    conversation, tools = chat_format(tokenizer).conversation([_template_message(m) for m in body.messages],
                                                              template_tools(body))
    continue_final = body.continue_final_message
    try:
        return list(tokenizer.apply_chat_template(
            conversation, tools=tools,
            add_generation_prompt=body.add_generation_prompt and not continue_final,
            continue_final_message=continue_final, tokenize=True, return_dict=False,
            sanitize_control_tokens=sanitize))
    except (TemplateError, TypeError) as exc:  # e.g. a template that raises on an unexpected role order
        raise invalid_request(f"The model's chat template rejected the messages: {exc}", "messages") from exc


def _template_message(message) -> dict:
    # Templates written for system/user/assistant seldom know the newer 'developer' role.
    out = {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:  # chat templates take the arguments as a mapping (transformers' convention)
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
            "name": c.function.name, "arguments": _json_or_text(c.function.arguments)}} for c in message.tool_calls]
    return out


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


async def _gather(choices):
    return await asyncio.gather(*(collect(c) for c in choices))


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


class _Reply:
    """Turns generated text and tokens into the response's pieces (message, logprobs, tool calls)."""

    def __init__(self, engine: Engine, tools: str, with_logprobs: bool, together: bool) -> None:
        self.engine = engine
        self.tools = tools  # tool_mode(): 'none' | 'auto' | 'required' | 'named'
        self.with_logprobs = with_logprobs
        self.together = together

    def finish_reason(self, engine_finish: FinishReason, calls: list[ParsedToolCall]) -> FinishReason:
        # OpenAI: 'tool_calls' when the model chose to call; a forced named call ends with 'stop'.
        if calls and engine_finish == "stop" and self.tools != "named":
            return "tool_calls"
        return engine_finish

    def choice(self, index: int, result: ChoiceResult) -> ChatChoice:
        content, calls = result.text, []
        if self.tools != "none":
            extractor = ToolCallExtractor()
            content, calls = extractor.feed(result.text)
            content += extractor.flush()
        if calls and not content.strip():
            content = None
        message = AssistantMessage(content=content, tool_calls=[_tool_call(c) for c in calls] or None)
        return ChatChoice(index=index, message=message, finish_reason=self.finish_reason(result.finish_reason, calls),
                          logprobs=self.logprobs(result.tokens) if self.with_logprobs else None)

    def logprobs(self, tokens: list[GeneratedToken]) -> ChatChoiceLogprobs:
        def entry(token_id: int, logprob: float) -> TopLogprob:
            text = token_text(self.engine, token_id)
            return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

        scored = [t for t in tokens if t.logprob is not None]
        content = []
        for token in scored:
            head = entry(token.token_id, token.logprob.logprob)
            content.append(ChatTokenLogprob(**head.model_dump(),
                                            top_logprobs=[entry(t, lp) for t, lp in token.logprob.top]))
        together = None
        if self.together:
            together = ChatChoiceLogprobsTogether(
                tokens=[c.token for c in content], token_ids=[t.token_id for t in scored],
                token_logprobs=[c.logprob for c in content],
                top_logprobs=[{alt.token: alt.logprob for alt in c.top_logprobs} for c in content])
        return ChatChoiceLogprobs(content=content, together=together)


def _tool_call(call: ParsedToolCall) -> ToolCall:
    return ToolCall(id=call.id, function=ResponseFunctionCall(name=call.name, arguments=call.arguments))


async def _stream_chunks(reply: _Reply, choices, request_id: str, model: str, prompt_tokens: int,
                         include_usage: bool) -> AsyncIterator[ChatCompletionChunk]:
    def chunk(choices_: list[ChatChunkChoice]) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=request_id, model=model, choices=choices_)

    for i in range(len(choices)):  # OpenAI opens each choice with the role
        yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
    extractors = [ToolCallExtractor() if reply.tools != "none" else None for _ in choices]
    completion_tokens = 0
    async for i, delta in merge(choices):
        completion_tokens += len(delta.tokens)
        text, calls, extractor = delta.text, [], extractors[i]
        if extractor is not None:
            text, calls = extractor.feed(delta.text)
            if delta.finish_reason:
                text += extractor.flush()
            if reply.tools in ("required", "named") and not text.strip():
                text = ""  # the newlines between forced calls are not content
        logprobs = reply.logprobs(delta.tokens) if reply.with_logprobs and delta.tokens else None
        if text or logprobs:
            yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(content=text), logprobs=logprobs)])
        if calls:
            first = len(extractor.calls) - len(calls)
            yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(tool_calls=[
                DeltaToolCall(index=first + k, id=c.id, type="function",
                              function={"name": c.name, "arguments": c.arguments})
                for k, c in enumerate(calls)]))])
        if delta.finish_reason:
            finish = reply.finish_reason(delta.finish_reason, extractor.calls if extractor else [])
            yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(), finish_reason=finish)])
    if include_usage:
        yield ChatCompletionChunk(id=request_id, model=model, choices=[],
                                  usage=_usage(prompt_tokens, completion_tokens))
