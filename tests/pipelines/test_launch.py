"""Multi-process launch: launcher command lines, DeepSpeed configs the HF Trainer accepts, and a real
2-process DeepSpeed ZeRO-3 SFT run of the tiny model on CPU that saves a consolidated model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines import launch
from pipelines.data import run_data
from pipelines.manifest import write_manifest
from recipes import LatheError, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def recipe_with(*overrides: str):
    return load_recipe("default", ["data.replay.enabled=false", "sft.packing=false", *overrides])


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_configs_are_filled_by_the_trainer(name, tmp_path):
    from transformers import TrainingArguments

    recipe = recipe_with(f"distributed.deepspeed={name}")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4,
                             gradient_accumulation_steps=3, max_grad_norm=0.5, **launch.deepspeed_args(recipe))
    config = args.hf_deepspeed_config.config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["gradient_clipping"]) == (4, 3, 0.5)  # "auto" values come from the recipe's arguments
    assert config["zero_optimization"]["stage"] == (2 if name == "zero2" else 3)
    if name != "zero2":  # consolidated 16-bit safetensors on save, never empty shards
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert args.hf_deepspeed_config.is_offload() == (name == "zero3_offload")


def test_deepspeed_config_by_name_or_path_and_a_clear_error(tmp_path):
    assert launch.deepspeed_args(recipe_with()) == {}
    assert launch.deepspeed_config_path(recipe_with("distributed.deepspeed=zero3")).name == "zero3.json"
    own = tmp_path / "mine.json"
    own.write_text('{"zero_optimization": {"stage": 1}}')
    assert launch.deepspeed_config(recipe_with(f"distributed.deepspeed={own}")) == {"zero_optimization": {"stage": 1}}
    with pytest.raises(LatheError, match=r"distributed.deepspeed: 'zero4'.*known: zero2, zero3, zero3_offload"):
        launch.deepspeed_args(recipe_with("distributed.deepspeed=zero4"))
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "stage": 3,\n}')
    with pytest.raises(LatheError, match=rf"{broken}:3: not valid JSON"):
        launch.deepspeed_config(recipe_with(f"distributed.deepspeed={broken}"))


def test_qlora_under_zero3_stores_4bit_weights_as_bf16(tmp_path):
    import torch

    from pipelines.training import qlora_quantization

    stages = {name: launch.zero_stage(recipe_with(*([f"distributed.deepspeed={name}"] if name else [])))
              for name in ("", "zero2", "zero3", "zero3_offload")}
    assert stages == {"": 0, "zero2": 2, "zero3": 3, "zero3_offload": 3}
    assert "bnb_4bit_quant_storage" not in qlora_quantization(zero3=False)
    assert qlora_quantization(zero3=True)["bnb_4bit_quant_storage"] is torch.bfloat16
    assert qlora_quantization(zero3=True)["bnb_4bit_quant_type"] == "nf4"


def test_launcher_command_lines():
    argv = ["sft", "--recipe", "r.yaml", "sft.max_steps=3"]
    ds = launch.launch_command(recipe_with("distributed.gpus_per_node=8", "distributed.launcher=deepspeed",
                                           "distributed.deepspeed=zero3"), argv)
    assert ds[1:3] == ["-m", "deepspeed.launcher.runner"] and "--no_local_rank" in ds
    assert ds[ds.index("--num_gpus") + 1] == "8" and ds[-6:] == ["--module", "pipelines.cli", *argv]
    tr = launch.launch_command(recipe_with("distributed.gpus_per_node=4"), argv)
    assert tr[1:3] == ["-m", "torch.distributed.run"] and tr[tr.index("--nproc_per_node") + 1] == "4"
    assert tr[-6:] == ["-m", "pipelines.cli", *argv]
    acc = launch.launch_command(recipe_with("distributed.gpus_per_node=2", "distributed.nodes=1",
                                            "distributed.launcher=accelerate", "distributed.deepspeed=zero2"), argv)
    assert acc[acc.index("--num_processes") + 1] == "2"
    assert Path(acc[acc.index("--config_file") + 1]).name == "deepspeed.yaml"
    assert Path(acc[acc.index("--deepspeed_config_file") + 1]).name == "zero2.json"


def test_multi_node_needs_a_hostfile_or_a_node_rank(tmp_path, monkeypatch):
    with pytest.raises(LatheError, match="distributed.hostfile is required"):
        launch.launch_command(recipe_with("distributed.nodes=2", "distributed.launcher=deepspeed"), ["sft"])
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    ds = launch.launch_command(recipe_with("distributed.nodes=2", "distributed.launcher=deepspeed",
                                           f"distributed.hostfile={hostfile}"), ["sft"])
    assert ds[ds.index("--hostfile") + 1] == str(hostfile) and ds[ds.index("--num_nodes") + 1] == "2"
    monkeypatch.delenv("NODE_RANK", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(LatheError, match="NODE_RANK"):
        launch.launch_command(recipe_with("distributed.nodes=2"), ["sft"])
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    tr = launch.launch_command(recipe_with("distributed.nodes=2"), ["sft"])
    assert tr[tr.index("--node_rank") + 1] == "1" and tr[tr.index("--master_addr") + 1] == "10.0.0.1"


def test_no_relaunch_for_one_process_or_inside_a_launch(monkeypatch):
    for name in launch.LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    assert launch.maybe_relaunch("sft", recipe_with(), ["sft"]) is False
    # A disabled stage writes a pass-through manifest in this process: no multi-GPU launch for that.
    disabled = recipe_with("distributed.gpus_per_node=2", "rl.enabled=false")
    assert launch.maybe_relaunch("rl", disabled, ["no-such-command"]) is False  # a launch would raise
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.maybe_relaunch("sft", recipe_with("distributed.gpus_per_node=2"), ["sft"]) is False


def test_a_failed_launch_is_a_clear_error(monkeypatch):
    for name in launch.LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    recipe = recipe_with("distributed.gpus_per_node=2", f"distributed.master_port={29400 + os.getpid() % 500}")
    with pytest.raises(LatheError, match=r"sft: the torchrun launch exited with code \d+.*torch.distributed.run"):
        launch.maybe_relaunch("sft", recipe, ["no-such-command"])


@pytest.fixture
def staged_cwd(tiny_model_dir, tmp_path):
    """A working directory with artifacts/{base,data} for the tiny model, as `lathe sft` expects."""
    recipe = load_recipe("default", ["data.replay.enabled=false", "data.skills.n_train=32", "data.skills.n_eval=6",
                                     "data.skills.n_preference=8"])
    (tmp_path / "artifacts" / "base").mkdir(parents=True)
    write_manifest(tmp_path / "artifacts" / "base", stage="base", inputs={}, settings={},
                   outputs={"model_dir": str(tiny_model_dir)})
    run_data(recipe, tmp_path / "artifacts")
    return tmp_path


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_process_zero3_sft_saves_a_model_that_reloads(method, staged_cwd, tiny_model_dir):
    """`lathe sft` re-launches itself as 2 torchrun processes training with ZeRO-3 over gloo; what it saves
    is whole (gathered on save), not empty ZeRO shards: the full model, or the adapter and the merged model."""
    pytest.importorskip("deepspeed", reason="needs the `deepspeed` extra")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    settings = {"name": "zero3-cpu", "data": {"skills": {"n_train": 32, "n_eval": 6, "n_preference": 8}},
                "sft": {"method": method, "max_steps": 3, "batch_size": 4, "logging_steps": 1, "learning_rate": 1e-3},
                "preference": {"enabled": False},
                "distributed": {"gpus_per_node": 2, "launcher": "torchrun", "deepspeed": "zero3",
                                "master_port": 29100 + os.getpid() % 500}}
    (staged_cwd / "recipe.yaml").write_text(yaml.safe_dump(settings))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{staged_cwd / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "sft", "--recipe", "recipe.yaml"], cwd=staged_cwd,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    print(f"2-process ZeRO-3 SFT: {time.monotonic() - started:.0f} s")
    assert "launching 2 processes" in run.stdout

    manifest = json.loads((staged_cwd / "artifacts" / "sft" / "manifest.json").read_text())
    history = json.loads((staged_cwd / "artifacts" / "sft" / "log_history.json").read_text())
    train_rows = [row for row in history if "loss" in row]  # then the final validation loss
    assert [row["step"] for row in train_rows] == [1, 2, 3] and "eval_loss" in history[-1]
    # 2 ranks × batch 4 = 8 rows per step: each rank saw its own half of the data (one process: 4 per step).
    assert train_rows[-1]["epoch"] == pytest.approx(3 / math.ceil(manifest["inputs"]["train"]["rows"] / 8))

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    if method == "lora":
        adapter = load_file(staged_cwd / manifest["outputs"]["adapter_dir"] / "adapter_model.safetensors")
        assert adapter and all(t.numel() > 0 for t in adapter.values())
        assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # trained, not the zero init
    merged = AutoModelForCausalLM.from_pretrained(staged_cwd / manifest["outputs"]["model_dir"]).state_dict()
    assert merged.keys() == original.keys()
    assert all(merged[k].shape == original[k].shape and merged[k].numel() > 0 for k in original)
    assert any(not merged[k].equal(original[k]) for k in original)
