"""The training encoder: which tokens each kind of row trains, checked against spans worked out here
from the messages themselves (content + end-of-turn token per trained assistant turn)."""

from __future__ import annotations

import copy
import json

import pytest

from chat.encode import IGNORE, encode_row
from chat.templates import ChatFormatError, chat_format
from chat.tool_calls import format_calls
from tests.tiny_model import SMOLLM2_TEMPLATE

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CALL = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
CONVERSATION = {"messages": [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": CALL},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees.", "weight": 0},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You are welcome!"},
], "tools": TOOLS}


@pytest.fixture(params=["marked", "smollm2"])
def tokenizer(request, tiny_model_dir):
    """The tiny model's ChatML with {% generation %} markers (transformers' masks), and SmolLM2's own
    unmarked template (spans from prefix renders)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    if request.param == "smollm2":
        tok.chat_template = SMOLLM2_TEMPLATE
    return tok


def trained_text(tok, enc) -> list[str]:
    """Contiguous runs of trained tokens, decoded."""
    runs, run = [], []
    for token, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE:
            run.append(token)
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs + ([tok.decode(run)] if run else [])


def test_every_assistant_turn_is_trained_but_weight_zero_and_nothing_else(tokenizer):
    enc = encode_row(tokenizer, chat_format(tokenizer), copy.deepcopy(CONVERSATION))
    eos = tokenizer.eos_token
    expected = ["4" + eos, format_calls(CALL) + eos, "You are welcome!" + eos]
    assert trained_text(tokenizer, enc) == expected
    assert [enc.text[s:e] for s, e in enc.spans] == expected
    # the tool result and the weight-0 answer are in the text, untrained
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in enc.text and "It is 21 degrees." in enc.text


def test_train_on_inputs_trains_everything_but_weight_zero_turns(tokenizer):
    enc = encode_row(tokenizer, chat_format(tokenizer), copy.deepcopy(CONVERSATION), assistant_only=False)
    untrained = tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels) if label == IGNORE])
    assert untrained == "It is 21 degrees." + tokenizer.eos_token


def test_text_rows_train_every_token_and_end_with_eos(tokenizer):
    enc = encode_row(tokenizer, None, {"text": "the cat sat on the mat"})
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc.input_ids) == "the cat sat on the mat" + tokenizer.eos_token


def test_pre_tokenized_rows_are_trained_as_given(tokenizer):
    enc = encode_row(tokenizer, None, {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]})
    assert enc.input_ids == [5, 6, 7, 8] and enc.labels == [-100, -100, 7, 8] and enc.trained_tokens == 2


def test_tools_are_told_in_the_system_turn_for_a_template_without_tool_syntax(tokenizer):
    fmt = chat_format(tokenizer)
    assert not fmt.native_tools
    enc = encode_row(tokenizer, fmt, copy.deepcopy(CONVERSATION))
    system = enc.text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou answer briefly.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in system


def test_a_template_twin_from_trl_trains_the_same_turns(tiny_model_dir):
    """A template TRL knows (Qwen 2.5, native tool syntax) gets TRL's generation-marked twin; its text
    must equal the model's own template's."""
    from importlib.resources import files

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = (files("trl") / "chat_templates" / "qwen2_5.jinja").read_text()
    fmt = chat_format(tok)
    assert fmt.native_tools and fmt.training_template not in (None, fmt.template)
    row = copy.deepcopy(CONVERSATION)
    enc = encode_row(tok, fmt, row)
    assert enc.text == tok.apply_chat_template(row["messages"], tools=TOOLS, tokenize=False)
    runs = [run.strip("\n") for run in trained_text(tok, enc)]  # TRL's twin marks the newlines around a turn
    assert runs[0] == "4<|im_end|>" and runs[-1] == "You are welcome!<|im_end|>"
    assert '"name": "get_weather"' in runs[1] and len(runs) == 3


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # shows the number of messages in every turn: earlier turns change as the conversation grows
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ messages|length }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ChatFormatError, match="cannot be told apart"):
        encode_row(tok, chat_format(tok), {"messages": [{"role": "user", "content": "a"},
                                                        {"role": "assistant", "content": "b"}]})
