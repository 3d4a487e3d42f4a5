"""The optional RL stage (TRL GRPO + LoRA) and its exact-answer rewards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.data import run_data
from pipelines.manifest import read_manifest, write_manifest
from pipelines.rewards import exact_match, extract_number, number_match
from recipes import LatheError, load_recipe

SMALL = ["data.replay.enabled=false", "data.skills.n_train=24", "data.skills.n_eval=6", "data.skills.n_preference=8",
         "rl.enabled=true", "rl.max_steps=2", "rl.batch_size=8", "rl.num_generations=4",
         "rl.max_completion_length=8", "rl.logging_steps=1", "rl.learning_rate=5e-4", "rl.max_seq_length=128",
         "rl.rewards=[exact_match, number_match]"]


@pytest.fixture(scope="module")
def staged(tiny_model_dir, tmp_path_factory):
    """artifacts/ with base, data and a (pass-through) preference stage pointing at the tiny model."""
    root = tmp_path_factory.mktemp("rl") / "artifacts"
    recipe = load_recipe("default", SMALL)
    for stage in ("base", "preference"):
        (root / stage).mkdir(parents=True)
        write_manifest(root / stage, stage=stage, inputs={}, settings={}, outputs={"model_dir": str(tiny_model_dir)})
    run_data(recipe, root)
    return root, recipe


def test_exact_match_on_plain_and_chat_completions():
    completions = [" 42\n", [{"role": "assistant", "content": "42"}], "42.", "The answer is 42"]
    assert exact_match(completions, ["42"] * 4) == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("text,number", [
    ("She pays 3 + 4 = 7 dollars.\n#### 1,234", "1234"),   # GSM8K's marker wins over earlier numbers
    ("so 12 apples and then 18 apples", "18"),             # else the last number
    ("It costs $5.", "5"), ("-3", "-3"), ("3.50", "3.5"), ("7.0", "7"), ("no digits here", None),
])
def test_gsm8k_number_extraction(text, number):
    assert extract_number(text) == number


def test_number_match_compares_the_extracted_numbers():
    completions = ["6 * 7 = 42\n#### 42", "I think 41", [{"role": "assistant", "content": "The total is $1,000."}], "none"]
    answers = ["Natalia sold 42 clips.\n#### 42", "42", "1000", "#### 0"]
    assert number_match(completions, answers) == [1.0, 0.0, 1.0, 0.0]


def test_disabled_stage_passes_the_preference_model_through(staged):
    root, _ = staged
    from pipelines.rl import run_rl

    outputs = run_rl(load_recipe("default"), root)
    assert outputs["skipped"] and outputs["model_dir"] == read_manifest("preference", root)["outputs"]["model_dir"]


def test_grpo_runs_and_logs_rewards(staged):
    import torch

    from pipelines.rl import run_rl

    root, recipe = staged
    torch.manual_seed(0)
    outputs = run_rl(recipe, root)
    history = json.loads((root / "rl" / "log_history.json").read_text())
    assert [row["step"] for row in history] == [1, 2]
    for row in history:
        for key in ("reward", "rewards/exact_match/mean", "rewards/number_match/mean"):
            assert 0.0 <= row[key] <= 2.0, (key, row)
        assert row["completions/max_length"] <= 8
    manifest = read_manifest("rl", root)
    assert manifest["metrics"]["last_logged_reward"] == history[-1]["reward"]
    assert manifest["inputs"]["prompts"]["rows"] > 0
    assert Path(outputs["adapter_dir"], "adapter_model.safetensors").exists()
    assert Path(outputs["model_dir"], "model.safetensors").exists()


def test_batch_must_hold_whole_groups(staged):
    from pipelines.rl import run_rl

    root, _ = staged
    with pytest.raises(LatheError, match=r"not a multiple of rl.num_generations=4.*rl.batch_size=4"):
        run_rl(load_recipe("default", SMALL + ["rl.batch_size=6"]), root)


def test_bad_rl_data_row_names_file_and_line(staged, tmp_path):
    from pipelines.rl import run_rl

    root, _ = staged
    data = tmp_path / "rl.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "completion": "4"}\n{"prompt": "no answer"}\n')
    with pytest.raises(LatheError, match=rf"{data}, line 2: .*\(from rl.data\)"):
        run_rl(load_recipe("default", SMALL + [f"rl.data={data}"]), root)
