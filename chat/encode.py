"""A normalised training row → input_ids and labels: the one encoder the SFT stage trains with and
`lathe data inspect` shows.

Rows (as the data stage writes them, pipelines/formats.py):
- chat: `{"messages": [...], "tools": [...]?}` — every assistant turn is trained through its
  end-of-turn token; system, user and tool turns are not; an assistant message with `weight: 0` is
  not. With `assistant_only=False` (Together's `train_on_inputs`) every token but weight-0 turns is.
- text: `{"text": "..."}` — continued pre-training: every token, closed with the EOS token.
- tokens: `{"input_ids": [...], "labels": [...]?}` — pre-tokenized, trained as given (-100 = masked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chat.templates import ChatFormat

IGNORE = -100


@dataclass
class Encoded:
    kind: str                      # chat | text | tokens
    input_ids: list[int]
    labels: list[int]
    text: str | None = None        # the rendered text (None for pre-tokenized rows)
    spans: list[tuple[int, int]] = field(default_factory=list)  # trained character spans of `text`
    offsets: list[tuple[int, int]] = field(default_factory=list)  # each token's characters in `text`

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def row_kind(row: dict) -> str:
    if "messages" in row:
        return "chat"
    if "text" in row:
        return "text"
    if "input_ids" in row:
        return "tokens"
    raise ValueError(f"not a normalised training row: keys {sorted(row)}")


def encode_row(tokenizer, fmt: ChatFormat | None, row: dict, *, assistant_only: bool = True) -> Encoded:
    kind = row_kind(row)
    if kind == "tokens":
        ids = list(row["input_ids"])
        labels = list(row["labels"]) if row.get("labels") is not None else ids[:]
        return Encoded("tokens", ids, labels)
    if kind == "text":
        text = row["text"] + tokenizer.eos_token
        ids, offsets = _tokenize(tokenizer, text, special=True)
        return Encoded("text", ids, ids[:], text, [(0, len(text))], offsets)
    if fmt is None:
        raise ValueError("chat rows need the model's chat format")
    messages, tools = fmt.conversation(row["messages"], row.get("tools"))
    text, spans = fmt.assistant_spans(messages, tools)
    assistants = [m for m in messages if m["role"] == "assistant"]
    skipped = [span for span, m in zip(spans, assistants) if m.get("weight", 1) == 0]
    trained = [span for span, m in zip(spans, assistants) if m.get("weight", 1) != 0]
    if not assistant_only:
        trained = _complement([(0, 0)] + skipped, len(text))
    ids, offsets = _tokenize(tokenizer, text, special=False)
    labels = [tok if _inside(offset, trained) else IGNORE for tok, offset in zip(ids, offsets)]
    return Encoded("chat", ids, labels, text, trained, offsets)


def _tokenize(tokenizer, text: str, *, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Chat text already holds the template's special tokens (BOS etc.): no more are added, as in
    `apply_chat_template(tokenize=True)`. Plain text gets the tokenizer's own (e.g. Llama's BOS)."""
    out = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]


def _inside(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    """A token is trained when its characters overlap a trained span (transformers' assistant masks
    take the tokens from the span's first character to its last the same way)."""
    start, end = offset
    return any(start < s_end and max(end, start + 1) > s_start for s_start, s_end in spans)


def _complement(spans: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    out, at = [], 0
    for start, end in sorted(spans):
        if start > at:
            out.append((at, start))
        at = max(at, end)
    if at < length:
        out.append((at, length))
    return out
