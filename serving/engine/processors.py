"""transformers logits processors for what `GenerationConfig` has no setting for.

- `LogprobRecorder` keeps each step's log-probabilities (it changes nothing).
- `OpenAIPenalties`: OpenAI's presence/frequency penalties. transformers only has the multiplicative
  `repetition_penalty` (which the engine passes through GenerationConfig); the additive OpenAI ones
  are two lines of arithmetic over the generated tokens' counts, as in OpenAI's and vLLM's docs.
- `GuidedDecoding`: constrained decoding with llguidance (a maintained Rust library, also a vLLM
  backend): its matcher follows the sampled tokens and masks every token the grammar forbids.

transformers runs custom processors after its own (repetition penalty, min_new_tokens) and before the
sampling warpers (temperature, top-k/p, min-p), so the mask also holds for greedy decoding.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from serving.engine.base import Guide
from serving.engine.grammar import compile_grammar

log = logging.getLogger("lathe.serving")


class LogprobRecorder(LogitsProcessor):
    """Keeps the last step's log-probabilities: first in the list, so they are the model's
    distribution before OpenAI penalties, constraints and temperature/top-k/top-p (vLLM's default)."""

    def __init__(self) -> None:
        self.last: Any = None

    def __call__(self, input_ids, scores):
        self.last = torch.log_softmax(scores[0].float(), dim=-1)
        return scores


class OpenAIPenalties(LogitsProcessor):
    """logit[t] -= presence * (t was generated) + frequency * (times t was generated).

    Only the completion counts, not the prompt (OpenAI's definition)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len = prompt_len
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class GuidedDecoding(LogitsProcessor):
    def __init__(self, ll_tokenizer: Any, guide: Guide, prompt_len: int) -> None:
        from llguidance import LLMatcher

        self.matcher = LLMatcher(ll_tokenizer, compile_grammar(guide))
        if self.matcher.is_error():
            raise ValueError(f"invalid grammar: {self.matcher.get_error()}")
        self.prompt_len = prompt_len
        self.consumed = 0

    def __call__(self, input_ids, scores):
        new_tokens = input_ids[0, self.prompt_len + self.consumed:].tolist()
        self.consumed += len(new_tokens)
        if new_tokens and not self.matcher.consume_tokens(new_tokens):
            log.error("constrained decoding: the grammar rejected a sampled token: %s", self.matcher.get_error())
        allowed = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.from_numpy(allowed[:scores.shape[-1]].astype(bool)).to(scores.device)
        if allowed.shape[0] < scores.shape[-1]:  # model rows past the tokenizer's vocabulary: never allowed
            allowed = torch.nn.functional.pad(allowed, (0, scores.shape[-1] - allowed.shape[0]))
        return scores.masked_fill(~allowed, float("-inf"))
