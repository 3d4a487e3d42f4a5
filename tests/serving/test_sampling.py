"""Every sampling parameter is accepted, and the ones with a checkable effect have it.

The tiny random model's greedy reply repeats one token (its logits span ~1.4), which makes the
penalties visible: a penalty of 2 outweighs any logit gap, so a penalised token cannot come back.
"""

from __future__ import annotations

import pytest

from tests.serving.conftest import MODEL_NAME
from tests.tiny_model import CONTEXT

MESSAGES = [{"role": "user", "content": "what is the answer? reply with one number"}]


def _token_ids(client, **kwargs) -> list[int]:
    """Generated token ids, read from Together's integer logprobs form (`token_ids`)."""
    extra = kwargs.pop("extra_body", {})
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=30,
                                           extra_body={"logprobs": 0, **extra}, **kwargs)
    return reply.choices[0].logprobs.model_extra["token_ids"]


def test_greedy_baseline_repeats_one_token(client):
    assert len(set(_token_ids(client, temperature=0))) == 1  # what the penalty tests below change


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_openai_penalties_stop_greedy_repetition(client, penalty):
    ids = _token_ids(client, temperature=0, **{penalty: 2.0})
    assert len(ids) == 30
    assert len(set(ids)) == 30  # each generated token is pushed 2 below every other: none comes back


def test_negative_frequency_penalty_makes_sampling_repeat(client):
    plain = _token_ids(client, temperature=1.0, seed=0)
    rewarded = _token_ids(client, temperature=1.0, seed=0, frequency_penalty=-2.0)
    assert len(set(plain)) > 20  # the random model samples almost uniformly
    assert len(set(rewarded)) < 0.75 * len(set(plain))  # tokens already sampled keep coming back


def test_repetition_penalty(client):
    assert _token_ids(client, temperature=0, extra_body={"repetition_penalty": 1.0}) == \
        _token_ids(client, temperature=0)
    assert len(set(_token_ids(client, temperature=0, extra_body={"repetition_penalty": 10.0}))) > 10


def test_min_p_1_keeps_only_the_most_likely_token(client):
    greedy = _token_ids(client, temperature=0)
    assert _token_ids(client, temperature=1.5, seed=3, extra_body={"min_p": 1.0}) == greedy
    assert _token_ids(client, temperature=1.5, seed=3, extra_body={"min_p": 0.0}) != greedy


def test_every_sampling_parameter_at_once(client):
    everything = dict(temperature=0.8, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.3, stop=["\n\n", "zz"],
                      seed=1, n=2, max_tokens=12, logprobs=True, top_logprobs=2,
                      extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2,
                                  "context_length_exceeded_behavior": "error"})
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, **everything)
    again = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, **everything)
    assert [c.message.content for c in reply.choices] == [c.message.content for c in again.choices]
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
        assert len(choice.logprobs.content) >= 2  # min_tokens
    completion = client.completions.create(model=MODEL_NAME, prompt="the cat", logprobs=2, echo=True,
                                           **{k: v for k, v in everything.items() if k not in ("logprobs", "top_logprobs")})
    assert len(completion.choices) == 2


def test_together_integer_logprobs_add_parallel_lists(client):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=6, temperature=0)
    together = client.chat.completions.create(extra_body={"logprobs": 3}, **kwargs).choices[0].logprobs
    openai_form = client.chat.completions.create(logprobs=True, top_logprobs=3, **kwargs).choices[0].logprobs
    assert together.content == openai_form.content  # the OpenAI list is there either way
    assert "tokens" not in (openai_form.model_extra or {})
    extra = together.model_extra
    assert extra["tokens"] == [t.token for t in openai_form.content]
    assert extra["token_logprobs"] == [t.logprob for t in openai_form.content]
    assert [len(top) for top in extra["top_logprobs"]] == [3] * 6
    assert len(extra["token_ids"]) == 6


def test_truncate_lowers_max_tokens_instead_of_400(client):
    prompt = [[5] * (CONTEXT - 12)]  # all but 12 of the context's tokens
    out = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=100, temperature=0,
                                    extra_body={"context_length_exceeded_behavior": "truncate"})
    assert out.usage.completion_tokens <= 12 and out.usage.total_tokens <= CONTEXT
    assert out.choices[0].finish_reason in ("length", "stop")
