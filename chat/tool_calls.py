"""The tool-call syntax: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, calls separated by a
newline — the Hermes/Qwen convention. Chat templates without tool syntax of their own are extended
with it (chat/templates.py), training data is rendered in it, the server constrains generation to it
(serving/structured.py) and parses it back with `parse_call`. Changing it here changes all of them.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
CALL_SEPARATOR = "\n"


def format_call(name: str, arguments: Any) -> str:
    """One call as the model writes it: compact JSON (no spaces), the only JSON the server's
    constrained decoding allows (serving/engine/grammar.py: no free whitespace)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False, separators=(",", ":"))
    return f"{TOOL_OPEN}{body}{TOOL_CLOSE}"


def format_calls(calls: list[dict]) -> str:
    """Calls in OpenAI's shape (`{"function": {"name", "arguments"}}`, arguments a mapping)."""
    return CALL_SEPARATOR.join(format_call(c["function"]["name"], c["function"]["arguments"]) for c in calls)


def parse_call(body: str) -> tuple[str, dict] | None:
    """The text between the tags → (name, arguments), or None when it is not a call."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    return data["name"], data.get("arguments", data.get("parameters", {}))


def extract_calls(text: str) -> tuple[str, list[tuple[str, dict]]]:
    """A finished answer → (the text outside the calls, [(name, arguments)]). Text in call tags that is
    not a call stays text, as the server's streaming extractor keeps it."""
    content, calls, at = [], [], 0
    while (start := text.find(TOOL_OPEN, at)) != -1 and (end := text.find(TOOL_CLOSE, start)) != -1:
        parsed = parse_call(text[start + len(TOOL_OPEN):end])
        content.append(text[at:start] if parsed else text[at:end + len(TOOL_CLOSE)])
        if parsed:
            calls.append(parsed)
        at = end + len(TOOL_CLOSE)
    content.append(text[at:])
    return "".join(content), calls


def tools_prompt(tools: list[dict]) -> str:
    """How a model whose chat template has no tool syntax is told about the tools (the Hermes/Qwen
    wording, with this module's call syntax), appended to the system message."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            f"{TOOL_OPEN}{TOOL_CLOSE} XML tags:\n"
            f'{TOOL_OPEN}{{"name":<function-name>,"arguments":<args-json-object>}}{TOOL_CLOSE}')


def tool_result(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


def inline_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """A tool conversation as plain system/user/assistant text for a template without tool syntax:
    the tools join the system message, an assistant's calls follow its content in the call syntax, and
    tool results (consecutive ones together) become one user turn in <tool_response> tags. Message
    order and the number of assistant turns are kept, so per-turn weights still line up."""
    out: list[dict] = []
    rest = messages
    if tools:
        if messages and messages[0]["role"] == "system":
            out.append({**messages[0], "content": f"{messages[0]['content']}\n\n{tools_prompt(tools)}"})
            rest = messages[1:]
        else:
            out.append({"role": "system", "content": tools_prompt(tools)})
    previous_role = None
    for message in rest:
        role = message["role"]
        if role == "assistant" and message.get("tool_calls"):
            text = message.get("content") or ""
            calls = format_calls(message["tool_calls"])
            plain = {k: v for k, v in message.items() if k != "tool_calls"}
            out.append({**plain, "content": f"{text}{CALL_SEPARATOR}{calls}" if text else calls})
        elif role == "tool" and previous_role == "tool":
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n{tool_result(message['content'])}"}
        elif role == "tool":
            out.append({"role": "user", "content": tool_result(message["content"])})
        else:
            out.append(message)
        previous_role = role
    return out
