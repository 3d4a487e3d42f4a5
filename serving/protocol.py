"""The wire format: pydantic models of the OpenAI requests and responses this server speaks.

Requests accept and ignore unknown fields (logged, as vLLM does), so clients that send newer or
vendor-specific options still work. Fields the server knows but cannot honour (`logit_bias`,
`suffix`...) are rejected by the routes with a 400 naming them, rather than silently dropped.
Field constraints here become 400 errors with `param` (see errors.py).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, field_validator, model_serializer,
                      model_validator)
from pydantic_core import PydanticCustomError

log = logging.getLogger("lathe.serving")

FinishReason = Literal["stop", "length", "tool_calls"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_ignored_fields(self):
        if self.model_extra:
            log.warning("%s: ignoring unknown field(s) %s", type(self).__name__, sorted(self.model_extra))
        return self


INVALID_UNICODE = "invalid_unicode"  # the error type errors.py turns into a 400 whose param is the field


def lone_surrogate_at(value: Any, where: str = "") -> str | None:
    """Where in a parsed JSON body a string holds a lone surrogate (`"\\ud800"` is valid JSON but not
    text: tokenizers and UTF-8 encoders fail on it), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate_at(key, where) or lone_surrogate_at(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := lone_surrogate_at(item, f"{where}[{i}]"):
                return found
    return None


class ValidUnicodeBody(_Request):
    """A whole request body, checked for invalid unicode before anything reads it (a base for every
    JSON body a route takes: a lone surrogate breaks tokenizers, SQLite and UTF-8 encoders)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if (where := lone_surrogate_at(data)) is not None:
            raise PydanticCustomError(INVALID_UNICODE, "invalid unicode (a lone surrogate such as \\ud800)",
                                      {"where": where})
        return data


class StreamOptions(_Request):
    include_usage: bool = False


class FunctionCall(_Request):
    name: str
    arguments: str = Field(description="JSON text, as OpenAI sends it.")


class MessageToolCall(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content):
        if isinstance(content, list):
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"only text content parts are supported, got type {part.get('type')!r}")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part["text"] for part in self.content)
        return self.content or ""


class SamplingRequest(ValidUnicodeBody):
    """Fields shared by chat and text completions."""

    model: str | None = Field(None, description="Defaults to the served model.")
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2, description="0 means greedy; default 1.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension; -1 or 0 disables it.")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM extension: drop tokens below min_p x the top one's probability.")
    repetition_penalty: float | None = Field(
        None, ge=1e-6, le=1e6, description="vLLM extension (transformers' multiplicative penalty); 1 disables it. "
        "Bounded so that logits divided or multiplied by it stay finite in float32.")
    min_tokens: int = Field(0, ge=0, description="vLLM extension: EOS is masked until this many tokens.")
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    context_length_exceeded_behavior: Literal["error", "truncate"] = Field(
        "error", description="Together extension: 'truncate' lowers max_tokens to what the context leaves "
                             "instead of answering 400.")

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class FunctionDefinition(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON schema; none means no arguments.")
    strict: bool | None = None


class ChatTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(_Request):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="Together's json_object + schema form.")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens; wins if both.")
    logprobs: StrictBool | Annotated[int, Field(ge=0)] = Field(
        False, description="OpenAI: a bool (with top_logprobs). Together: an int, the number of alternatives.")
    top_logprobs: int | None = Field(None, ge=0)
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    add_generation_prompt: bool = Field(True, description="vLLM extension: end the prompt with the assistant header.")
    continue_final_message: bool = Field(
        False, description="vLLM extension: continue the last (assistant) message instead of starting a new one.")


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = Field(None, description="vLLM extension: constrain the text as in chat.")


# ---- responses -------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    together: ChatChoiceLogprobsTogether | None = Field(None, exclude=True)

    @model_serializer(mode="wrap")
    def _with_together_lists(self, handler) -> dict[str, Any]:
        data = handler(self)
        if self.together is not None:
            data.update(self.together.model_dump())
        return data


class ChatChoiceLogprobsTogether(BaseModel):
    """Together's parallel lists, sent next to OpenAI's `content` when `logprobs` was an integer."""

    tokens: list[str]
    token_ids: list[int]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | None


class _Reply(BaseModel):
    """What every completion object and chunk starts with (OpenAI's order: id, object, created, model)."""

    id: str
    object: str
    created: int = Field(default_factory=now)
    model: str


class ChatCompletionResponse(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str]


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None

    @model_serializer
    def _only_set(self) -> dict[str, Any]:
        # OpenAI sends `"delta": {}` to close a choice, not nulls.
        fields = (("role", self.role), ("content", self.content),
                  ("tool_calls", [t.model_dump(exclude_none=True) for t in self.tool_calls or []] or None))
        return {k: v for k, v in fields if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions format: parallel lists, one entry per token (prompt tokens first with echo)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class CompletionResponse(_Reply):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "lathe"
    root: str
    parent: str | None = None  # the base model's id, for a LoRA adapter (as vLLM lists them)
    version: str | None = None  # the registry version being served, when served from an alias
    max_model_len: int | None = None  # known once the model has loaded


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
