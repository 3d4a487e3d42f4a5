"""Suite `tools`: does the model call the right function with the right arguments?

BFCL v4 items (`<mirror>/bfcl`, see ../shared/data/PROVENANCE.md; Apache-2.0) are asked the way
`lathe serve` asks (chat/templates.py: the model's own template, the tools inlined where it has no
tool syntax), answered greedily and without constraints — the model must decide to call, as with
`tool_choice: auto` — and the calls are read with the server's syntax (chat/tool_calls.py).

Scored with BFCL's AST rule, written here:
- the model makes as many calls as expected (order free for `parallel`), each to the right function;
- every argument it passes is a parameter of that function with an accepted value (strings compared
  as BFCL does: case, spaces and `,./-_*^` ignored; an integer is accepted for a float);
- every required argument (one whose accepted values do not include "") is passed.

Held out: an item is held out when the first byte of sha256(id) is even (about half). The suite
scores held-out items only; `training_rows` turns the others into OpenAI chat rows with tool calls
(the first accepted value of each required argument), so a recipe can teach tool use and be judged on
items it never saw (`data.tools`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

SETS = ("simple_python", "multiple", "parallel")
_TYPES = {"dict": "object", "float": "number", "tuple": "array", "integer": "integer", "string": "string",
          "boolean": "boolean", "array": "array"}


@dataclass
class Item:
    id: str
    messages: list[dict]
    tools: list[dict]
    ground_truth: list[dict]  # [{function name: {argument: [accepted values]}}]


def files(mirror: Path, subset: str) -> tuple[Path, Path]:
    return mirror / "bfcl" / f"BFCL_v4_{subset}.json", mirror / "bfcl" / f"BFCL_v4_{subset}_answers.json"


def load_items(mirror: Path, subset: str) -> list[Item]:
    questions, answers = files(mirror, subset)
    truth = {row["id"]: row["ground_truth"] for row in _jsonl(answers)}
    return [Item(row["id"], row["question"][0], openai_tools(row["function"]), truth[row["id"]])
            for row in _jsonl(questions)]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def openai_tools(functions: list[dict]) -> list[dict]:
    """BFCL's function specs as OpenAI tools (its Python-flavoured types as JSON schema)."""
    return [{"type": "function", "function": {"name": f["name"], "description": f.get("description", ""),
                                              "parameters": _schema(f.get("parameters", {}))}} for f in functions]


def _schema(node):
    if isinstance(node, list):
        return [_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _schema(v) for k, v in node.items() if k != "type"}
    kind = node.get("type")
    if isinstance(kind, str) and kind in _TYPES:
        out["type"] = _TYPES[kind]
    return out


def held_out(item_id: str) -> bool:
    return hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0


# ---------------------------------------------------------------- the rule

def _norm(value):
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return re.sub(r"[ ,./\-_*^]", "", value).lower().replace("'", '"')
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def check_call(name: str, arguments: dict, expected: dict) -> str | None:
    """None when the call matches one expected call `{function: {argument: [accepted]}}`, else why not."""
    (want, params), = expected.items()
    if name != want:
        return f"called {name}, expected {want}"
    if not isinstance(arguments, dict):
        return "arguments are not an object"
    for arg, value in arguments.items():
        if arg not in params:
            return f"unexpected argument {arg}"
        accepted = [a for a in params[arg] if a != ""]
        if _norm(value) not in [_norm(a) for a in accepted]:
            return f"{arg}={json.dumps(value)} not in {json.dumps(accepted)}"
    missing = [arg for arg, accepted in params.items() if "" not in accepted and arg not in arguments]
    return f"missing {', '.join(missing)}" if missing else None


def check(calls: list[tuple[str, dict]], ground_truth: list[dict]) -> str | None:
    """None when the calls are right (each expected call matched by a distinct call), else why not."""
    if not calls:
        return "no tool call"
    if len(calls) != len(ground_truth):
        return f"{len(calls)} calls, expected {len(ground_truth)}"
    unmatched = list(calls)
    for expected in ground_truth:
        reasons = [check_call(name, args, expected) for name, args in unmatched]
        if None not in reasons:
            return reasons[0]
        unmatched.pop(reasons.index(None))
    return None


# ---------------------------------------------------------------- training rows and the suite

def training_rows(mirror: Path, subset: str) -> list[dict]:
    """The items that are not held out, as OpenAI chat rows with tools and the expected call(s)."""
    rows = []
    for item in load_items(mirror, subset):
        if held_out(item.id):
            continue
        calls = [{"id": f"call_{i}", "type": "function", "function": {
            "name": name, "arguments": {arg: accepted[0] for arg, accepted in params.items() if "" not in accepted}}}
            for i, (name, params) in enumerate(next(iter(c.items())) for c in item.ground_truth)]
        rows.append({"messages": item.messages + [{"role": "assistant", "content": None, "tool_calls": calls}],
                     "tools": item.tools})
    return rows


def evaluate(model_dir: Path, mirror: Path, subsets: list[str], *, limit: int | None, samples_path: Path,
             max_new_tokens: int = 128, device: str = "cpu", dtype: str = "float32") -> dict:
    """The suite entry: accuracy over held-out items of each subset, with per-item samples."""
    from chat.templates import chat_format
    from chat.tool_calls import extract_calls
    from eval import records
    from eval.retention import load

    started = time.time()
    model, tokenizer = load(model_dir, device, dtype)
    fmt = chat_format(tokenizer)
    rows = []
    for subset in subsets:
        items = [item for item in load_items(mirror, subset) if held_out(item.id)][:limit]
        prompts = []
        for item in items:
            messages, tools = fmt.conversation(item.messages, item.tools)
            prompts.append(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True))
        for item, text in zip(items, _generate(model, tokenizer, prompts, max_new_tokens)):
            _, calls = extract_calls(text)
            reason = check(calls, item.ground_truth)
            rows.append({"task": f"tools_{subset}", "doc_id": item.id, "part": subset,
                         "prompt": item.messages[-1]["content"], "target": json.dumps(item.ground_truth),
                         "response": text, "correct": reason is None, "reason": reason or "right",
                         "metrics": {"acc": float(reason is None), f"{subset}_acc": float(reason is None)}})
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    samples_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    metrics: dict[str, float | None] = {}
    for name, part in [("acc", rows)] + [(f"{s}_acc", [r for r in rows if r["task"] == f"tools_{s}"]) for s in subsets]:
        p = sum(r["metrics"]["acc"] for r in part) / len(part) if part else None
        metrics[name] = p
        metrics[f"{name}_stderr"] = math.sqrt(p * (1 - p) / (len(part) - 1)) if p is not None and len(part) > 1 else None
    return {"status": "ok", "metrics": metrics, "primary": "acc", "n": len(rows), "examples": records.examples(rows),
            "duration_s": round(time.time() - started, 1)}


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    import torch

    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return out
