"""Self-distillation replay in the data stage: the base model's own answers, generated once and cached,
mixed in at the asked share, deterministic, and never a held-out retention prompt."""

from __future__ import annotations

import json

import pytest

from eval import retention
from pipelines import replay
from pipelines.data import run_data
from pipelines.manifest import read_manifest, stage_dir, write_manifest
from recipes import load_recipe

OVERRIDES = ["data.skills.n_train=30", "data.skills.n_eval=6", "data.skills.n_preference=4",
             "data.validation_fraction=0", "data.replay.enabled=true", "data.replay.share=0.25",
             "data.replay.limit=5", "data.replay.max_new_tokens=16"]


SHORT, LONG = "the cat sat. the dog ran.", " ".join(["one two three four five six seven eight nine ten"] * 4)


@pytest.fixture(scope="module")
def talking_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model taught (a plain torch loop, a few seconds) to answer the first five replay prompts:
    three with two short sentences and the end-of-turn token, two with a long count that any small
    max_new_tokens cuts off. (The untrained tiny model ends its turn at once: every answer empty.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [p["prompt"] for p in retention.load_prompts("replay")[:5]]
    texts = [retention.chat_prompt(tokenizer, p) + (LONG if i in (1, 3) else SHORT) + tokenizer.eos_token
             for i, p in enumerate(prompts)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("talking") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _project(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "artifacts"
    write_manifest(stage_dir("base", root), stage="base", inputs={}, settings={},
                   outputs={"model_dir": str(tiny_model_dir)})
    return root


def test_replay_rows_are_the_base_models_answers_at_the_asked_share(tmp_path, monkeypatch, talking_model_dir):
    root = _project(tmp_path, monkeypatch, talking_model_dir)
    run_data(load_recipe("default", OVERRIDES), root)
    train = _jsonl(root / "data/sft_train.jsonl")
    replayed = [r for r in train if r.get("source", "").startswith("replay:")]
    task = [r for r in train if "source" not in r]
    assert len(task) == 30 and len(replayed) == round(0.25 / 0.75 * 30) == 10
    generated = retention.base_answers(talking_model_dir, "replay", 16, tmp_path / ".lathe/base-answers", limit=5)
    finished = {a["prompt"]: a["answer"] for a in generated if a["finished"]}
    assert [a["finished"] for a in generated] == [True, False, True, False, True]
    assert set(finished.values()) == {SHORT}  # the cut ones are dropped: they would teach stopping mid-sentence
    assert {r["messages"][0]["content"] for r in replayed} == set(finished)
    assert all(r["messages"][1]["content"] == finished[r["messages"][0]["content"]] for r in replayed)
    manifest = read_manifest("data", root)
    assert manifest["metrics"]["sft_replay_rows"] == 10 and manifest["metrics"]["retention_prompts_in_training"] == 0
    assert any(s.get("generated") == "replay" and s["share"] == 0.25 for s in manifest["inputs"]["sources"])


def test_replay_never_holds_a_retention_prompt_and_is_deterministic(tmp_path, monkeypatch, talking_model_dir):
    root = _project(tmp_path, monkeypatch, talking_model_dir)
    recipe = load_recipe("default", OVERRIDES[:-2] + ["data.replay.max_new_tokens=4"])  # all 136 prompts
    run_data(recipe, root)
    first = (root / "data/sft_train.jsonl").read_text()
    held_out = {p["prompt"] for p in retention.load_prompts("heldout")}
    users = {m["content"] for r in _jsonl(root / "data/sft_train.jsonl") for m in r["messages"] if m["role"] == "user"}
    assert not users & held_out
    run_data(recipe, root)
    assert (root / "data/sft_train.jsonl").read_text() == first


def test_the_data_stage_reads_replay_answers_from_the_cache(tmp_path, monkeypatch, talking_model_dir):
    root = _project(tmp_path, monkeypatch, talking_model_dir)
    recipe = load_recipe("default", OVERRIDES)
    run_data(recipe, root)
    (cached,) = (tmp_path / ".lathe/base-answers").glob("replay-*.jsonl")
    rows = _jsonl(cached)
    cached.write_text("".join(json.dumps({**r, "answer": f"cached {r['id']}"}) + "\n" for r in rows))
    run_data(recipe, root)
    replayed = [r for r in _jsonl(root / "data/sft_train.jsonl") if r.get("source", "").startswith("replay:")]
    assert replayed and all(r["messages"][1]["content"] == f"cached {r['source'].split(':')[1]}" for r in replayed)


def test_a_user_file_holding_a_retention_prompt_is_counted(tmp_path, monkeypatch, talking_model_dir):
    root = _project(tmp_path, monkeypatch, talking_model_dir)
    user = tmp_path / "mine.jsonl"
    user.write_text(json.dumps({"messages": [{"role": "user", "content": "Say hi."},
                                             {"role": "assistant", "content": "hi"}]}) + "\n")
    run_data(load_recipe("default", OVERRIDES[:4] + [f"data.sft=[{{path: {user}}}]"]), root)
    assert read_manifest("data", root)["metrics"]["retention_prompts_in_training"] == 1


def test_preference_replay_prefers_the_whole_answer_over_its_first_sentence(tmp_path, monkeypatch, talking_model_dir):
    root = _project(tmp_path, monkeypatch, talking_model_dir)
    run_data(load_recipe("default", OVERRIDES + ["data.replay.preference_share=0.5"]), root)
    pairs = [r for r in _jsonl(root / "data/pref_train.jsonl") if r.get("source", "").startswith("replay:")]
    task = [r for r in _jsonl(root / "data/pref_train.jsonl") if "source" not in r]
    assert len(pairs) == len(task) == 4
    assert all(p["chosen"][0]["content"] == SHORT and p["rejected"][0]["content"] == "the cat sat." for p in pairs)
    assert read_manifest("data", root)["metrics"]["pref_replay_rows"] == 4


def test_first_sentence():
    assert replay.first_sentence("Hello there! I can help. Ask me.") == "Hello there!"
    assert replay.first_sentence("1. Fish\n2. Whales") == "1. Fish"
    assert replay.first_sentence("One sentence only.") == "One sentence only."
