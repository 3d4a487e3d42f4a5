"""The whole DVC chain as a user runs it, on the tiny random model: `lathe demo` (= `dvc repro` under
one MLflow parent run) in a committed copy of the project — real DVC, every stage's real command, real
lm-eval, a real MLflow store — then the README's DVC commands as written. The tiny model learns nothing
in two steps, so the gate must refuse it and the demo must say why. What the real model earns is
tests/test_demo.py's (`make check-demo`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.project import BIN, readme_env, run, run_demo

pytestmark = pytest.mark.timeout(1200)

TINY = {
    "data": {"skills": {"n_train": 24, "n_eval": 8, "n_preference": 8, "seed": 1234},
             "replay": {"enabled": False}},
    "sft": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "max_seq_length": 128},
    "preference": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "max_seq_length": 128},
    "eval": {"batch_size": 8, "intermediate_suites": ["skills"],
             "suites": [{"name": "skills"}, {"name": "retention", "limit": 8, "max_gen_toks": 16},
                        {"name": "mmlu", "subjects": ["marketing"], "limit": 8, "num_fewshot": 0},
                        {"name": "hellaswag", "limit": 8, "num_fewshot": 0}]},
    "registry": {"model_name": "tiny-chain"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir) -> Path:
    return run_demo(tmp_path_factory.mktemp("chain") / "lathe",
                    {**TINY, "model": {"id": str(tiny_model_dir), "dtype": "float32"}}, timeout=1100)


def test_the_gate_refuses_a_candidate_that_learned_nothing_and_the_demo_says_why(project):
    decision = json.loads((project / "artifacts/promote/decision.json").read_text())
    assert not decision["promote"] and decision["compared_with"] == "base", decision
    checks = {c["name"]: c for c in decision["checks"]}
    assert not checks["primary"]["passed"] and "skills/exact_match" in checks["primary"]["detail"]
    # 8 items cannot see a 10-point drop: the guards say so and refuse rather than pass blind
    for guard in ("guard mmlu/acc", "guard hellaswag/acc_norm"):
        assert checks[guard]["numbers"]["underpowered"] and not checks[guard]["passed"], checks[guard]
    out = (project / "demo.out").read_text()
    assert f"Eval report:  {project / 'artifacts/promote/report.html'}" in out
    assert "Champion:     none yet for tiny-chain (gate said: " in out and checks["primary"]["detail"] in out
    assert "version 1: NOT promoted (champion unchanged)" in (project / "artifacts/promote/report.md").read_text()


def test_the_refused_candidate_is_registered_as_adapters_on_its_base_and_is_not_champion(project):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # else the registry is this process's last one
    version = client.get_model_version_by_alias("tiny-chain", "candidate")
    assert str(version.version) == "1" and version.tags["lathe.base_version"] == "models:/tiny-chain-base/1"
    stored = Path(version.source.removeprefix("file://"))
    assert sorted(p.name for p in (stored / "adapters").iterdir()) == ["0-sft", "1-preference"]
    assert not (stored / "model.safetensors").exists()
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("tiny-chain", "champion")


def test_mlflow_has_one_parent_run_with_stage_runs(project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("lathe")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("lathe.role") == "pipeline"]
    assert len(parents) == 1
    children = {r.data.tags.get("lathe.stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"sft", "preference", "evaluate", "register", "promote"} <= set(children)
    assert "rl" not in children  # rl.enabled is false: a disabled stage records no run
    sft = children["sft"].data.metrics
    assert sft["sft.train_tokens_per_second"] > 0 and "loss" in sft
    judged = {r.data.tags["lathe.model_label"]: r.data.metrics for r in runs
              if r.data.tags.get("mlflow.parentRunId") == children["evaluate"].info.run_id}
    assert {"base", "sft", "tuned"} <= set(judged)  # one run per judged model, comparable side by side
    assert "mmlu/acc" in judged["tuned"] and "skills/exact_match" in judged["sft"]
    assert "NOT promoted" in parents[0].data.tags["mlflow.note.content"]  # the parent run opens on the verdict
    datasets = {d.dataset.name for d in client.get_run(parents[0].info.run_id).inputs.dataset_inputs}
    assert {"sft_train", "sft_val", "pref_train", "skills_eval"} <= datasets  # what the chain trained and was judged on


def test_second_repro_reruns_nothing(project):
    """`.venv/bin/dvc repro` exactly as the README writes it: no activated venv, no `lathe` on PATH."""
    done = subprocess.run([".venv/bin/dvc", "repro"], cwd=project, env=readme_env(project), capture_output=True, text=True)
    assert done.returncode == 0 and "Running stage" not in done.stdout, done.stdout + done.stderr


def test_the_readmes_dvc_commands_run_as_written(project, tmp_path):
    """Each DVC command of the README, as written, in a copy of the finished project (an experiment moves the
    workspace and logs runs; the other tests read the original). `dvc exp run -S` changes a gate param, so
    only promote reruns: the same command as the README's `sft.learning_rate` one, without retraining; what
    `dvc plots show` draws is checked in tests/pipelines/test_training.py."""
    copy = tmp_path / "lathe"
    shutil.copytree(project, copy, symlinks=True)
    env = readme_env(copy)
    experiment = [".venv/bin/dvc", "exp", "run", "-S", "gate.min_improvement=0.011"]
    for command in (experiment, [".venv/bin/dvc", "exp", "show", "--no-pager"], [".venv/bin/dvc", "metrics", "show"],
                    [".venv/bin/dvc", "metrics", "diff"], [".venv/bin/dvc", "plots", "show"],
                    [".venv/bin/dvc", "plots", "diff"]):
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        if command is experiment:
            assert "Running stage 'promote'" in done.stdout and "Running stage 'sft'" not in done.stdout, done.stdout
    shown = json.loads(subprocess.run([".venv/bin/dvc", "exp", "show", "--json"], cwd=copy, env=env,
                                      capture_output=True, text=True).stdout)
    experiments = [e for rev in shown for e in rev.get("experiments") or []]
    assert experiments, shown  # the experiment is listed, with its changed param
    assert "0.011" in json.dumps(experiments)
    metrics = subprocess.run([".venv/bin/dvc", "metrics", "show", "--json"], cwd=copy, env=env, capture_output=True, text=True)
    assert "skills/exact_match" in metrics.stdout


def test_changing_an_sft_param_invalidates_only_sft_and_later(project):
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["sft"]["max_steps"] += 1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run([str(BIN / "dvc"), "status", "--json"], project))
    finally:
        params_path.write_text(original)
    # DVC reports the stage whose own inputs changed; everything downstream of it reruns after it.
    assert set(status) == {"sft"}, status
    assert any("sft" in str(change) for change in status["sft"]), status
    downstream = run([str(BIN / "dvc"), "dag", "--dot", "promote"], project)
    for edge in ('"sft" -> "preference"', '"preference" -> "rl"', '"rl" -> "evaluate"', '"evaluate" -> "register"',
                 '"register" -> "promote"'):
        assert edge in downstream, downstream
