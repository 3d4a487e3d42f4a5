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
    ({"text": "raw"}, "unknown row layout"),
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


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"messages": messages}),
                 st.fixed_dictionaries({"instruction": st.text(max_size=20), "input": st.text(max_size=5),
                                        "output": st.text(max_size=20)})))
def test_any_row_normalises_or_raises_row_error(row):
    # The contract: a row either normalises to a valid conversation or raises RowError with a reason.
    try:
        out = normalize_sft(row)
    except RowError as exc:
        assert str(exc)
    else:
        assert out["messages"][-1]["role"] == "assistant"
        assert all(m["content"].strip() for m in out["messages"])


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_preference_row_normalises_or_raises_row_error(row):
    try:
        out = normalize_preference(row)
    except RowError as exc:
        assert str(exc)
    else:
        assert out["chosen"] != out["rejected"]
