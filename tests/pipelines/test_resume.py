"""Checkpoints and resume: kill -9 an SFT run after a checkpoint, rerun it, and it continues from the last
complete checkpoint (skipping a half-written one) to the same final loss as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.checkpoints import checkpoint_dir, checkpoint_problem, last_good_checkpoint
from pipelines.data import run_data
from pipelines.manifest import write_manifest
from recipes import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RUN_SFT = ("import sys, torch; from pathlib import Path; from recipes import load_recipe; "
           "from pipelines.sft import run_sft; torch.manual_seed(0); "
           "run_sft(load_recipe(sys.argv[1]), Path(sys.argv[2]))")
SETTINGS = {"name": "resume", "data": {"skills": {"n_train": 40, "n_eval": 6, "n_preference": 8}},
            "sft": {"max_steps": 8, "save_steps": 2, "batch_size": 8, "logging_steps": 1, "learning_rate": 1e-3,
                    "merge": False}}


def fake_checkpoint(path: Path, step: int, complete: bool) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_last_good_checkpoint_skips_half_written_ones(tmp_path, capsys):
    assert last_good_checkpoint(tmp_path / "missing") is None
    fake_checkpoint(tmp_path / "checkpoint-2", 2, complete=True)
    good = fake_checkpoint(tmp_path / "checkpoint-10", 10, complete=True)  # numeric, not lexical, order
    fake_checkpoint(tmp_path / "checkpoint-12", 12, complete=False)
    (tmp_path / "checkpoint-14").mkdir()
    (tmp_path / "checkpoint-14" / "trainer_state.json").write_text('{"global_st')  # killed while writing
    assert last_good_checkpoint(tmp_path) == str(good)
    err = capsys.readouterr().err
    assert "checkpoint-14: trainer_state.json is not valid JSON" in err and "checkpoint-12: no trainer_state.json" in err
    assert checkpoint_problem(fake_checkpoint(tmp_path / "checkpoint-16", 15, complete=True)).startswith("trainer_state.json says")


@pytest.fixture(scope="module")
def workspace(tiny_model_dir, tmp_path_factory):
    """A recipe file and staged base + data artifacts, copied per run."""
    base = tmp_path_factory.mktemp("resume")
    recipe_path = base / "resume.yaml"
    recipe_path.write_text(yaml.safe_dump(SETTINGS))
    artifacts = base / "staged"
    (artifacts / "base").mkdir(parents=True)
    write_manifest(artifacts / "base", stage="base", inputs={}, settings={}, outputs={"model_dir": str(tiny_model_dir)})
    run_data(load_recipe(recipe_path), artifacts)
    return recipe_path, artifacts


def start(recipe: Path, artifacts: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "info"}
    return subprocess.Popen([sys.executable, "-c", RUN_SFT, str(recipe), str(artifacts)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def copy_staged(staged: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(staged, to)
    return to


def losses(artifacts: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in json.loads((artifacts / "sft" / "log_history.json").read_text())
            if "loss" in row}


def test_a_retrained_upstream_model_never_resumes_old_checkpoints(tmp_path):
    """The upstream model's path stays the same when it is re-trained; its manifest does not."""
    artifacts = tmp_path / "artifacts"
    (artifacts / "sft").mkdir(parents=True)
    write_manifest(artifacts / "sft", stage="sft", inputs={}, settings={"max_steps": 3}, outputs={"model_dir": "m"})

    def where(settings=None):
        return checkpoint_dir("preference", settings or {"max_steps": 3}, {"data": "abc"}, artifacts, upstream="sft")

    first = where()
    assert where() == first and first.parent == tmp_path / ".lathe" / "checkpoints" / "artifacts"
    assert where({"max_steps": 4}) != first
    write_manifest(artifacts / "sft", stage="sft", inputs={}, settings={"max_steps": 4}, outputs={"model_dir": "m"})
    assert where() != first


def test_kill_9_then_rerun_resumes_to_the_same_loss(workspace, tmp_path):
    recipe, staged = workspace
    straight = copy_staged(staged, tmp_path / "straight")
    proc = start(recipe, straight)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    reference = losses(straight)
    assert sorted(reference) == list(range(1, 9))

    crashed = copy_staged(staged, tmp_path / "crashed")
    proc = start(recipe, crashed)
    deadline = time.monotonic() + 600
    checkpoint_root = tmp_path / ".lathe" / "checkpoints" / "crashed"  # outside the stage's DVC output
    while not list(checkpoint_root.glob("sft-*/checkpoint-4")):
        assert proc.poll() is None, f"the run ended before checkpoint-4: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    (checkpoints,) = checkpoint_root.glob("sft-*")
    assert proc.returncode == -signal.SIGKILL
    assert not (crashed / "sft" / "manifest.json").exists()

    resume_from = last_good_checkpoint(checkpoints)
    step = int(Path(resume_from).name.split("-")[1])
    assert 2 <= step < 8
    # A crash in the middle of the next save leaves a half-written directory: it must be skipped.
    partial = checkpoints / f"checkpoint-{step + 2}"
    if not partial.exists():
        fake_checkpoint(partial, step + 2, complete=False)

    proc = start(recipe, crashed)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"resuming from {resume_from}" in err  # the stage chose the last complete checkpoint
    assert re.search(rf"Resuming training from checkpoint with epoch \d+ and global step {step}\b", err)  # transformers' log
    resumed = losses(crashed)
    assert sorted(resumed) == list(range(1, 9))  # steps before the checkpoint come from its trainer state
    state = json.loads((checkpoints / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    print(f"final loss: uninterrupted {reference[8]:.6f}, resumed from step {step} {resumed[8]:.6f}")
    assert resumed[8] == pytest.approx(reference[8], rel=1e-3, abs=1e-3)
