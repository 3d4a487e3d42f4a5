"""Structured output: `response_format` and `tools` as constraints (`Guide`s), and tool calls read back.

Constrained decoding (llguidance, in the engine) guarantees the shape; this module only says what the
shape is:

- `response_format` json_object / json_schema -> the JSON schema itself (json_object: any object).
- tools. The model writes calls in the one syntax of chat/tool_calls.py (Hermes/Qwen style), which
  training data is rendered in too:
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. The body's schema is built from the
  tools' `parameters` (no parameters: an empty object), so the arguments are valid JSON that
  matches the tool.
  - `tool_choice: "required"` / a named tool: the whole reply is one call (or several, with
    `parallel_tool_calls`), so the model cannot answer in prose.
  - `"auto"`: the model writes free text; if it writes the `<tool_call>` trigger, what follows is
    held to the schema (llguidance's lazy trigger). Whether to call a tool is the model's choice.
  - `"none"`, or no tools: no constraint, no parsing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from chat.tool_calls import CALL_SEPARATOR, TOOL_CLOSE, TOOL_OPEN, parse_call
from serving.engine import Guide
from serving.errors import invalid_request
from serving.protocol import ChatCompletionRequest, ChatTool, NamedToolChoice, ResponseFormat

_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ParsedToolCall:
    id: str
    name: str
    arguments: str  # JSON text


def response_format_guide(response_format: ResponseFormat | None) -> Guide | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        schema = response_format.schema_ or {"type": "object"}
    else:
        spec = response_format.json_schema
        if spec is None or spec.schema_ is None:
            raise invalid_request("response_format json_schema needs json_schema.schema.",
                                  "response_format.json_schema")
        schema = spec.schema_
    return Guide("json_schema", json.dumps(schema))


def checked_guide(guide: Guide | None, param: str) -> Guide | None:
    """The guide, or a 400 naming `param` when llguidance cannot compile it (a bad schema)."""
    from serving.engine.grammar import grammar_error

    if guide is not None and (error := grammar_error(guide)):
        raise invalid_request(f"{param}: the schema cannot be used for constrained decoding: {error}", param)
    return guide


def tool_mode(body: ChatCompletionRequest) -> str:
    """'none' | 'auto' | 'required' | 'named'. OpenAI's default: auto when tools are given."""
    if not body.tools or body.tool_choice == "none":
        return "none"
    if isinstance(body.tool_choice, NamedToolChoice):
        return "named"
    return body.tool_choice or "auto"


def tools_guide(body: ChatCompletionRequest) -> Guide | None:
    mode = tool_mode(body)
    if mode == "none":
        return None
    tools = body.tools or []
    if mode == "named":
        assert isinstance(body.tool_choice, NamedToolChoice)
        wanted = body.tool_choice.function.name
        tools = [t for t in tools if t.function.name == wanted]
        if not tools:
            raise invalid_request(f"tool_choice names '{wanted}', which is not in tools.", "tool_choice")
    call_schema = _call_schema(tools)
    if mode == "auto":  # llguidance's own helper for "free text, constrained after a trigger"
        from llguidance import StructTag

        tag = StructTag(trigger=TOOL_OPEN, begin=TOOL_OPEN, grammar=call_schema, end=TOOL_CLOSE)
        return Guide("lark", StructTag.to_grammar([tag], assume_special=False))
    repeat = f" ({json.dumps(CALL_SEPARATOR)} call)*" if body.parallel_tool_calls and mode == "required" else ""
    return Guide("lark", "\n".join([
        "%llguidance {}",
        f"start: call{repeat}",
        f"call: {json.dumps(TOOL_OPEN)} %json {json.dumps(call_schema)} {json.dumps(TOOL_CLOSE)}",
    ]))


def _call_schema(tools: list[ChatTool]) -> dict:
    options = [{
        "type": "object",
        "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters or _NO_ARGUMENTS},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    } for t in tools]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": {"whitespace_flexible": False}}


def template_tools(body: ChatCompletionRequest) -> list[dict] | None:
    """The tools as chat templates take them (the template decides how the model is told)."""
    if tool_mode(body) == "none":
        return None
    return [t.model_dump(exclude_none=True) for t in body.tools or []]


class ToolCallExtractor:
    """Splits generated text into content and tool calls, incrementally (for streaming).

    Text that might be the start of `<tool_call>` is held back until it is clear, and a call is
    released whole, once its closing tag arrives, so streamed arguments are always complete JSON."""

    def __init__(self) -> None:
        self._buffer = ""
        self._after_call = False  # the separator between parallel calls is syntax, not content
        self.calls: list[ParsedToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ParsedToolCall]]:
        self._buffer += text
        content, calls = "", []
        while True:
            if self._after_call and self._buffer:
                self._after_call = False
                if self._buffer.startswith(CALL_SEPARATOR):
                    self._buffer = self._buffer[len(CALL_SEPARATOR):]
            start = self._buffer.find(TOOL_OPEN)
            if start == -1:
                keep = _partial_prefix_len(self._buffer, TOOL_OPEN)
                content += self._buffer[:len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            end = self._buffer.find(TOOL_CLOSE, start)
            if end == -1:
                content += self._buffer[:start]
                self._buffer = self._buffer[start:]
                break
            call = _parse_call(self._buffer[start + len(TOOL_OPEN):end])
            if call is None:  # not a call after all (only possible without a guide): keep it as text
                content += self._buffer[:end + len(TOOL_CLOSE)]
            else:
                content += self._buffer[:start]
                calls.append(call)
                self._after_call = True
            self._buffer = self._buffer[end + len(TOOL_CLOSE):]
        self.calls += calls
        return content, calls

    def flush(self) -> str:
        """Generation ended: an unfinished call (max_tokens ran out) is returned as text."""
        rest, self._buffer = self._buffer, ""
        return rest


def _parse_call(body: str) -> ParsedToolCall | None:
    parsed = parse_call(body)
    if parsed is None:
        return None
    name, arguments = parsed
    return ParsedToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=name, arguments=json.dumps(arguments))


def _partial_prefix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
