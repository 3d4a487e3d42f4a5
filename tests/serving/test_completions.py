"""/v1/completions, including the echo + logprobs scoring path lm-eval's local-completions uses."""

from __future__ import annotations

import pytest

from tests.serving.conftest import MODEL_NAME


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The same model loaded directly with transformers: the golden source of log-probabilities."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(tiny_model_dir),
            AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())


def _forward_logprobs(model, ids: list[int]):
    import torch

    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_echo_logprobs_equal_a_direct_forward_pass(client, reference):
    tokenizer, model = reference
    ids = tokenizer.encode("the cat sat on the mat and what is the answer")
    out = client.completions.create(model=MODEL_NAME, prompt=[ids], max_tokens=1, temperature=0, echo=True,
                                    logprobs=1)
    choice = out.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) + 1  # the prompt and the one generated token
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None

    expected = _forward_logprobs(model, ids)
    for pos in range(1, len(ids)):
        want = expected[pos - 1, ids[pos]].item()
        assert lp.token_logprobs[pos] == pytest.approx(want, abs=1e-4)
        best = expected[pos - 1].max().item()
        assert max(lp.top_logprobs[pos].values()) == pytest.approx(best, abs=1e-4)
        assert lp.tokens[pos] in lp.top_logprobs[pos]  # the chosen token is always listed
    # the generated token is the greedy continuation, with its own log-probability
    next_id = int(expected[-1].argmax())
    assert lp.token_logprobs[-1] == pytest.approx(expected[-1, next_id].item(), abs=1e-4)
    assert choice.text == tokenizer.decode(ids + [next_id])
    assert lp.text_offset[:3] == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 1


def test_string_prompt_echo_with_max_tokens_0_scores_only(client, reference):
    tokenizer, model = reference
    prompt = "hello world"
    out = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    choice = out.choices[0]
    ids = tokenizer.encode(prompt)
    assert choice.text == prompt and choice.finish_reason == "length"
    assert len(choice.logprobs.token_logprobs) == len(ids)
    expected = _forward_logprobs(model, ids)
    assert choice.logprobs.token_logprobs[1] == pytest.approx(expected[0, ids[1]].item(), abs=1e-4)
    assert out.usage.completion_tokens == 0


def test_a_batch_of_prompts_gives_n_choices_each_in_order(client):
    out = client.completions.create(model=MODEL_NAME, prompt=["the cat", "one two"], n=2, max_tokens=4,
                                    temperature=1.0, seed=1)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    single = client.completions.create(model=MODEL_NAME, prompt="one two", max_tokens=4, temperature=1.0, seed=2)
    assert out.choices[3].text == single.choices[0].text  # prompt 1, sample 1 -> seed + 1


def test_generated_logprobs_and_streaming_match(client):
    kwargs = dict(model=MODEL_NAME, prompt="red blue green", max_tokens=12, temperature=1.0, seed=9, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0]
    assert len(whole.logprobs.tokens) == len(whole.logprobs.token_logprobs) > 0
    assert all(lp <= 0 for lp in whole.logprobs.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in whole.logprobs.top_logprobs)

    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    streamed_lps = [lp for c in chunks if c.choices and c.choices[0].logprobs
                    for lp in c.choices[0].logprobs.token_logprobs]
    assert text == whole.text
    assert streamed_lps == pytest.approx(whole.logprobs.token_logprobs)
    assert chunks[-1].usage.completion_tokens == len(whole.logprobs.tokens)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason


def test_echo_without_logprobs_prepends_the_prompt(client):
    kwargs = dict(model=MODEL_NAME, prompt="the cat", max_tokens=3, temperature=0)
    echoed = client.completions.create(echo=True, **kwargs).choices[0]
    plain = client.completions.create(**kwargs).choices[0]
    assert echoed.text == "the cat" + plain.text
    assert echoed.logprobs is None
