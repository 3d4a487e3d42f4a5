"""Exact-answer rewards for the RL stage (TRL GRPO reward functions).

TRL calls each function as `f(prompts=..., completions=..., completion_ids=..., **columns)` with one
entry per sampled completion; the dataset's `answer` column arrives as `answer`. A completion is a
string for plain prompts or a list of messages (`[{"role": "assistant", "content": ...}]`) for chat
prompts. Each function returns one float per completion.

- `exact_match`: the stripped completion equals the stripped answer — the skills suite's metric
  (eval/suites.py `skills_suite`), so RL optimises exactly what the gate measures.
- `number_match`: GSM8K-style. The number after `#### ` if there is one, else the last number in
  the text (lm-eval's gsm8k "strict-match" and "flexible-extract" filters), compared after dropping
  thousands separators, a leading `$` and a trailing `.` / `.0`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")           # lm-eval gsm8k strict-match
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval gsm8k flexible-extract (last match)


def completion_text(completion) -> str:
    """The generated text of one completion, plain or conversational."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def normalize_number(text: str) -> str | None:
    """'1,234.00' → '1234', '$5' → '5', '7.' → '7'; None when no digit is left."""
    value = text.strip().lstrip("$").replace(",", "").rstrip(".")
    if not re.search(r"\d", value):
        return None
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    if value in ("-0", ""):
        value = "0"
    return value


def extract_number(text: str) -> str | None:
    """The answer number of a GSM8K-style text: `#### N` first, else the last number."""
    strict = STRICT.findall(text)
    if strict:
        return normalize_number(strict[-1])
    for match in reversed(FLEXIBLE.findall(text)):
        number = normalize_number(match[0] or match[1])
        if number is not None:
            return number
    return None


def exact_match(completions: list, answer: list, **_) -> list[float]:
    return [float(completion_text(c).strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def number_match(completions: list, answer: list, **_) -> list[float]:
    rewards = []
    for c, a in zip(completions, answer, strict=True):
        got, want = extract_number(completion_text(c)), extract_number(str(a))
        rewards.append(float(got is not None and got == want))
    return rewards


REWARDS: dict[str, Callable[..., list[float]]] = {"exact_match": exact_match, "number_match": number_match}
