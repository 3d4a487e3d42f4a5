"""Row formats → the two normal forms the trainers take.

SFT rows become `{"messages": [{"role", "content"}, ...]}` ending with an assistant turn.
Preference rows become TRL's conversational form `{"prompt": [msgs], "chosen": [assistant msg],
"rejected": [assistant msg]}`.

Every function raises `RowError(reason)` for a row it cannot normalise; the caller adds file and line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recipes.errors import LatheError

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}


class RowError(ValueError):
    """A row that cannot be normalised; the message says why."""


# ---------------------------------------------------------------- reading

def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row): `line N` for JSONL, `item N` for a JSON array, `row N` for Parquet.
    Undecodable lines are yielded as RowError instances so the caller reports them like bad rows."""
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    yield f"line {number}", json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    yield f"line {number}", RowError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                except json.JSONDecodeError as exc:
                    yield f"line {number}", RowError(f"not valid JSON: {exc.msg} at column {exc.colno}")
    elif name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatheError(f"{path}: not a valid JSON file: {exc}") from None
        if not isinstance(data, list):
            raise LatheError(f"{path}: a .json dataset must be an array of rows (use .jsonl for one row per line)")
        for number, row in enumerate(data, start=1):
            yield f"item {number}", row
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"row {number}", row
    else:
        raise LatheError(f"{path}: unsupported file type (expected .json, .jsonl, .jsonl.gz or .parquet)")


# ---------------------------------------------------------------- checks

def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{what} holds invalid unicode (a lone surrogate)") from None
    if not value.strip():
        raise RowError(f"{what} is empty")
    return value


def _message(msg: Any, index: int) -> dict[str, str]:
    if not isinstance(msg, dict):
        raise RowError(f"message {index} must be an object with role and content")
    role = msg.get("role")
    if role not in ROLES:
        raise RowError(f"message {index} has role {role!r}; expected one of {sorted(ROLES)}")
    return {"role": role, "content": _text(msg.get("content"), f"message {index} content")}


def check_conversation(messages: list[dict[str, str]], *, must_end_with_assistant: bool) -> list[dict[str, str]]:
    if not messages:
        raise RowError("no messages")
    for i, msg in enumerate(messages):
        if msg["role"] == "system" and i != 0:
            raise RowError(f"message {i} is a system message; only the first message may be one")
    if not any(m["role"] == "user" for m in messages):
        raise RowError("no user message")
    if must_end_with_assistant and messages[-1]["role"] != "assistant":
        raise RowError(f"last message has role {messages[-1]['role']!r}; an SFT row must end with the assistant's answer")
    return messages


# ---------------------------------------------------------------- SFT

def detect_sft_format(row: dict) -> str:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    raise RowError(f"unknown row layout with keys {sorted(row)[:8]}; expected messages, conversations, "
                   f"instruction/output or prompt/completion")


def _sharegpt(turns: Any) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise RowError("conversations must be a list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
            got = turn.get("from") if isinstance(turn, dict) else turn
            raise RowError(f"conversations[{i}].from is {got!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        out.append({"role": SHAREGPT_ROLES[turn["from"]], "content": _text(turn.get("value"), f"conversations[{i}].value")})
    return out


def normalize_sft(row: Any, fmt: str = "auto") -> dict[str, list[dict[str, str]]]:
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {type(row).__name__}")
    fmt = detect_sft_format(row) if fmt == "auto" else fmt
    if fmt == "messages":
        if not isinstance(row.get("messages"), list):
            raise RowError("messages must be a list")
        messages = [_message(m, i) for i, m in enumerate(row["messages"])]
    elif fmt == "sharegpt":
        messages = _sharegpt(row.get("conversations"))
    elif fmt == "alpaca":
        instruction = _text(row.get("instruction"), "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise RowError("input must be a string")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = []
        if row.get("system"):
            messages.append({"role": "system", "content": _text(row["system"], "system")})
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row.get("output"), "output")}]
    elif fmt == "prompt_completion":
        messages = [{"role": "user", "content": _text(row.get("prompt"), "prompt")},
                    {"role": "assistant", "content": _text(row.get("completion"), "completion")}]
    else:
        raise RowError(f"format {fmt!r} is not an SFT format")
    return {"messages": check_conversation(messages, must_end_with_assistant=True)}


# ---------------------------------------------------------------- preference

def _answer(value: Any, what: str) -> list[dict[str, str]]:
    """chosen/rejected as a string, a {from,value}/{role,content} object, or a message list."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, what)}]
    if isinstance(value, dict):
        content = value.get("content", value.get("value"))
        return [{"role": "assistant", "content": _text(content, what)}]
    if isinstance(value, list) and value:
        msg = _message(value[-1], len(value) - 1)
        if msg["role"] != "assistant":
            raise RowError(f"{what} must end with an assistant message")
        return [msg]
    raise RowError(f"{what} must be a string, an object or a message list")


def split_hh_transcript(text: str, what: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: …\\n\\nAssistant: …' → messages."""
    _text(text, what)
    messages = []
    for chunk in text.split("\n\n"):
        if chunk.startswith("Human:"):
            messages.append({"role": "user", "content": chunk[len("Human:"):].strip()})
        elif chunk.startswith("Assistant:"):
            messages.append({"role": "assistant", "content": chunk[len("Assistant:"):].strip()})
        elif messages:  # a paragraph break inside a turn
            messages[-1]["content"] += "\n\n" + chunk
        elif chunk.strip():
            raise RowError(f"{what} does not start with 'Human:'")
    if not messages or messages[-1]["role"] != "assistant":
        raise RowError(f"{what} does not end with an 'Assistant:' turn")
    for i, msg in enumerate(messages):
        # A marker after a single newline means the turns cannot be told apart reliably.
        content = "\n" + msg["content"]
        if "\nHuman:" in content or "\nAssistant:" in content:
            raise RowError(f"{what} turn {i} holds a 'Human:'/'Assistant:' marker that is not at a turn boundary")
        _text(msg["content"], f"{what} turn {i}")
    return messages


def detect_preference_format(row: dict) -> str:
    if "chosen" not in row or "rejected" not in row:
        raise RowError(f"a preference row needs chosen and rejected; got keys {sorted(row)[:8]}")
    if "conversations" in row:
        return "sharegpt"
    if "prompt" in row:
        return "preference"
    if isinstance(row["chosen"], str) and "Human:" in row["chosen"]:
        return "hh_rlhf"
    raise RowError("preference row without a prompt: add `prompt`, or use full hh-rlhf transcripts")


def normalize_preference(row: Any, fmt: str = "auto") -> dict[str, list[dict[str, str]]]:
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {type(row).__name__}")
    fmt = detect_preference_format(row) if fmt == "auto" else fmt
    if fmt == "hh_rlhf":
        chosen = split_hh_transcript(row.get("chosen"), "chosen")
        rejected = split_hh_transcript(row.get("rejected"), "rejected")
        if chosen[:-1] != rejected[:-1]:
            raise RowError("chosen and rejected transcripts do not share the same prompt")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    elif fmt == "sharegpt":
        prompt = _sharegpt(row.get("conversations"))
        chosen, rejected = _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected")
    elif fmt == "preference":
        raw = row.get("prompt")
        if isinstance(raw, list):
            prompt = [_message(m, i) for i, m in enumerate(raw)]
        else:
            prompt = [{"role": "user", "content": _text(raw, "prompt")}]
        chosen, rejected = _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected")
    else:
        raise RowError(f"format {fmt!r} is not a preference format")
    check_conversation(prompt, must_end_with_assistant=False)
    if prompt[-1]["role"] == "assistant":
        raise RowError("the prompt ends with an assistant turn; the answer being judged must be chosen/rejected")
    if chosen[0]["content"] == rejected[0]["content"]:
        raise RowError("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
