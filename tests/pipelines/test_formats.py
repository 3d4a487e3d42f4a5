"""Row normalisers on the real shared sets and on malformed rows."""

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.formats import RowError, normalize_preference, normalize_sft, read_rows


def test_alpaca_set_normalises(shared_data):
    rows = list(read_rows(shared_data / "sft" / "alpaca_en_demo.json"))
    assert len(rows) == 999 and rows[0][0] == "item 1"
    first = normalize_sft(rows[0][1])
    assert first["messages"][0] == {"role": "user", "content": "Describe a process of making crepes."}
    assert first["messages"][-1]["role"] == "assistant"
    assert all(normalize_sft(r)["messages"][-1]["role"] == "assistant" for _, r in rows)


def test_sharegpt_preference_set_normalises(shared_data):
    rows = [r for _, r in read_rows(shared_data / "preference" / "dpo_en_demo.json")]
    pair = normalize_preference(rows[0])
    assert pair["prompt"][0]["role"] == "user" and pair["prompt"][0]["content"].startswith("Hi! I'd like")
    assert pair["chosen"][0]["role"] == "assistant" and pair["chosen"] != pair["rejected"]
    assert sum(1 for r in rows if normalize_preference(r)) == 300


def test_hh_rlhf_transcripts_split_into_prompt_and_answers(shared_data):
    path = shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    ok, bad = 0, []
    for where, row in read_rows(path):
        try:
            pair = normalize_preference(row)
        except RowError as exc:
            bad.append((where, str(exc)))
            continue
        ok += 1
        assert pair["prompt"][-1]["role"] == "user"
        assert not ("\n" + pair["chosen"][0]["content"]).count("\nHuman:")
    assert ok > 2000  # the rest have identical chosen/rejected or differing prompts, each named
    assert all(where.startswith("line ") for where, _ in bad)
    with gzip.open(path, "rt") as fh:
        first = json.loads(fh.readline())
    assert normalize_preference(first)["prompt"][0]["content"] == "what are some pranks with a pen i can do?"


@pytest.mark.parametrize("row, reason", [
    ({"messages": []}, "no messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "must end with the assistant"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}, "empty"),
    ({"messages": [{"role": "user", "content": "a\ud800"}, {"role": "assistant", "content": "x"}]}, "invalid unicode"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "must be a string"),
    ({"instruction": "", "output": "x"}, "instruction is empty"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "conversations[0].from"),
    ({"txt": "raw"}, "unknown row layout"),
    ({"text": " "}, "text is empty"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "message 1 tool_calls[0].function.arguments is not valid JSON"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0.5}]}, "message 1 weight must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "x", "weight": 1}, {"role": "assistant", "content": "y"}]}, "only assistant messages are trained"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]}, "trains nothing"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "y"}]}, "does not follow an assistant's tool calls"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, {"role": "assistant", "content": "y"}]}, "only text parts"),
    ({"parallel_tool_calls": False, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}, {"type": "function", "function": {"name": "g", "arguments": "{}"}}]}]}, "parallel_tool_calls: false"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tools": [{"type": "function"}]}, "tools[0] must be"),
    ({"input_ids": [1, "2"]}, "input_ids must be a non-empty list of integers"),
    ({"input_ids": [1, 2], "labels": [-100, -100]}, "no token is trained"),
    ({"input_ids": [1, 2], "labels": [1, 3]}, "labels must equal input_ids"),
    ({"input_ids": [1, 2], "attention_mask": [1, 2]}, "attention_mask must hold 0 and 1"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "list it under data.preference"),
    ([1, 2], "JSON object"),
])
def test_bad_sft_rows_say_why(row, reason):
    with pytest.raises(RowError, match=None) as err:
        normalize_sft(row)
    assert reason in str(err.value)


def test_bad_preference_rows_say_why():
    with pytest.raises(RowError, match="identical"):
        normalize_preference({"prompt": "q", "chosen": "a", "rejected": "a"})
    with pytest.raises(RowError, match="needs chosen and rejected"):
        normalize_preference({"prompt": "q", "chosen": "a"})


def test_jsonl_reader_reports_bad_json_and_utf8_by_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n\n{bad json}\n"\xff\xfe"\n')
    rows = list(read_rows(path))
    assert rows[0] == ("line 1", {"prompt": "a", "completion": "b"})
    assert rows[1][0] == "line 3" and "not valid JSON" in str(rows[1][1])
    assert rows[2][0] == "line 4" and "UTF-8" in str(rows[2][1])


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
roles = st.sampled_from(["user", "assistant", "system", "tool", "gpt", "", None])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": st.text(max_size=30) | st.none()}), max_size=5)


def _normalised(normalize, row):
    """The contract: a row either normalises or raises RowError with a reason (then None)."""
    try:
        return normalize(row)
    except RowError as exc:
        assert str(exc)
        return None


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"messages": messages}),
                 st.fixed_dictionaries({"instruction": st.text(max_size=20), "input": st.text(max_size=5),
                                        "output": st.text(max_size=20)})))
def test_any_row_normalises_or_raises_row_error(row):
    out = _normalised(normalize_sft, row)
    if out is None:
        return
    if "text" in out:
        assert out["text"].strip()
    elif "input_ids" in out:
        assert out["input_ids"] and all(isinstance(t, int) for t in out["input_ids"])
    else:  # a valid conversation
        assert out["messages"][-1]["role"] == "assistant"
        assert all(m["content"].strip() for m in out["messages"] if m["content"] is not None)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_preference_row_normalises_or_raises_row_error(row):
    out = _normalised(normalize_preference, row)
    assert out is None or out["chosen"] != out["rejected"]


# ---------------------------------------------------------------- files as users have them

OPENAI_CHAT = {  # OpenAI's chat fine-tuning example with tools, as in their docs, plus a weight-0 turn
    "messages": [
        {"role": "user", "content": "What is the weather in San Francisco?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
            "name": "get_current_weather", "arguments": "{\"location\": \"San Francisco, USA\", \"format\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_id", "content": "21.0"},
        {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA", "weight": 0},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": "I can only see the weather now."},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_current_weather", "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
            "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location", "format"]}}}],
    "parallel_tool_calls": False,
}
OPENAI_DPO = {"input": {"messages": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}],
                        "tools": [], "parallel_tool_calls": True},
              "preferred_output": [{"role": "assistant", "content": "Today in San Francisco, it is not quite cold as expected."}],
              "non_preferred_output": [{"role": "assistant", "content": "It is not particularly cold in San Francisco today."}]}


def test_openai_chat_rows_keep_tools_calls_results_and_weights():
    out = normalize_sft(OPENAI_CHAT)
    call = out["messages"][1]
    assert call["content"] is None
    assert call["tool_calls"][0]["function"] == {"name": "get_current_weather",
                                                 "arguments": {"location": "San Francisco, USA", "format": "celsius"}}
    assert out["messages"][2] == {"role": "tool", "content": "21.0", "tool_call_id": "call_id"}
    assert out["messages"][3]["weight"] == 0 and "weight" not in out["messages"][5]
    assert out["tools"] == OPENAI_CHAT["tools"]


def test_openai_and_together_preference_rows():
    out = normalize_preference(OPENAI_DPO)
    assert out == {"prompt": OPENAI_DPO["input"]["messages"], "chosen": OPENAI_DPO["preferred_output"],
                   "rejected": OPENAI_DPO["non_preferred_output"]}
    with pytest.raises(RowError, match="input must be an object"):
        normalize_preference({"preferred_output": "a", "non_preferred_output": "b"})


def test_legacy_functions_and_function_call_become_tools_and_tool_calls():
    out = normalize_sft({"functions": [{"name": "f", "parameters": {"type": "object", "properties": {}}}],
                         "messages": [{"role": "user", "content": "x"},
                                      {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                                      {"role": "function", "name": "f", "content": "ok"},
                                      {"role": "assistant", "content": "done"}]})
    assert out["tools"][0]["function"]["name"] == "f"
    assert out["messages"][1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {}}
    assert out["messages"][2] == {"role": "tool", "content": "ok", "name": "f"}


def test_text_files_and_pre_tokenized_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "corpus.txt"
    path.write_text("First document,\nsecond line.\n\n\nSecond document.\n")
    assert list(read_rows(path)) == [("line 1", {"text": "First document,\nsecond line."}),
                                     ("line 5", {"text": "Second document."})]
    table = pa.table({"input_ids": [[1, 2, 3, 0], [4, 5]], "labels": [[-100, 2, 3, -100], None],
                      "attention_mask": [[1, 1, 1, 0], None]})
    pq.write_table(table, tmp_path / "tokens.parquet")
    rows = [normalize_sft(row, vocab_size=10) for _, row in read_rows(tmp_path / "tokens.parquet")]
    assert rows == [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5]}]
    with pytest.raises(RowError, match="outside the model's vocabulary"):
        normalize_sft({"input_ids": [4, 50]}, vocab_size=10)
