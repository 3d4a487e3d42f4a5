"""Token ids -> text deltas, with OpenAI stop-string semantics.

The stop string itself is never sent, and while streaming, text that might be the start of a
stop string is held back until it is clear that it is not. Streaming and non-streaming use this
same class, so the concatenated deltas equal the non-streamed text.
"""

from __future__ import annotations

from typing import Callable, Sequence


class IncrementalText:
    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._sent = 0  # characters of the final text already returned
        self.stopped = False  # a stop string matched; the caller should end generation

    def add(self, token_id: int) -> str:
        """Take one more token; return the text that is now safe to send (may be '')."""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):  # a multi-byte character is split across tokens: wait for the rest
            return ""
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            return self._send_until(text, cut)
        return self._send_until(text, len(text) - self._partial_stop_len(text))

    def flush(self) -> str:
        """Generation ended without a stop string: send whatever is held back."""
        if self.stopped:
            return ""
        return self._send_until(self._decode(self._ids), None)

    def _send_until(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        piece = text[self._sent:end]
        self._sent = max(self._sent, end)
        return piece

    def _first_stop(self, text: str) -> int | None:
        # A stop string can only newly appear in the unsent tail (plus its own length of overlap).
        hits = [i for s in self._stop if (i := text.find(s, max(0, self._sent - len(s) + 1))) != -1]
        return min(hits) if hits else None

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
