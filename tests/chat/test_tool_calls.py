"""One tool-call syntax: what training renders is what the server constrains and parses, and the
prompt the server builds for a tool request is the one the model was trained on."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

from chat.encode import encode_row
from chat.templates import chat_format
from chat.tool_calls import format_calls, parse_call
from tests.chat.test_encode import CALL, CONVERSATION, TOOLS
from tests.tiny_model import SMOLLM2_TEMPLATE


def test_rendered_calls_parse_back_through_the_servers_extractor():
    from serving.structured import ToolCallExtractor

    calls = CALL + [{"type": "function", "function": {"name": "get_time", "arguments": {"zone": "CET", "n": [1, 2]}}}]
    text = "Let me check.\n" + format_calls(calls)
    extractor = ToolCallExtractor()
    content, parsed = extractor.feed(text)
    assert content == "Let me check.\n" and extractor.flush() == ""
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [("get_weather", {"city": "Paris"}),
                                                                  ("get_time", {"zone": "CET", "n": [1, 2]})]
    assert parse_call('{"name": "f", "arguments": {}}') == ("f", {}) and parse_call("not json") is None


def test_the_servers_grammar_accepts_the_trained_call_syntax(tiny_model_dir):
    """tool_choice=required with parallel calls: the trained rendering of two calls is a sentence of the
    grammar the server constrains decoding with (and a call of another shape is not)."""
    import llguidance.hf
    from llguidance import LLMatcher
    from transformers import AutoTokenizer

    from serving.engine.grammar import compile_grammar
    from serving.protocol import ChatCompletionRequest
    from serving.structured import tools_guide

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 "tools": TOOLS, "tool_choice": "required",
                                                 "parallel_tool_calls": True})
    grammar = compile_grammar(tools_guide(body))

    def accepts(text: str) -> bool:
        matcher = LLMatcher(llguidance.hf.from_tokenizer(tokenizer), grammar)
        ids = tokenizer.encode(text)
        return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()

    calls = CALL + [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]
    assert accepts(format_calls(calls))
    assert not accepts(format_calls(calls).replace('"city"', '"town"'))
    assert not accepts(format_calls(calls).replace('":', '": '))  # the grammar's JSON is compact


def test_a_served_tool_request_renders_as_the_model_was_trained(tiny_model_dir):
    """The server's prompt for the conversation so far equals the training text up to the turn the
    model is to write (SmolLM2's template: tools inlined the same way in both)."""
    from transformers import AutoTokenizer

    from serving.handlers.chat import encode_chat
    from serving.protocol import ChatCompletionRequest

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = SMOLLM2_TEMPLATE
    row = copy.deepcopy(CONVERSATION)
    enc = encode_row(tok, chat_format(tok), row)
    history = copy.deepcopy(CONVERSATION["messages"][:6])  # up to the tool result
    for message in history:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = '{"city": "Paris"}'  # as an OpenAI client sends it
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": history, "tools": TOOLS})
    served = encode_chat(SimpleNamespace(tokenizer=tok), body, sanitize=False)
    answer_start = enc.text.index("It is 21 degrees.")  # the turn after the tool result
    assert tok.decode(served) == enc.text[:answer_start]
