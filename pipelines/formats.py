"""Row formats → the normal forms the trainers take.

SFT rows become one of
- chat: `{"messages": [...], "tools": [...]?}` ending with an assistant turn. Messages keep what
  training needs: role, content, and for assistants `tool_calls` (arguments as a mapping, as chat
  templates take them) and `weight` (0 = not trained); tool results keep `tool_call_id`/`name`.
- text: `{"text": "..."}` (continued pre-training: every token is trained);
- tokens: `{"input_ids": [...], "labels": [...]?}` (pre-tokenized; -100 marks an untrained token).
Preference rows become TRL's conversational form `{"prompt": [msgs], "chosen": [assistant msg],
"rejected": [assistant msg], "tools": [...]?}`.

Accepted as users have them: OpenAI chat fine-tuning JSONL (tools, tool_calls, tool messages,
weight, parallel_tool_calls; legacy functions/function_call converted), OpenAI and Together DPO
(`input` / `preferred_output` / `non_preferred_output`), Together conversational / instruction
(`prompt`/`completion`) / `text`, ShareGPT, Alpaca, hh-rlhf transcripts, plain .txt for continued
pre-training and pre-tokenized Parquet (`input_ids`, optional `labels`/`attention_mask`).

Every function raises `RowError(reason)` for a row it cannot normalise; the caller adds file and line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chat import messages as m
from chat.messages import RowError
from recipes.errors import LatheError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text", "tokens", "hh_rlhf")
PREFERENCE_FORMATS = ("openai_preference", "preference", "sharegpt", "hh_rlhf")

__all__ = ["RowError", "read_rows", "normalize_sft", "normalize_preference"]


# ---------------------------------------------------------------- reading

def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row): `line N` for JSONL and plain text, `item N` for a JSON array, `row N` for
    Parquet. A .txt file is continued-pre-training text: one document per paragraph (documents are
    separated by a blank line), each yielded as {"text": ...} at the line it starts on. Undecodable lines are yielded as RowError instances so the caller reports them like bad rows."""
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
    elif name.endswith(".txt"):
        yield from _paragraphs(path)
    else:
        raise LatheError(f"{path}: unsupported file type (expected .json, .jsonl, .jsonl.gz, .parquet or .txt)")


def _paragraphs(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise LatheError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    start, block = 0, []
    for number, line in enumerate(lines + [""], start=1):
        if line.strip():
            start = start or number
            block.append(line)
        elif block:
            yield f"line {start}", {"text": "\n".join(block)}
            start, block = 0, []


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
    if "input_ids" in row:
        return "tokens"
    if "text" in row:
        return "text"
    if "preferred_output" in row or ("chosen" in row and "rejected" in row):
        raise RowError("a preference row (chosen/rejected or preferred_output) in an SFT set: list it under "
                       "data.preference, which trains it with DPO")
    raise RowError(f"unknown row layout with keys {sorted(row)[:8]}; expected messages, conversations, "
                   f"instruction/output, prompt/completion, text or input_ids")


def _sharegpt(turns: Any) -> list[dict]:
    if not isinstance(turns, list):
        raise RowError("conversations must be a list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
            got = turn.get("from") if isinstance(turn, dict) else turn
            raise RowError(f"conversations[{i}].from is {got!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        value = m.text(turn.get("value"), f"conversations[{i}].value")
        if turn["from"] == "function_call":  # LLaMA-Factory: the value is the call as JSON text
            out.append(m.message({"role": "assistant", "content": None, "function_call": _json(value, f"conversations[{i}].value")}, i))
        else:
            out.append({"role": SHAREGPT_ROLES[turn["from"]], "content": value})
    return out


def _json(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RowError(f"{what} is not valid JSON: {exc.msg} at column {exc.colno}") from None


def _chat(row: dict, messages: Any, *, must_end_with_assistant: bool) -> dict:
    """Messages plus the row's tools (OpenAI's `tools`, or legacy `functions`)."""
    if not isinstance(messages, list):
        raise RowError("messages must be a list")
    checked = m.conversation([m.message(msg, i) for i, msg in enumerate(messages)],
                             must_end_with_assistant=must_end_with_assistant,
                             parallel_tool_calls=row.get("parallel_tool_calls", True))
    out: dict[str, Any] = {"messages": checked}
    declared = row.get("tools", row.get("functions"))
    if declared not in (None, "", []):
        out["tools"] = m.tools(declared, "tools" if "tools" in row else "functions")
    return out


def _tokens(row: dict, vocab_size: int | None) -> dict:
    ids = row.get("input_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise RowError("input_ids must be a non-empty list of integers")
    bad = [t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        raise RowError(f"input_ids holds {bad[0]}, outside the model's vocabulary (0..{(vocab_size or 0) - 1})")
    out: dict[str, Any] = {"input_ids": ids}
    for key in ("labels", "attention_mask"):
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != len(ids) or not all(isinstance(v, int) for v in value):
            raise RowError(f"{key} must be a list of integers as long as input_ids ({len(ids)})")
        out[key] = value
    if any(v not in (0, 1) for v in out.get("attention_mask", [])):
        raise RowError("attention_mask must hold 0 and 1 only")
    if any(v != -100 and v not in (t,) for v, t in zip(out.get("labels", []), ids)):
        raise RowError("labels must equal input_ids where trained and -100 where not (the shift happens in the model)")
    keep = out.pop("attention_mask", None)
    if keep is not None:  # padding positions are not part of the row
        out = {k: [v for v, bit in zip(vals, keep) if bit] for k, vals in out.items()}
    if not any(v != -100 for v in out.get("labels", out["input_ids"])):
        raise RowError("no token is trained (every label is -100)")
    return out


def normalize_sft(row: Any, fmt: str = "auto", *, vocab_size: int | None = None) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {type(row).__name__}")
    fmt = detect_sft_format(row) if fmt == "auto" else fmt
    if fmt == "messages":
        return _chat(row, row.get("messages"), must_end_with_assistant=True)
    if fmt == "text":
        return {"text": m.text(row.get("text"), "text")}
    if fmt == "tokens":
        return _tokens(row, vocab_size)
    if fmt == "hh_rlhf":  # SFT on the chosen transcript (explicit only: such rows are preference pairs)
        return {"messages": m.conversation(split_hh_transcript(row.get("chosen"), "chosen"), must_end_with_assistant=True)}
    if fmt == "sharegpt":
        given = {**row, "tools": _json(row["tools"], "tools")} if isinstance(row.get("tools"), str) and row["tools"] else row
        return {**_chat(given, _sharegpt(row.get("conversations")), must_end_with_assistant=True)}
    if fmt == "alpaca":
        instruction = m.text(row.get("instruction"), "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise RowError("input must be a string")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = []
        if row.get("system"):
            messages.append({"role": "system", "content": m.text(row["system"], "system")})
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": m.text(row.get("output"), "output")}]
    elif fmt == "prompt_completion":
        messages = [{"role": "user", "content": m.text(row.get("prompt"), "prompt")},
                    {"role": "assistant", "content": m.text(row.get("completion"), "completion")}]
    else:
        raise RowError(f"format {fmt!r} is not an SFT format (expected one of {', '.join(SFT_FORMATS)})")
    return {"messages": m.conversation(messages, must_end_with_assistant=True)}


# ---------------------------------------------------------------- preference

def _answer(value: Any, what: str) -> list[dict]:
    """chosen/rejected as a string, a {from,value}/{role,content} object, or a message list ending
    with the assistant's answer (OpenAI's preferred_output is a one-message list)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": m.text(value, what)}]
    if isinstance(value, dict) and "role" not in value:
        content = value.get("content", value.get("value"))
        return [{"role": "assistant", "content": m.text(content, what)}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value:
        msg = m.message(value[-1], len(value) - 1)
        if msg["role"] != "assistant":
            raise RowError(f"{what} must end with an assistant message")
        return [msg]
    raise RowError(f"{what} must be a string, an object or a message list")


def split_hh_transcript(text: str, what: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: …\\n\\nAssistant: …' → messages."""
    m.text(text, what)
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
        m.text(msg["content"], f"{what} turn {i}")
    return messages


def detect_preference_format(row: dict) -> str:
    if "preferred_output" in row or "non_preferred_output" in row:
        return "openai_preference"
    if "chosen" not in row or "rejected" not in row:
        raise RowError(f"a preference row needs chosen and rejected (or OpenAI's input, preferred_output and "
                       f"non_preferred_output); got keys {sorted(row)[:8]}")
    if "conversations" in row:
        return "sharegpt"
    if "prompt" in row:
        return "preference"
    if isinstance(row["chosen"], str) and "Human:" in row["chosen"]:
        return "hh_rlhf"
    raise RowError("preference row without a prompt: add `prompt`, or use full hh-rlhf transcripts")


def normalize_preference(row: Any, fmt: str = "auto") -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {type(row).__name__}")
    fmt = detect_preference_format(row) if fmt == "auto" else fmt
    extra: dict[str, Any] = {}
    if fmt == "hh_rlhf":
        chosen = split_hh_transcript(row.get("chosen"), "chosen")
        rejected = split_hh_transcript(row.get("rejected"), "rejected")
        if chosen[:-1] != rejected[:-1]:
            raise RowError("chosen and rejected transcripts do not share the same prompt")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    elif fmt == "openai_preference":  # OpenAI's DPO files, and Together's preference format
        given = row.get("input")
        if not isinstance(given, dict):
            raise RowError("input must be an object with messages (and optionally tools)")
        extra = _chat(given, given.get("messages"), must_end_with_assistant=False)
        prompt = extra.pop("messages")
        chosen = _answer(row.get("preferred_output"), "preferred_output")
        rejected = _answer(row.get("non_preferred_output"), "non_preferred_output")
    elif fmt == "sharegpt":
        prompt = _sharegpt(row.get("conversations"))
        chosen, rejected = _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected")
    elif fmt == "preference":
        raw = row.get("prompt")
        if isinstance(raw, list):
            prompt = [m.message(msg, i) for i, msg in enumerate(raw)]
        else:
            prompt = [{"role": "user", "content": m.text(raw, "prompt")}]
        chosen, rejected = _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected")
    else:
        raise RowError(f"format {fmt!r} is not a preference format (expected one of {', '.join(PREFERENCE_FORMATS)})")
    m.conversation(prompt, must_end_with_assistant=False)
    if prompt[-1]["role"] == "assistant":
        raise RowError("the prompt ends with an assistant turn; the answer being judged must be chosen/rejected")
    if chosen[0] == rejected[0]:
        raise RowError("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}
