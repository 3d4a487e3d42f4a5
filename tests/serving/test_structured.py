"""response_format and tools through constrained decoding: even a random model's output must parse.

The schemas close every object (`additionalProperties: false`) and bound every string and number,
so a random model, which never chooses to stop, still reaches the end of the JSON in max_tokens.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.serving.conftest import MODEL_NAME

MESSAGES = [{"role": "user", "content": "what is the weather in paris? answer in json"}]
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 999},
        "unit": {"enum": ["cm", "kg"]},
        "ok": {"type": "boolean"},
        "note": {"type": "string", "maxLength": 10},
    },
    "required": ["answer", "unit", "ok", "note"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"enum": ["paris", "rome"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The current time; no arguments"}}
TOOLS = [WEATHER, NOW]
ARGUMENTS = {"get_weather": WEATHER["function"]["parameters"], "now": {"type": "object", "maxProperties": 0}}


def _chat(client, **kwargs):
    return client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, **{"max_tokens": 120, **kwargs})


def _streamed(client, **kwargs):
    """(content, {call index: (name, concatenated arguments)}, finish_reason) of a streamed reply."""
    content, calls, finish = "", {}, None
    for chunk in _chat(client, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                name, args = calls.get(call.index, ("", ""))
                calls[call.index] = (name + (call.function.name or ""), args + (call.function.arguments or ""))
            finish = choice.finish_reason or finish
    return content, calls, finish


def test_json_schema_output_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
    reply = _chat(client, n=3, temperature=1.0, seed=0, response_format=fmt)
    contents = [c.message.content for c in reply.choices]
    for choice, content in zip(reply.choices, contents):
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(content), ANSWER)
    assert len(set(contents)) == 3  # sampled, not one fixed string
    streamed, _, finish = _streamed(client, temperature=1.0, seed=0, response_format=fmt)
    assert streamed == contents[0] and finish == "stop"


def test_json_schema_holds_for_greedy_decoding_too(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}
    content = _chat(client, temperature=0, response_format=fmt).choices[0].message.content
    jsonschema.validate(json.loads(content), ANSWER)
    # without the constraint the same greedy decoding is not JSON at all
    with pytest.raises(json.JSONDecodeError):
        json.loads(_chat(client, temperature=0).choices[0].message.content)


def test_json_object_mode_writes_an_object(client, tiny_model_dir):
    # Any object: a random model keeps writing its first key forever, so check what it wrote is a
    # valid start of a JSON object, token by token, with an independent matcher.
    import llguidance.hf
    from llguidance import LLMatcher
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)

    def object_prefix(**kwargs) -> bool:
        reply = _chat(client, max_tokens=40, temperature=1.0, seed=2, extra_body={"logprobs": 0}, **kwargs).choices[0]
        ids = reply.logprobs.model_extra["token_ids"]
        if reply.finish_reason == "stop":
            ids = ids[:-1]  # the EOS token
            assert isinstance(json.loads(reply.message.content), dict)
        matcher = LLMatcher(ll_tokenizer, LLMatcher.grammar_from_json_schema({"type": "object"}))
        return matcher.try_consume_tokens(ids) == len(ids)

    assert object_prefix(response_format={"type": "json_object"})
    assert not object_prefix()  # the same sampling, unconstrained


def test_together_json_object_with_schema_validates(client):
    content = _chat(client, temperature=1.0, seed=2,
                    response_format={"type": "json_object", "schema": ANSWER}).choices[0].message.content
    jsonschema.validate(json.loads(content), ANSWER)


def test_required_tool_choice_returns_valid_tool_calls(client):
    for seed in range(4):
        reply = _chat(client, temperature=1.0, seed=seed, tools=TOOLS, tool_choice="required",
                      parallel_tool_calls=False)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), ARGUMENTS[call.function.name])


def test_named_tool_choice_calls_that_tool(client):
    reply = _chat(client, temperature=1.0, seed=1, tools=TOOLS,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI: a forced call ends with 'stop'
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), ARGUMENTS["get_weather"])


def test_parameterless_tool_gets_empty_object_streamed_or_not(client):
    kwargs = dict(temperature=1.0, seed=5, tools=[NOW], tool_choice={"type": "function", "function": {"name": "now"}})
    call = _chat(client, **kwargs).choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("now", "{}")
    content, calls, finish = _streamed(client, **kwargs)
    assert content == "" and calls == {0: ("now", "{}")} and finish == "stop"


def test_streamed_tool_calls_concatenate_to_the_non_streamed_ones(client):
    kwargs = dict(temperature=1.0, seed=7, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    whole = _chat(client, **kwargs).choices[0].message.tool_calls
    content, calls, finish = _streamed(client, **kwargs)
    assert finish == "tool_calls" and content == ""
    assert [(c.function.name, c.function.arguments) for c in whole] == [calls[i] for i in sorted(calls)]
    for name, arguments in calls.values():
        jsonschema.validate(json.loads(arguments), ARGUMENTS[name])


def test_parallel_tool_calls_are_numbered_in_the_stream(client):
    # A random model rarely chooses to stop adding calls: the reply ends at max_tokens, and the
    # complete calls before that are returned (the cut one is not).
    kwargs = dict(temperature=1.0, seed=7, tools=TOOLS, tool_choice="required", max_tokens=150)
    whole = _chat(client, **kwargs).choices[0].message.tool_calls
    _, calls, _ = _streamed(client, **kwargs)
    assert len(whole) >= 2
    assert [(c.function.name, c.function.arguments) for c in whole] == [calls[i] for i in range(len(calls))]
    assert len({c.id for c in whole}) == len(whole)


def test_auto_lets_the_model_answer_in_text(client):
    # The random model never writes the <tool_call> trigger, so 'auto' leaves it free text.
    reply = _chat(client, max_tokens=20, temperature=0, tools=TOOLS, tool_choice="auto").choices[0]
    plain = _chat(client, max_tokens=20, temperature=0).choices[0]
    assert reply.message.tool_calls is None and reply.message.content == plain.message.content
    none = _chat(client, max_tokens=20, temperature=0, tools=TOOLS, tool_choice="none").choices[0]
    assert none.message.content == plain.message.content


def test_a_conversation_with_tool_results_is_accepted(client):
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=history, tools=TOOLS, max_tokens=5,
                                           temperature=0)
    assert reply.choices[0].message.content is not None


def test_auto_grammar_is_free_text_until_the_trigger_then_json(tiny_model_dir):
    """The 'auto' constraint itself, with llguidance over the tiny tokenizer: text passes, a call must be valid."""
    import llguidance.hf
    from llguidance import LLMatcher
    from transformers import AutoTokenizer

    from serving.engine.grammar import compile_grammar
    from serving.protocol import ChatCompletionRequest
    from serving.structured import tools_guide

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    guide = tools_guide(ChatCompletionRequest(messages=MESSAGES, tools=TOOLS, tool_choice="auto"))

    def accepts(text: str) -> bool:
        matcher = LLMatcher(ll_tokenizer, compile_grammar(guide))
        ids = tokenizer.encode(text)
        return matcher.try_consume_tokens(ids) == len(ids)

    assert accepts("the answer is 3, no tool needed")
    assert accepts('let me check <tool_call>{"name":"get_weather","arguments":{"city":"rome","days":2}}</tool_call>')
    assert not accepts('<tool_call>{"name":"get_weather","arguments":{"city":"oslo"')  # not an allowed city
    assert not accepts('<tool_call>{"name":"launch_rockets"')  # not a tool


def test_tool_call_extractor_holds_back_partial_tags_and_keeps_bad_calls_as_text():
    from serving.structured import ToolCallExtractor

    extractor = ToolCallExtractor()
    assert extractor.feed("hi <tool_c") == ("hi ", [])  # might be a call: held back
    content, calls = extractor.feed('all>{"name": "now", "arguments": {}}</tool_call> bye <to')
    assert content == " bye " and [(c.name, c.arguments) for c in calls] == [("now", "{}")]
    assert extractor.feed("o much</tool_call>") == ("<too much</tool_call>", [])  # not a call after all
    assert extractor.feed("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
    assert extractor.feed("<tool_call>{\"name\"") == ("", [])
    assert extractor.flush() == '<tool_call>{"name"'  # cut by max_tokens: returned as text


def test_completions_take_response_format_too(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}
    out = client.completions.create(model=MODEL_NAME, prompt="answer:", max_tokens=120, temperature=1.0, seed=4,
                                    extra_body={"response_format": fmt})
    jsonschema.validate(json.loads(out.choices[0].text), ANSWER)
