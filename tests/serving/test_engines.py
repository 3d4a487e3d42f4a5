"""The other engines behind the same API: transformers' continuous batching, vLLM (absent here),
and LoRA adapters served side by side on the transformers engine."""

from __future__ import annotations

import importlib.util
import threading
import time

import httpx2
import openai
import pytest

from recipes import LatheError
from tests.serving.conftest import MODEL_NAME, running_server

MESSAGES = [{"role": "user", "content": "what is the answer? reply with one number"}]


@pytest.fixture(scope="module")
def continuous(tiny_model_dir):
    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME, engine="continuous", torch_threads=1) as base:
        yield base


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_continuous_batching_answers_like_generate(continuous, client):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=16, temperature=0)
    batched = _client(continuous).chat.completions.create(**kwargs).choices[0]
    assert batched.message.content == client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in _client(continuous).chat.completions.create(
        stream=True, **kwargs) if c.choices)
    assert streamed == batched.message.content
    sampled = _client(continuous).completions.create(model=MODEL_NAME, prompt="the cat", n=2, max_tokens=8,
                                                     temperature=1.0)
    assert len(sampled.choices) == 2 and sampled.choices[0].text != sampled.choices[1].text


def test_continuous_batching_runs_requests_together(continuous):
    # Greedy decoding of the random model never reaches EOS: each request runs its 300 tokens.
    body = {"model": MODEL_NAME, "prompt": "the", "max_tokens": 300, "temperature": 0}
    results: list[int] = []
    workers = [threading.Thread(target=lambda: results.append(httpx2.post(
        f"{continuous}/v1/completions", json=body, timeout=120).json()["usage"]["completion_tokens"]))
        for _ in range(4)]
    for worker in workers:
        worker.start()
    most = 0
    while any(w.is_alive() for w in workers):
        scrape = httpx2.get(f"{continuous}/metrics").text
        running = [line for line in scrape.splitlines() if line.startswith("lathe_requests_running ")]
        most = max(most, int(float(running[0].split()[1])))
        time.sleep(0.02)
    assert results == [300] * 4
    assert most >= 2  # several sequences decoded in the same steps (generate() runs one at a time)


def test_greedy_and_sampled_requests_run_side_by_side(continuous):
    """Greedy requests go to the argmax manager, sampled ones to the sampling manager: at the same time,
    both finish and greedy output does not depend on what runs beside it."""
    greedy = {"model": MODEL_NAME, "prompt": "the", "max_tokens": 40, "temperature": 0}
    alone = httpx2.post(f"{continuous}/v1/completions", json=greedy, timeout=120).json()["choices"][0]["text"]
    sampled = {**greedy, "temperature": 1.0, "top_p": 0.9, "max_tokens": 120}
    results: dict[str, str] = {}
    workers = [threading.Thread(target=lambda key=key, body=body: results.__setitem__(key, httpx2.post(
        f"{continuous}/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]))
        for key, body in (("greedy", greedy), ("sampled", sampled))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results["greedy"] == alone and results["sampled"] and results["sampled"] != alone


@pytest.mark.parametrize("kwargs, param", [
    ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"extra_body": {"min_p": 0.1}}, "min_p"),
])
def test_continuous_batching_refuses_what_it_cannot_do(continuous, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        _client(continuous).chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2, **kwargs)
    assert caught.value.param == param and "transformers" in caught.value.message


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_engine_without_vllm_is_a_clear_error(tiny_model_dir):
    from serving.app import create_app
    from serving.settings import ServerSettings

    with pytest.raises(LatheError, match="vllm package"):
        create_app(ServerSettings(model_dir=tiny_model_dir, engine="vllm"))


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random (not zero) B, so it changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / "lora"
    get_peft_model(base, config).save_pretrained(out)
    return out


def _reference_scores(model, tokenizer, prompt: str) -> list[float]:
    import torch

    ids = tokenizer.encode(prompt)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]


def test_lora_adapters_are_served_side_by_side(tiny_model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "the cat sat on the mat"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base_scores = _reference_scores(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tokenizer, prompt)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir).eval()
    tuned_scores = _reference_scores(tuned, tokenizer, prompt)
    assert tuned_scores != pytest.approx(base_scores, abs=1e-3)

    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME, adapters={"tiny-lora": adapter_dir}) as base:
        client = _client(base)
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {MODEL_NAME, "tiny-lora"}
        assert cards["tiny-lora"].model_extra["parent"] == MODEL_NAME

        def scores(model: str) -> list[float]:
            out = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
            return out.choices[0].logprobs.token_logprobs[1:]

        # interleaved, so the adapter is switched on and off between requests
        assert scores("tiny-lora") == pytest.approx(tuned_scores, abs=1e-4)
        assert scores(MODEL_NAME) == pytest.approx(base_scores, abs=1e-4)
        assert scores("tiny-lora") == pytest.approx(tuned_scores, abs=1e-4)
        reply = client.chat.completions.create(model="tiny-lora", messages=MESSAGES, max_tokens=3)
        assert reply.model == "tiny-lora"
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="tiny-lora-2", messages=MESSAGES, max_tokens=3)
        assert "tiny-lora" in caught.value.message
