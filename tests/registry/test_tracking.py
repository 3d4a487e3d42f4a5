"""Store resolution, params flattening, lineage tags, and how stage runs find their parent run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from recipes import LatheError, Recipe
from registry import tracking

ROOT = Path(__file__).resolve().parents[2]


def test_env_var_wins_and_relative_sqlite_paths_resolve_against_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.configure(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert (tmp_path / "mlartifacts").is_dir()
    assert tracking.configure("sqlite:///sub/store.db", tmp_path) == f"sqlite:///{tmp_path}/sub/store.db"
    assert (tmp_path / "sub" / "mlartifacts").is_dir()  # artifacts live next to the database
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert tracking.configure("sqlite:///recipe.db", tmp_path) == f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.configure("sqlite:///recipe.db", tmp_path) == "http://127.0.0.1:5999"
    import mlflow

    assert mlflow.get_tracking_uri() == "http://127.0.0.1:5999"


def test_flatten_truncates_and_indexes_lists():
    recipe = Recipe.model_validate({"data": {"sft": [{"path": "a.jsonl"}, {"path": "b.jsonl", "weight": 2}]}})
    flat = tracking.flatten({"recipe": recipe, "long": "x" * 7000, "empty": {}, "tags": ["a", "b"]})
    assert flat["recipe.data.sft.1.path"] == "b.jsonl" and flat["recipe.data.sft.1.weight"] == "2.0"
    assert flat["recipe.sft.lora.target_modules"] == "all-linear" and flat["recipe.model.revision"] == "null"
    assert len(flat["long"]) == tracking.MAX_PARAM_VALUE and flat["long"].endswith("[truncated]")
    assert flat["empty"] == "{}" and flat["tags"] == '["a", "b"]'


def test_log_params_flat_logs_a_whole_recipe(store_uri):
    import mlflow

    with pytest.raises(LatheError, match="needs a run"):
        tracking.log_params_flat({"a": 1})
    with tracking.pipeline_run("exp", "p", {}) as run:
        recipe = {**Recipe().model_dump(mode="json"), "extra": {f"k{i}": i for i in range(30)}}
        flat = tracking.log_params_flat(recipe, prefix="recipe.")
    params = mlflow.get_run(run.info.run_id).data.params
    assert len(flat) > 100  # more than one MLflow batch
    assert params == flat and params["recipe.sft.lora.r"] == "16"


def test_stages_nest_under_the_pipeline_run_in_process(store_uri):
    import mlflow

    with tracking.pipeline_run("exp", "pipeline", {"lathe.recipe": "default"}) as parent:
        with tracking.stage_run("sft", {"lr": 0.1}) as child:
            pass
    got = mlflow.get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.data.tags["lathe.stage"] == "sft" and got.data.params == {"lr": "0.1"}
    assert got.data.tags["lathe.pipeline_id"] == mlflow.get_run(parent.info.run_id).data.tags["lathe.pipeline_id"]
    assert got.info.experiment_id == parent.info.experiment_id


def test_stage_processes_spawned_inside_pipeline_run_find_the_parent(store_uri, tmp_path):
    import mlflow

    code = ("from pathlib import Path; from registry import tracking; tracking.configure(None, Path.cwd()); "
            "ctx = tracking.stage_run('eval'); run = ctx.__enter__(); print(run.info.run_id); ctx.__exit__(None, None, None)")
    with tracking.pipeline_run("exp", "pipeline", {}) as parent:
        # what `dvc repro` does: a new process, inheriting the environment pipeline_run exported
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert mlflow.get_run(parent.info.run_id).info.status == "RUNNING"  # the stage leaves its status alone
    child = mlflow.get_run(done.stdout.strip().splitlines()[-1])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "LATHE_PIPELINE_ID" not in __import__("os").environ  # restored on exit


def test_stage_runs_alone_share_one_parent_per_pipeline_id(store_uri, monkeypatch):
    import mlflow

    monkeypatch.setenv("LATHE_PIPELINE_ID", "exec-42")
    with tracking.stage_run("data") as first:
        pass
    with pytest.raises(RuntimeError):
        with tracking.stage_run("sft") as second:
            raise RuntimeError("training crashed")
    parent_id = mlflow.get_run(first.info.run_id).data.tags["mlflow.parentRunId"]
    assert mlflow.get_run(second.info.run_id).data.tags["mlflow.parentRunId"] == parent_id
    parent = mlflow.get_run(parent_id)
    assert parent.data.tags["lathe.pipeline_id"] == "exec-42" and parent.data.tags["lathe.role"] == "pipeline"
    assert parent.info.status == "FAILED" and mlflow.get_run(second.info.run_id).info.status == "FAILED"
    with tracking.stage_run("sft"):
        pass
    assert mlflow.get_run(parent_id).info.status == "FINISHED"
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`lathe.role` = 'pipeline'")
    assert len(parents) == 1


def test_auto_pipeline_id_follows_code_and_params(store_uri, tmp_path):
    (tmp_path / "params.yaml").write_text("sft: {learning_rate: 0.001}\n")
    first = tracking.pipeline_id(tmp_path)
    assert first.startswith("auto-") and tracking.pipeline_id(tmp_path) == first
    (tmp_path / "dvc.lock").write_text("changes after every stage\n")
    assert tracking.pipeline_id(tmp_path) == first
    (tmp_path / "params.yaml").write_text("sft: {learning_rate: 0.002}\n")
    assert tracking.pipeline_id(tmp_path) != first


def test_runtime_tags_record_git_dvc_lock_and_versions(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    assert tracking.runtime_tags(tmp_path)["lathe.git_commit"] == "unknown"
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run([*git, "add", "dvc.lock"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    tags = tracking.runtime_tags(tmp_path)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["lathe.git_commit"] == tags["mlflow.source.git.commit"] == head
    assert tags["lathe.git_dirty"] == "false"
    assert tags["lathe.dvc_lock_sha256"] == hashlib.sha256(b"schema: '2.0'\n").hexdigest()
    for package in ("lm-eval", "transformers", "trl", "peft", "torch"):
        assert tags[f"lathe.version.{package}"] == metadata.version(package)
    (tmp_path / "new.txt").write_text("x")
    assert tracking.runtime_tags(tmp_path)["lathe.git_dirty"] == "true"


def test_log_metrics_flat_and_artifacts(store_uri, tmp_path):
    import mlflow

    (tmp_path / "report.md").write_text("# report")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.svg").write_text("<svg/>")
    with pytest.raises(LatheError, match="log_metrics_flat needs a run"):
        tracking.log_metrics_flat({"a": 1.0})
    with tracking.pipeline_run("exp", "p", {}) as run:
        logged = tracking.log_metrics_flat({"skills": {"exact_match": 0.5, "acc,none": 1}, "note": "n/a",
                                            "nan": float("nan"), "flag": True}, prefix="eval.")
        tracking.log_artifacts([tmp_path / "report.md", tmp_path / "plots"], "report")
        with pytest.raises(LatheError, match="does not exist"):
            tracking.log_artifacts([tmp_path / "missing.html"])
    assert logged == {"eval.skills.exact_match": 0.5, "eval.skills.acc_none": 1.0}
    assert mlflow.get_run(run.info.run_id).data.metrics == logged
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert files == {"report/report.md", "report/plots"}


def test_judged_models_compare_side_by_side_and_the_parent_carries_the_verdict(store_uri):
    import mlflow

    with tracking.pipeline_run("exp", "pipeline") as parent:
        with tracking.stage_run("evaluate") as stage:
            tracking.log_judged_models({"base": {"skills/exact_match": 0.0}, "tuned": {"skills/exact_match": 0.75}},
                                       {"base": "aaa", "tuned": "bbb"})
            assert tracking.describe_pipeline("**promoted**", {"tuned.skills/exact_match": 0.75}) == parent.info.run_id
    experiment = mlflow.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the classic training view
    judged = mlflow.search_runs([parent.info.experiment_id], filter_string="tags.`lathe.role` = 'judged'",
                                output_format="list")
    by_label = {r.data.tags["lathe.model_label"]: r for r in judged}
    assert {label: r.data.metrics for label, r in by_label.items()} == {
        "base": {"skills/exact_match": 0.0}, "tuned": {"skills/exact_match": 0.75}}
    assert all(r.data.tags["mlflow.parentRunId"] == stage.info.run_id for r in judged)
    got = mlflow.get_run(parent.info.run_id)
    assert got.data.tags["mlflow.note.content"] == "**promoted**"
    assert got.data.metrics == {"tuned.skills/exact_match": 0.75}


def test_the_data_files_are_the_runs_dataset_inputs(store_uri, tmp_path):
    import mlflow

    train = tmp_path / "sft_train.jsonl"
    train.write_text('{"messages": []}\n')
    outputs = {"sft_train": {"path": str(train), "rows": 1, "sha256": "ab" * 32},
               "sft_val": {"path": str(tmp_path / "sft_val.jsonl"), "rows": 0, "sha256": "cd" * 32}}
    with tracking.pipeline_run("exp", "pipeline") as parent:
        with tracking.stage_run("sft") as stage:
            assert tracking.log_datasets(outputs, [stage.info.run_id, parent.info.run_id]) == 1  # empty val left out
    for run_id in (stage.info.run_id, parent.info.run_id):
        (got,) = mlflow.get_run(run_id).inputs.dataset_inputs
        assert got.dataset.name == "sft_train" and got.dataset.digest == ("ab" * 32)[:36]
        assert str(train.resolve()) in got.dataset.source
        assert {t.key: t.value for t in got.tags} == {"mlflow.data.context": "training", "lathe.rows": "1"}


def test_a_version_names_the_same_lineage_as_its_pipeline_run(store_uri, tmp_path):
    """The chain rewrites dvc.lock as it runs: lineage read mid-chain is the parent run's, not a fresh one."""
    import mlflow

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    with tracking.pipeline_run("exp", "pipeline", tags=tracking.runtime_tags(tmp_path)) as parent:
        (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {sft: {}}\n")  # a stage finished meanwhile
        with tracking.stage_run("register"):
            lineage = tracking.lineage_tags(tmp_path)
    recorded = mlflow.get_run(parent.info.run_id).data.tags
    for key in ("lathe.git_commit", "lathe.git_dirty", "lathe.dvc_lock_sha256"):
        assert lineage[key] == recorded[key]
    assert tracking.runtime_tags(tmp_path)["lathe.dvc_lock_sha256"] != lineage["lathe.dvc_lock_sha256"]
