"""/v1/chat/completions through the official openai client against the real server."""

from __future__ import annotations

from tests.serving.conftest import MODEL_NAME

MESSAGES = [{"role": "user", "content": "what is the answer? reply with one number"}]


def _chat(client, **kwargs):
    return client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, **kwargs)


def _streamed(client, **kwargs) -> tuple[dict[int, str], dict[int, str], list]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    chunks = list(_chat(client, stream=True, **kwargs))
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return texts, finish, chunks


def test_non_streaming_reply_uses_the_chat_template_and_counts_tokens(client, tiny_model_dir):
    from transformers import AutoTokenizer

    reply = _chat(client, max_tokens=8, temperature=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert reply.object == "chat.completion" and reply.model == MODEL_NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_ends_with_finish_reason_length(client):
    reply = _chat(client, max_tokens=3, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_streamed_deltas_equal_the_non_streamed_text(client):
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "seed": 11}):
        whole = _chat(client, max_tokens=24, **kwargs).choices[0]
        texts, finish, chunks = _streamed(client, max_tokens=24, **kwargs)
        assert texts == {0: whole.message.content}
        assert finish == {0: whole.finish_reason}
        assert chunks[0].choices[0].delta.role == "assistant"


def test_include_usage_puts_usage_in_a_last_chunk_without_choices(client):
    whole = _chat(client, max_tokens=10, temperature=1.0, seed=5)
    _, _, chunks = _streamed(client, max_tokens=10, temperature=1.0, seed=5, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    _, _, plain = _streamed(client, max_tokens=10, temperature=1.0, seed=5)
    assert all(c.usage is None for c in plain) and plain[-1].choices


def test_same_seed_same_sample_other_seed_other_sample(client):
    first = _chat(client, max_tokens=16, temperature=1.0, seed=7).choices[0].message.content
    again = _chat(client, max_tokens=16, temperature=1.0, seed=7).choices[0].message.content
    other = _chat(client, max_tokens=16, temperature=1.0, seed=8).choices[0].message.content
    assert first == again
    assert first != other


def test_top_k_1_is_greedy(client):
    greedy = _chat(client, max_tokens=12, temperature=0).choices[0].message.content
    top1 = _chat(client, max_tokens=12, temperature=1.5, seed=3, extra_body={"top_k": 1}).choices[0].message.content
    assert top1 == greedy


def test_stop_string_truncates_before_it_streaming_or_not(client):
    sample = dict(max_tokens=40, temperature=1.0, seed=21)
    full = _chat(client, **sample).choices[0].message.content
    middle = len(full) // 2
    stop = full[middle:middle + 3]
    assert len(stop) == 3 and "\ufffd" not in stop, f"pick another seed: {full!r}"
    expected = full[:full.find(stop)]

    reply = _chat(client, stop=[stop, "never-appears"], **sample).choices[0]
    assert reply.message.content == expected
    assert reply.finish_reason == "stop"
    texts, finish, _ = _streamed(client, stop=[stop], **sample)
    assert texts == {0: expected} and finish == {0: "stop"}


def test_n_choices_are_distinct_numbered_and_reproducible(client):
    reply = _chat(client, n=2, max_tokens=12, temperature=1.0, seed=4)
    assert [c.index for c in reply.choices] == [0, 1]
    texts = [c.message.content for c in reply.choices]
    assert texts[0] != texts[1]
    streamed, finish, _ = _streamed(client, n=2, max_tokens=12, temperature=1.0, seed=4)
    assert streamed == {0: texts[0], 1: texts[1]} and set(finish) == {0, 1}
    # choice i samples with seed + i: each equals a single-choice request with that seed
    singles = [_chat(client, max_tokens=12, temperature=1.0, seed=s) for s in (4, 5)]
    assert [r.choices[0].message.content for r in singles] == texts
    assert reply.usage.completion_tokens == sum(r.usage.completion_tokens for r in singles)
    assert reply.usage.prompt_tokens == singles[0].usage.prompt_tokens  # the prompt is counted once


def test_logprobs_are_the_models_distribution(client):
    reply = _chat(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for token in content:
        assert len(token.top_logprobs) == 3
        # greedy picks the most likely token, so it is the first alternative
        assert token.logprob == token.top_logprobs[0].logprob
        assert token.logprob <= 0


def test_unknown_fields_are_ignored_and_logged(client, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="lathe.serving")
    reply = _chat(client, max_tokens=2, temperature=0, extra_body={"best_effort_magic": True})
    assert reply.choices[0].message.content is not None
    assert any("best_effort_magic" in r.getMessage() for r in caplog.records)


def test_control_tokens_inside_messages_are_plain_text(client):
    def prompt_tokens(content: str) -> int:
        reply = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": content}],
                                               max_tokens=1, temperature=0)
        return reply.usage.prompt_tokens

    # A message cannot close its own turn and forge a system turn: '<|im_end|>' is encoded as text,
    # several ordinary tokens, not the one control token.
    assert prompt_tokens("<|im_end|>") - prompt_tokens("") > 1
