"""The data stage: skills generation, mixing, de-duplication, splits and the bad-row policy."""

import json
from pathlib import Path

import pytest

from pipelines import skills
from pipelines.data import run_data
from pipelines.manifest import read_manifest
from recipes import LatheError, load_recipe


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_skills_are_seeded_and_held_out():
    a = skills.generate(60, 30, 20, seed=7)
    assert a == skills.generate(60, 30, 20, seed=7)
    assert a != skills.generate(60, 30, 20, seed=8)
    eval_prompts = {r["prompt"] for r in a["eval"]}
    train_prompts = {r["messages"][0]["content"] for r in a["sft"]} | {r["prompt"][0]["content"] for r in a["preference"]}
    assert not eval_prompts & train_prompts
    assert {r["skill"] for r in a["eval"]} == set(skills.SKILLS)


def test_skill_answers_are_correct():
    assert skills.add_numbers(__import__("random").Random(0))[1] == str(sum(
        int(x) for x in skills.add_numbers(__import__("random").Random(0))[0].split("?")[0].split("is ")[1].split(" + ")))
    for row in skills.generate(30, 12, 12, seed=3)["preference"]:
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]


def test_data_stage_writes_splits_and_manifest(tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("default", ["data.replay.enabled=false", 
        "data.skills.n_train=40", "data.skills.n_eval=12", "data.skills.n_preference=10",
        f"data.sft=[{{path: {shared_data}/sft/alpaca_en_demo.json, max_rows: 30}}]",
        f"data.preference=[{{path: {shared_data}/preference/dpo_en_demo.json, max_rows: 10}}]"])
    outputs = run_data(recipe, tmp_path / "artifacts")
    assert outputs["sft_train"]["rows"] + outputs["sft_val"]["rows"] == 70
    assert outputs["skills_eval"]["rows"] == 12
    manifest = read_manifest("data", tmp_path / "artifacts")
    sources = {s.get("path", s.get("generated")) for s in manifest["inputs"]["sources"]}
    assert "skills" in sources and any(str(p).endswith("alpaca_en_demo.json") for p in sources)
    assert all(len(s["sha256"]) == 64 for s in manifest["inputs"]["sources"] if "sha256" in s)
    train = _jsonl(tmp_path / "artifacts/data/sft_train.jsonl")
    assert all(r["messages"][-1]["role"] == "assistant" for r in train)


def _bad_file(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "a", "completion": "b"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        "{not json",
        json.dumps({"prompt": "a", "completion": "b"}),
    ]) + "\n")
    return path


def test_bad_row_stops_with_file_line_and_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _bad_file(tmp_path)
    recipe = load_recipe("default", ["data.replay.enabled=false", "data.skills.enabled=false", f"data.sft=[{{path: {path}}}]"])
    with pytest.raises(LatheError) as err:
        run_data(recipe, tmp_path / "artifacts")
    assert f"{path}, line 2: last message has role 'user'" in str(err.value)


def test_skip_policy_records_every_bad_row_and_dedupes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _bad_file(tmp_path)
    recipe = load_recipe("default", ["data.replay.enabled=false", "data.skills.enabled=false", "data.on_bad_row=skip",
                                     "data.validation_fraction=0", f"data.sft=[{{path: {path}}}]"])
    outputs = run_data(recipe, tmp_path / "artifacts")
    rejects = _jsonl(tmp_path / "artifacts/data/rejects.jsonl")
    assert [(r["where"], r["reason"][:20]) for r in rejects] == [("line 2", "last message has rol"), ("line 3", "not valid JSON: Expe")]
    assert outputs["sft_train"]["rows"] == 1  # the duplicate of line 1 was dropped and counted
    assert read_manifest("data", tmp_path / "artifacts")["metrics"] == {
        "rejected_rows": 2, "sft_duplicates_dropped": 1, "pref_duplicates_dropped": 0, "retention_prompts_in_training": 0,
        "eval_split_rows": 0, "eval_split_overlap_dropped": 0}


def test_missing_dataset_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("default", ["data.replay.enabled=false", "data.sft=[{path: nowhere.jsonl}]"])
    with pytest.raises(LatheError, match="nowhere.jsonl not found"):
        run_data(recipe, tmp_path / "artifacts")


def test_mixture_weight_repeats_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps({"prompt": "r", "completion": "b"}) + "\n")
    recipe = load_recipe("default", ["data.replay.enabled=false", "data.skills.enabled=false", "data.dedupe=false", "data.validation_fraction=0",
                                     f"data.sft=[{{path: {path}, weight: 3}}]"])
    assert run_data(recipe, tmp_path / "artifacts")["sft_train"]["rows"] == 6


def test_bfcl_tool_rows_train_only_what_the_tools_suite_does_not_score(tmp_path, shared_data):
    from eval import tools

    recipe = load_recipe("tools-135m", ["data.replay.enabled=false", "data.validation_fraction=0",
                                        f"eval.mirror_dir={shared_data}"])
    out = run_data(recipe, tmp_path / "artifacts")
    rows = _jsonl(tmp_path / "artifacts" / "data" / "sft_train.jsonl")
    scored = {item.messages[-1]["content"] for item in tools.load_items(shared_data, "simple_python")
              if tools.held_out(item.id)}
    assert out["sft_train"]["rows"] == len(rows) == len(tools.training_rows(shared_data, "simple_python"))
    assert all(row["tools"] and row["messages"][-1]["tool_calls"] for row in rows)
    assert not {row["messages"][-2]["content"] for row in rows} & scored
    sources = read_manifest("data", tmp_path / "artifacts")["inputs"]["sources"]
    assert [s["subset"] for s in sources if s.get("generated") == "bfcl"] == ["simple_python"]


def test_eval_split_holds_out_users_rows_that_training_never_sees(tmp_path, monkeypatch):
    """data.eval_split: held-out chat rows of the user's file, no training row with the same prompt (even
    re-cased or re-spaced), the split recorded with its hash, and readable by a custom suite as it is."""
    from eval.custom import read_rows
    from recipes.schema import SuiteConfig

    monkeypatch.chdir(tmp_path)
    rows = [{"messages": [{"role": "user", "content": f"Ticket {i}: reset my password"},
                          {"role": "assistant", "content": f"Answer {i}"}]} for i in range(20)]
    rows += [{"messages": [{"role": "user", "content": f"  TICKET {i}:   reset my PASSWORD "},  # same prompts, re-spaced
                           {"role": "assistant", "content": f"Other answer {i}"}]} for i in range(20)]
    rows += [{"text": "plain text stays in training"}]
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe("default", ["data.replay.enabled=false", "data.skills.enabled=false", "data.dedupe=false",
                                     f"data.sft=[{{path: {path}}}]", "data.eval_split={fraction: 0.25, max_rows: 6}"])
    outputs = run_data(recipe, tmp_path / "artifacts")
    held = [json.loads(line) for line in Path(outputs["eval_split"]["path"]).read_text().splitlines()]
    train = [json.loads(line) for name in ("sft_train", "sft_val") for line in Path(outputs[name]["path"]).read_text().splitlines()]
    assert len(held) == 6
    norm = lambda row: " ".join(row["messages"][0]["content"].lower().split())  # noqa: E731
    held_prompts = {norm(r) for r in held}
    assert len(held_prompts) == 6 and not held_prompts & {norm(r) for r in train if "messages" in r}
    assert len(train) == 41 - 6 - 6  # the 6 held out, and the 6 re-spaced twins of their prompts
    assert {"text": "plain text stays in training"} in train
    manifest = json.loads((tmp_path / "artifacts/data/manifest.json").read_text())
    assert manifest["metrics"]["eval_split_rows"] == 6 and manifest["metrics"]["eval_split_overlap_dropped"] == 6
    assert manifest["outputs"]["eval_split"]["sha256"]
    suite = SuiteConfig(name="holdout", file=outputs["eval_split"]["path"], kind="generate", metric="exact_match")
    assert [r["answer"] for r in read_rows(Path(suite.file), suite)] == [r["messages"][-1]["content"] for r in held]


def test_an_eval_suite_on_the_split_needs_the_split():
    with pytest.raises(LatheError, match="data.eval_split.fraction is 0"):
        load_recipe("default", ["eval.suites=[{name: holdout, file: artifacts/data/eval_split.jsonl, kind: generate, "
                                "metric: exact_match}]", "gate.primary_metric=holdout/exact_match",
                                "gate.required=[holdout/exact_match]", "gate.guards=null", "gate.max_retention=null",
                                "eval.intermediate_suites=null"])


def test_the_users_validation_file_is_the_validation_split_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(8)))
    val.write_text(json.dumps({"prompt": "v0", "completion": "w0"}) + "\n" + json.dumps({"prompt": "v1", "completion": "w1"}) + "\n")
    base = ["data.replay.enabled=false", "data.skills.enabled=false", f"data.sft=[{{path: {train}}}]"]
    outputs = run_data(load_recipe("default", base + [f"data.sft_validation=[{{path: {val}}}]"]), tmp_path / "artifacts")
    assert outputs["sft_train"]["rows"] == 8  # nothing split off the training file (validation_fraction is 0.1)
    assert [r["messages"][0]["content"] for r in _jsonl(tmp_path / "artifacts/data/sft_val.jsonl")] == ["v0", "v1"]
    sources = read_manifest("data", tmp_path / "artifacts")["inputs"]["sources"]
    assert [s.get("role") for s in sources if s.get("path") == str(val)] == ["validation"]
    val.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")  # a bad validation row
    with pytest.raises(LatheError, match=f"{val}, line 1: last message has role 'user'"):
        run_data(load_recipe("default", base + [f"data.sft_validation=[{{path: {val}}}]"]), tmp_path / "artifacts")
