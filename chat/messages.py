"""Checks for one conversation as users write it (OpenAI's chat format and its relatives): messages,
tool calls, tool results, per-message weights and the row's tool definitions. Each check raises
`RowError` with the field that is wrong (`message 3 tool_calls[0].function.arguments …`)."""

from __future__ import annotations

import json
from typing import Any


class RowError(ValueError):
    """A row that cannot be normalised; the message says why."""


ROLES = {"system", "user", "assistant", "tool"}
ROLE_ALIASES = {"developer": "system", "function": "tool"}  # OpenAI's newer system role; legacy function results


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{what} holds invalid unicode (a lone surrogate)") from None
    if not value.strip():
        raise RowError(f"{what} is empty")
    return value


def _content(value: Any, what: str, *, optional: bool) -> str | None:
    """A string, or OpenAI's list of content parts (text parts only: Lathe trains language models)."""
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(f"{what}[{i}] is a {kind!r} part; only text parts can be trained")
            parts.append(text(part.get("text"), f"{what}[{i}].text"))
        value = "".join(parts)
    if optional and (value is None or value == ""):
        return None
    return text(value, what)


def arguments(value: Any, what: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"{what} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise RowError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _tool_calls(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{what} must be a non-empty list")
    calls = []
    for i, call in enumerate(value):
        at = f"{what}[{i}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise RowError(f"{at} must be an object with a function {{name, arguments}}")
        if call.get("type", "function") != "function":
            raise RowError(f"{at}.type is {call.get('type')!r}; only function calls are supported")
        name = text(call["function"].get("name"), f"{at}.function.name")
        args = arguments(call["function"].get("arguments", {}), f"{at}.function.arguments")
        out = {"type": "function", "function": {"name": name, "arguments": args}}
        if call.get("id") is not None:
            out["id"] = text(call["id"], f"{at}.id")
        calls.append(out)
    return calls


def message(msg: Any, index: int) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise RowError(f"message {index} must be an object with role and content")
    role = ROLE_ALIASES.get(msg.get("role"), msg.get("role"))
    if role not in ROLES:
        raise RowError(f"message {index} has role {msg.get('role')!r}; expected one of {sorted(ROLES | set(ROLE_ALIASES))}")
    at = f"message {index}"
    out: dict[str, Any] = {"role": role}
    calls = msg.get("tool_calls")
    if role == "assistant" and calls is None and isinstance(msg.get("function_call"), dict):
        calls = [{"id": f"call_{index}", "type": "function", "function": msg["function_call"]}]  # legacy form
    if role == "assistant" and calls is not None:
        out["content"] = _content(msg.get("content"), f"{at} content", optional=True)
        out["tool_calls"] = _tool_calls(calls, f"{at} tool_calls")
    else:
        out["content"] = _content(msg.get("content"), f"{at} content", optional=False)
    if "weight" in msg:
        if role != "assistant":
            raise RowError(f"{at} has a weight, but only assistant messages are trained (weight applies to them)")
        if msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool):
            raise RowError(f"{at} weight must be 0 or 1, got {msg['weight']!r}")
        out["weight"] = int(msg["weight"])
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if msg.get(key) is not None:
                out[key] = text(msg[key], f"{at} {key}")
    return out


def tools(value: Any, what: str = "tools") -> list[dict]:
    """OpenAI function tools: `{"type": "function", "function": {"name", "description"?, "parameters"?}}`."""
    if not isinstance(value, list) or not value:
        raise RowError(f"{what} must be a non-empty list of function tools")
    out = []
    for i, tool in enumerate(value):
        at = f"{what}[{i}]"
        if isinstance(tool, dict) and "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}  # legacy `functions` entries
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            raise RowError(f"{at} must be {{\"type\": \"function\", \"function\": {{name, parameters}}}}")
        fn = tool["function"]
        text(fn.get("name"), f"{at}.function.name")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise RowError(f"{at}.function.parameters must be a JSON schema object")
        out.append({"type": "function", "function": fn})
    return out


def conversation(messages: list[dict], *, must_end_with_assistant: bool, parallel_tool_calls: Any = True) -> list[dict]:
    if not messages:
        raise RowError("no messages")
    if not isinstance(parallel_tool_calls, bool):
        raise RowError("parallel_tool_calls must be true or false")
    call_ids: set[str] = set()
    for i, msg in enumerate(messages):
        if msg["role"] == "system" and i != 0:
            raise RowError(f"message {i} is a system message; only the first message may be one")
        calls = msg.get("tool_calls") or []
        if len(calls) > 1 and not parallel_tool_calls:
            raise RowError(f"message {i} makes {len(calls)} tool calls but the row sets parallel_tool_calls: false")
        call_ids.update(c["id"] for c in calls if "id" in c)
        if msg["role"] == "tool":
            before = messages[i - 1] if i else None
            if before is None or not (before.get("tool_calls") or before["role"] == "tool"):
                raise RowError(f"message {i} is a tool result that does not follow an assistant's tool calls")
            if msg.get("tool_call_id") and call_ids and msg["tool_call_id"] not in call_ids:
                raise RowError(f"message {i} tool_call_id {msg['tool_call_id']!r} matches no earlier tool call")
    if not any(m["role"] == "user" for m in messages):
        raise RowError("no user message")
    if must_end_with_assistant and messages[-1]["role"] != "assistant":
        raise RowError(f"last message has role {messages[-1]['role']!r}; an SFT row must end with the assistant's answer")
    if must_end_with_assistant and all(m.get("weight", 1) == 0 for m in messages if m["role"] == "assistant"):
        raise RowError("every assistant message has weight 0: the row trains nothing")
    return messages
