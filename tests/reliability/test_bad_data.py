"""The data stage end to end on generated files of good and bad lines.

With `on_bad_row: skip`, every non-blank line is accounted for: it is kept (in the train or
validation split), dropped as an exact duplicate of a kept row (counted), or rejected with its file,
line number and reason in rejects.jsonl — kept + duplicates + rejected == lines, nothing lost.
With `on_bad_row: error` the stage stops at the first bad line and names file and line.

The expected outcome of each line is known by construction: good lines are rendered from a
conversation (in one of four SFT layouts, all normalising to the same messages), bad lines carry
exactly one defect."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.data import run_data
from recipes import LatheError, Recipe

LONG = os.environ.get("LATHE_RELIABILITY") == "long"
EXAMPLES = 400 if LONG else 25

# Text that normalises: any non-surrogate characters, not blank.
text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(lambda s: s.strip())
conversations = st.tuples(st.none() | text, text, text)  # (system, user, assistant)


def render(conv: tuple, layout: str) -> dict:
    """One conversation in one SFT layout; every layout normalises to the same messages."""
    system, user, assistant = conv
    if layout == "messages":
        head = [{"role": "system", "content": system}] if system else []
        return {"messages": head + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if layout == "sharegpt":
        head = [{"from": "system", "value": system}] if system else []
        return {"conversations": head + [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]}
    if layout == "alpaca":
        return {"instruction": user, "output": assistant, **({"system": system} if system else {})}
    return {"prompt": user, "completion": assistant}  # prompt_completion: no system turn


def layouts_for(conv: tuple) -> list[str]:
    return ["messages", "sharegpt", "alpaca"] + ([] if conv[0] else ["prompt_completion"])


def user_assistant(u: object, a: object) -> dict:
    return {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}


# One defect each. Values are JSON-encodable objects, or raw bytes for lines that are not JSON at all.
BAD_SFT_ROWS = [
    user_assistant("q", "   "),                                      # empty turn
    user_assistant("", "a"),                                         # empty turn
    user_assistant("q\ud800", "a"),                                  # lone surrogate (\ud800 escape in JSON)
    user_assistant(3, "a"),                                          # content not a string
    user_assistant(None, "a"),
    user_assistant(["q"], "a"),
    {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]},   # wrong role
    {"messages": [{"role": "Human", "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": None, "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q"}]},               # does not end with the answer
    {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},  # no user
    {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                  {"role": "assistant", "content": "a"}]},          # system not first
    {"messages": []},
    {"messages": "hi"},
    {"messages": [["user", "q"]]},
    {"conversations": [{"from": "alien", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"conversations": "q"},
    {"instruction": " ", "output": "a"},
    {"instruction": "q", "output": "a", "input": 5},
    {"prompt": "q", "completion": ""},
    {"txt": "raw text"},                                            # unknown layout
    {"text": " "},                                                  # empty document
    {"input_ids": [1, -2]},                                         # not a token id
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
                  "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}]},   # arguments not JSON
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 3}]},
    {},
    [1, 2], "a string", 42, None, True,                              # not an object
    b"{not json", b"\xff\xfe\"bad utf-8\"", b"[1, 2", b"{\"messages\": [}", b"nul\x00l",
]
BAD_PREFERENCE_ROWS = [
    {"prompt": "q", "chosen": "same", "rejected": "same"},
    {"prompt": "q", "chosen": "a"},
    {"prompt": " ", "chosen": "a", "rejected": "b"},
    {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
    {"chosen": "no prompt", "rejected": "at all"},
    {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
    {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
    {"prompt": "q", "chosen": 1, "rejected": "b"},
    {"input": "q", "preferred_output": "a", "non_preferred_output": "b"},   # OpenAI DPO: input not an object
    {"text": "not a pair"},
    b"\"unterminated",
]
BLANK = [b"", b"   ", b"\t"]


@st.composite
def jsonl_lines(draw, good_rows, bad_rows, huge_row):
    """(lines as bytes, {line number: "good"|"bad"} for non-blank lines, good row keys by line)."""
    lines, expected = [], {}
    n = draw(st.integers(0, 40))
    for _ in range(n):
        kind = draw(st.sampled_from(["good", "good", "bad", "blank", "dup"]))
        if kind == "dup" and any(v == "good" for v in expected.values()):
            earlier = draw(st.sampled_from([i for i, v in expected.items() if v == "good"]))
            lines.append(lines[earlier - 1])
            expected[len(lines)] = "good"
            continue
        if kind == "blank":
            lines.append(draw(st.sampled_from(BLANK)))
            continue
        if kind in ("good", "dup"):
            row = draw(good_rows)
        else:
            row = draw(st.sampled_from(bad_rows))
        if draw(st.integers(0, 30)) == 0:
            row = huge_row(row)
        raw = row if isinstance(row, bytes) else json.dumps(row, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
        lines.append(raw)
        expected[len(lines)] = "good" if kind in ("good", "dup") else "bad"
    return lines, expected


@st.composite
def sft_rows(draw):
    conv = draw(conversations)
    return render(conv, draw(st.sampled_from(layouts_for(conv))))


@st.composite
def preference_rows(draw):
    prompt, chosen, rejected = draw(text), draw(text), draw(text)
    if chosen == rejected:
        rejected += " (worse)"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def huge(row):
    """The same row (good or bad) with ~1 MB added where it does not change its verdict."""
    if isinstance(row, bytes):
        return row + b"x" * 1_000_000
    if isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"] \
            and isinstance(row["messages"][-1], dict) and isinstance(row["messages"][-1].get("content"), str) \
            and row["messages"][-1]["content"].strip():
        return {**row, "messages": row["messages"][:-1] + [{**row["messages"][-1],
                "content": row["messages"][-1]["content"] + "y" * 1_000_000}]}
    if isinstance(row, dict):
        return {**row, "padding": "z" * 1_000_000}  # an unknown key is ignored by the normalisers
    return row


def normalized_key(line: bytes) -> str:
    """What a good line becomes, to count distinct rows; good lines are rendered so that their
    normal form is [system?] + user + assistant (checked against the stage's output below)."""
    row = json.loads(line)
    if "messages" in row:
        msgs = row["messages"]
    elif "conversations" in row:
        role = {"system": "system", "human": "user", "gpt": "assistant"}
        msgs = [{"role": role[t["from"]], "content": t["value"]} for t in row["conversations"]]
    elif "instruction" in row:
        msgs = ([{"role": "system", "content": row["system"]}] if "system" in row else []) + [
            {"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
    elif "completion" in row:
        msgs = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    else:  # preference
        return json.dumps([row["prompt"], row["chosen"], row["rejected"]])
    return json.dumps(msgs, sort_keys=True)


def write(path: Path, lines: list[bytes], gz: bool) -> Path:
    data = b"\n".join(lines) + b"\n"
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def recipe(sft: Path, pref: Path, on_bad_row: str) -> Recipe:
    return Recipe.model_validate({"data": {
        "skills": {"enabled": False}, "on_bad_row": on_bad_row, "validation_fraction": 0.2,
        "sft": [{"path": str(sft)}], "preference": [{"path": str(pref)}]}})


def read_jsonl(path: Path) -> list[dict]:
    # "\n" only: rows may hold U+2028, U+0085... at which str.splitlines() would also split
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


@SETTINGS
@given(sft=jsonl_lines(sft_rows(), BAD_SFT_ROWS, huge), pref=jsonl_lines(preference_rows(), BAD_PREFERENCE_ROWS, huge),
       gz=st.booleans())
def test_skip_accounts_for_every_line(tmp_path_factory, tally, sft, pref, gz):
    work = tmp_path_factory.mktemp("data")
    (sft_lines, sft_expected), (pref_lines, pref_expected) = sft, pref
    sft_path = write(work / "sft.jsonl", sft_lines, gz)
    pref_path = write(work / "pref.jsonl", pref_lines, gz=False)
    tally.bad_input(sum(v == "bad" for v in sft_expected.values()) + sum(v == "bad" for v in pref_expected.values()))

    outputs = run_data(recipe(sft_path, pref_path, "skip"), root=work / "artifacts")

    out = work / "artifacts" / "data"
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = read_jsonl(out / "rejects.jsonl")
    assert manifest["metrics"]["rejected_rows"] == len(rejects)
    for kind, path, lines, expected, prefix in (("sft", sft_path, sft_lines, sft_expected, "sft"),
                                                  ("preference", pref_path, pref_lines, pref_expected, "pref")):
        mine = [r for r in rejects if r["file"] == str(path)]
        # Each reject names its line and says why; exactly the bad lines are rejected.
        assert all(r["where"].startswith("line ") and r["reason"].strip() for r in mine)
        rejected_lines = sorted(int(r["where"].split()[1]) for r in mine)
        assert rejected_lines == sorted(n for n, v in expected.items() if v == "bad"), mine
        good_lines = [n for n, v in expected.items() if v == "good"]
        kept = outputs[f"{prefix}_train"]["rows"] + outputs[f"{prefix}_val"]["rows"]
        dropped = manifest["metrics"][f"{prefix}_duplicates_dropped"]
        lost = len(expected) - (kept + dropped + len(mine))
        tally.lost(max(lost, 0))
        assert lost == 0, f"{kind}: {len(expected)} lines, {kept} kept, {dropped} duplicates, {len(mine)} rejected"
        assert kept == len({normalized_key(lines[n - 1]) for n in good_lines})
        source = next(s for s in manifest["inputs"]["sources"] if s.get("path") == str(path))
        assert source["rows_read"] == len(expected) and source["rows_kept"] == len(good_lines)
    kept_sft = read_jsonl(out / "sft_train.jsonl") + read_jsonl(out / "sft_val.jsonl")
    assert {json.dumps(r["messages"], sort_keys=True) for r in kept_sft} == \
        {normalized_key(sft_lines[n - 1]) for n, v in sft_expected.items() if v == "good"}


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sft=jsonl_lines(sft_rows(), BAD_SFT_ROWS, lambda row: row))
def test_error_policy_stops_at_the_first_bad_line_and_names_it(tmp_path_factory, tally, sft):
    work = tmp_path_factory.mktemp("data")
    lines, expected = sft
    sft_path = write(work / "sft.jsonl", lines, gz=False)
    pref_path = write(work / "pref.jsonl", [], gz=False)
    bad = [n for n, v in expected.items() if v == "bad"]
    tally.bad_input(len(bad))
    if not bad:
        run_data(recipe(sft_path, pref_path, "error"), root=work / "artifacts")
        return
    with pytest.raises(LatheError) as err:
        run_data(recipe(sft_path, pref_path, "error"), root=work / "artifacts")
    assert str(err.value).startswith(f"{sft_path}, line {bad[0]}: ")


def test_every_listed_bad_row_is_rejected_alone(tmp_path, tally):
    """Each defect in the lists above is, on its own line, rejected (guards the generators' oracle)."""
    sft = write(tmp_path / "sft.jsonl", [r if isinstance(r, bytes) else json.dumps(r).encode() for r in BAD_SFT_ROWS], False)
    pref = write(tmp_path / "pref.jsonl", [r if isinstance(r, bytes) else json.dumps(r).encode()
                                           for r in BAD_PREFERENCE_ROWS], False)
    tally.bad_input(len(BAD_SFT_ROWS) + len(BAD_PREFERENCE_ROWS))
    outputs = run_data(recipe(sft, pref, "skip"), root=tmp_path / "artifacts")
    rejects = read_jsonl(tmp_path / "artifacts" / "data" / "rejects.jsonl")
    assert len(rejects) == len(BAD_SFT_ROWS) + len(BAD_PREFERENCE_ROWS)
    # The record keeps the row as it came (None for a line that was not JSON), surrogates included.
    assert [r["row"] for r in rejects] == [None if isinstance(r, bytes) else r
                                           for r in BAD_SFT_ROWS + BAD_PREFERENCE_ROWS]
    assert outputs["sft_train"]["rows"] == outputs["pref_train"]["rows"] == 0


def test_rows_with_unicode_line_breaks_reach_the_trainers_intact(tmp_path, tiny_model_dir):
    """U+2028, U+0085, \\x1c... are written raw (ensure_ascii=False); the SFT and preference
    loaders must split the stage's files on "\\n" only (str.splitlines() broke them)."""
    from pipelines.preference import load_pairs
    from pipelines.sft import load_split
    from pipelines.training import load_tokenizer

    breaks = "a\u2028b\u2029c\x85d\x1ce\x0bf\x0cg\rh"
    sft = write(tmp_path / "sft.jsonl", [json.dumps(render((None, breaks, breaks), "messages")).encode()], False)
    pref = write(tmp_path / "pref.jsonl", [json.dumps({"prompt": breaks, "chosen": breaks, "rejected": "x"}).encode()],
                 False)
    run_data(Recipe.model_validate({"data": {"skills": {"enabled": False}, "validation_fraction": 0,
                                             "sft": [{"path": str(sft)}], "preference": [{"path": str(pref)}]}}),
             root=tmp_path / "artifacts")
    out = tmp_path / "artifacts" / "data"
    tokenizer = load_tokenizer(tiny_model_dir)
    _, encoded = load_split(out / "sft_train.jsonl", tokenizer, assistant_only=False)
    pairs = load_pairs(out / "pref_train.jsonl", tokenizer)
    assert breaks in encoded[0].text and encoded[0].trained_tokens == len(encoded[0].input_ids)
    assert pairs[0]["prompt"][0]["content"] == breaks and pairs[0]["chosen"][0]["content"] == breaks
