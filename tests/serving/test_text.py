"""IncrementalText: streamed pieces always add up to the final text, cut before the first stop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from serving.text import IncrementalText

pieces = st.lists(st.text(alphabet="ab\n", min_size=1, max_size=3), max_size=12)
stops = st.lists(st.text(alphabet="ab\n", min_size=1, max_size=3), max_size=3)


def _reference(tokens: list[str], stop: list[str]) -> tuple[str, bool]:
    """Non-incremental: after each token, is a stop string in the text so far? Cut at the earliest."""
    for k in range(1, len(tokens) + 1):
        text = "".join(tokens[:k])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[:min(hits)], True
    return "".join(tokens), False


def _stream(tokens: list[str], stop: list[str]) -> tuple[str, bool]:
    vocab = {i: t for i, t in enumerate(tokens)}
    text = IncrementalText(lambda ids: "".join(vocab[i] for i in ids), stop)
    out = ""
    for i in range(len(tokens)):
        out += text.add(i)
        if text.stopped:
            return out, True
    return out + text.flush(), False


@settings(max_examples=300, deadline=None)
@given(pieces, stops)
def test_streamed_text_equals_the_reference(tokens, stop):
    assert _stream(tokens, stop) == _reference(tokens, stop)


def test_a_possible_stop_prefix_is_held_back_until_resolved():
    vocab = {0: "the an", 1: "swer", 2: "t"}
    text = IncrementalText(lambda ids: "".join(vocab[i] for i in ids), ["ant"])
    assert text.add(0) == "the "  # "an" might begin "ant"
    assert text.add(1) == "answer"  # it did not
    assert text.flush() == ""


def test_an_incomplete_character_waits_for_its_next_byte():
    raw = "é".encode()
    text = IncrementalText(lambda ids: bytes(raw[i] for i in ids).decode("utf-8", errors="replace"))
    assert text.add(0) == ""
    assert text.add(1) == "é"
