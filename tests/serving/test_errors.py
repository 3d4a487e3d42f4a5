"""Errors reach clients in the OpenAI envelope: 400 (never 422) with `param`, 404 for unknown models."""

from __future__ import annotations

import httpx2
import openai
import pytest

from tests.serving.conftest import MODEL_NAME
from tests.tiny_model import CONTEXT

HELLO = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 99}, "n"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"extra_body": {"min_p": 1.5}}, "min_p"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ({"extra_body": {"context_length_exceeded_behavior": "explode"}}, "context_length_exceeded_behavior"),
    ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"extra_body": {"logprobs": 50}}, "logprobs"),  # Together's integer form, over the limit
    ({"extra_body": {"logprobs": -1}}, "logprobs"),
    ({"logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
     "response_format"),
    ({"response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "response_format"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"min_tokens": 3}}, "min_tokens"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_bad_values_are_400_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=HELLO, **kwargs)
    err = caught.value
    assert err.status_code == 400
    assert err.param == param
    assert err.type == "invalid_request_error"
    assert err.message


def test_a_bad_message_is_located_precisely(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "wizard", "content": "hi"}])
    assert caught.value.param == "messages[0].role"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=HELLO)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_context_overflow_is_400_context_length_exceeded(client):
    long_prompt = "the cat sat on the mat " * 800
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": long_prompt}])
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as caught:  # fits alone, but not with max_tokens
        client.completions.create(model=MODEL_NAME, prompt=[[5] * (CONTEXT - 12)], max_tokens=100)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "prompt"
    assert str(CONTEXT) in caught.value.message


def test_out_of_vocabulary_token_ids_are_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt=[[1, 2, 10**6]], max_tokens=1)
    assert caught.value.param == "prompt"


def test_raw_http_gets_the_envelope_for_bad_json_and_unknown_routes(server):
    bad = httpx2.post(f"{server}/v1/chat/completions", content=b"{not json",
                      headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx2.post(f"{server}/v1/chat/completions", json={"model": MODEL_NAME})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    nowhere = httpx2.get(f"{server}/v1/nowhere")
    assert nowhere.status_code == 404 and "error" in nowhere.json()
