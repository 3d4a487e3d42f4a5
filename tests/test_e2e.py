"""End to end: `lathe demo` (= `dvc repro`) on the default recipe in a temporary copy of the repo —
real DVC, real MLflow store, real lm-eval, the real embedded SmolLM2-135M — then `lathe serve` and
the official `openai` client against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SHARED_DATA
from tests.servers import free_port, wait_ready

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2700)]


OLD_WAY = ["data.replay.enabled=false", "sft.max_steps=30", "sft.batch_size=8", "sft.packing=false"]
"""The default recipe before the forgetting measures: no replay; SFT 30 steps of 8 rows at the same learning rate."""


def _copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=dest, check=True)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    return env


def _run(args, cwd, **kw):
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("e2e") / "lathe"
    proj.mkdir()
    _copy_project(proj)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["eval"]["mirror_dir"] = str(SHARED_DATA)  # the copy is not beside ../shared
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.time()
    out = _run([str(BIN / "lathe"), "demo"], proj, timeout=2400)
    print(f"lathe demo took {time.time() - started:.0f} s\n{out[-2000:]}")
    (proj / "demo.out").write_text(out)
    return proj


def test_demo_prints_report_champion_and_serve_lines(project):
    out = (project / "demo.out").read_text()
    assert f"Eval report:  {project / 'artifacts/promote/report.html'}" in out
    assert "Champion:     lathe-default version 1 (models:/lathe-default@champion)" in out
    assert "Serve it:     .venv/bin/lathe serve" in out
    html = (project / "artifacts/promote/report.html").read_text()
    assert "<script src" not in html and "skills" in html
    assert "version 1: PROMOTED to champion" in (project / "artifacts/promote/report.md").read_text()


def test_tuning_improves_held_out_skills(project):
    metrics = json.loads((project / "artifacts/evaluate/metrics.json").read_text())
    tuned, delta = metrics["tuned"]["skills/exact_match"], metrics["delta_vs_base"]["skills/exact_match"]
    assert delta >= 0.3 and tuned >= 0.4, metrics
    sft = json.loads((project / "artifacts/evaluate/sft/results.json").read_text())
    sft_score = sft["suites"]["skills"]["metrics"]["exact_match"]
    assert tuned >= sft_score - 0.05, "the preference stage must not lower the held-out skills score"
    md = (project / "artifacts/evaluate/report.md").read_text()
    for suite in ("skills", "mmlu", "hellaswag", "retention"):
        assert suite in md


def test_the_first_candidate_is_judged_against_its_base_with_powered_guards(project):
    decision = json.loads((project / "artifacts/promote/decision.json").read_text())
    assert decision["promote"] and decision["compared_with"] == "base", decision["reasons"]
    checks = {c["name"]: c for c in decision["checks"]}
    assert set(checks) == {"required", "primary", "guard mmlu/acc", "guard hellaswag/acc_norm", "retention"}
    for guard in ("guard mmlu/acc", "guard hellaswag/acc_norm"):
        numbers = checks[guard]["numbers"]
        # paired against the base on the same items, able to see a 10-point drop, and no significant drop
        assert numbers["paired"]["n"] == 120 and numbers["mde"] <= 0.10 and not numbers["underpowered"], numbers
        assert not numbers["significant"] and checks[guard]["passed"]
    assert checks["primary"]["numbers"]["paired"]["p_value"] < 0.05
    retention = checks["retention"]["numbers"]
    assert retention["candidate"] <= retention["max_retention"]
    report = (project / "artifacts/promote/report.md").read_text()
    assert "judged against the base model (no champion yet: champion zero)" in report
    assert "**tuned vs base model**" in report and "| mmlu/acc |" in report and "MDE" in report
    assert "**Say hi.**" in report and "**What is the capital of France?**" in report  # side by side


def _readme_env(project: Path) -> dict:
    """The environment of a user who typed the README's commands: no venv on PATH, the project's `.venv`."""
    venv = project / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV"))}
    env.update(PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != BIN),
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    return env


def test_second_repro_reruns_nothing(project):
    """`.venv/bin/dvc repro` exactly as the README writes it: no activated venv, no `lathe` on PATH."""
    done = subprocess.run([".venv/bin/dvc", "repro"], cwd=project, env=_readme_env(project), capture_output=True, text=True)
    assert done.returncode == 0 and "Running stage" not in done.stdout, done.stdout + done.stderr


def test_the_readmes_dvc_commands_run_as_written(project, tmp_path):
    """Each DVC command of the README, as written, in a copy of the finished project (an experiment moves the
    workspace and logs runs; the other tests read the original). `dvc exp run -S` changes a gate param, so
    only promote reruns: the same command as the README's `sft.learning_rate` one, without retraining (that
    chain's cost is `make demo`'s); what `dvc plots show` draws is checked in tests/pipelines/test_training.py."""
    copy = tmp_path / "lathe"
    shutil.copytree(project, copy, symlinks=True)
    env = _readme_env(copy)
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
        status = json.loads(_run([str(BIN / "dvc"), "status", "--json"], project))
    finally:
        params_path.write_text(original)
    # DVC reports the stage whose own inputs changed; everything downstream of it reruns after it.
    assert set(status) == {"sft"}, status
    assert any("sft" in str(change) for change in status["sft"]), status
    downstream = _run([str(BIN / "dvc"), "dag", "--dot", "promote"], project)
    for edge in ('"sft" -> "preference"', '"preference" -> "rl"', '"rl" -> "evaluate"', '"evaluate" -> "register"',
                 '"register" -> "promote"'):
        assert edge in downstream, downstream


def test_serve_champion_with_openai_client(project):
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen([str(BIN / "lathe"), "serve", "--port", str(port)], cwd=project, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        if not wait_ready(f"http://127.0.0.1:{port}", alive=lambda: server.poll() is None, timeout=180, interval=1):
            pytest.fail(f"server did not become ready:\n{server.stdout.read() if server.poll() is not None else ''}")
        name = client.models.list().data[0].id
        question = [{"role": "user", "content": "What number comes right after 41? Reply with the number only."}]
        reply = client.chat.completions.create(model=name, messages=question, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content.strip() == "42"
        assert reply.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(model=name, messages=question, max_tokens=8, temperature=0, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text.strip() == "42"
        # ... and it still chats like the base model did (the forgetting the old default showed)
        hi = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hi."}],
                                            max_tokens=32, temperature=0).choices[0].message.content
        assert any(word in hi.lower() for word in ("hello", "hi", "hey", "greetings")), hi
        paris = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=32,
            temperature=0).choices[0].message.content
        assert "Paris" in paris, paris
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_has_one_parent_run_with_stage_runs_and_the_champion(project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # else the registry is this process's last one
    experiment = client.get_experiment_by_name("lathe")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("lathe.role") == "pipeline"]
    assert len(parents) == 1
    children = {r.data.tags.get("lathe.stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"sft", "preference", "evaluate", "register", "promote"} <= set(children)
    sft = children["sft"].data.metrics
    assert sft["sft.train_tokens_per_second"] > 0 and "loss" in sft
    assert children["evaluate"].data.metrics["eval.skills/exact_match"] >= 0.4
    assert "rl" not in children  # rl.enabled is false: a disabled stage records no run
    judged = {r.data.tags["lathe.model_label"]: r.data.metrics for r in runs
              if r.data.tags.get("mlflow.parentRunId") == children["evaluate"].info.run_id}
    assert {"base", "sft", "tuned"} <= set(judged)  # one run per judged model, comparable side by side
    assert judged["base"]["skills/exact_match"] < judged["tuned"]["skills/exact_match"]
    assert "PROMOTED" in parents[0].data.tags["mlflow.note.content"]  # the parent run opens on the verdict
    datasets = {d.dataset.name for d in client.get_run(parents[0].info.run_id).inputs.dataset_inputs}
    assert {"sft_train", "sft_val", "pref_train", "skills_eval"} <= datasets  # what the chain trained and was judged on
    version = client.get_model_version_by_alias("lathe-default", "champion")
    assert str(version.version) == "1" and "lathe.git_commit" in version.tags
    # stored as its two LoRA adapters on the base registered once, not as a copy of the merged 270 MB
    stored = Path(version.source.removeprefix("file://"))
    assert sorted(p.name for p in (stored / "adapters").iterdir()) == ["0-sft", "1-preference"]
    assert not (stored / "model.safetensors").exists() and version.tags["lathe.base_version"] == "models:/lathe-default-base/1"


def test_a_candidate_trained_the_old_way_is_refused_by_the_default_gate(project, tmp_path):
    """The chain before the forgetting measures — no replay, the same learning rate and steps — trained
    for real, then judged by the default recipe's gate against the base: refused, for forgetting."""
    from eval.compare import compare
    from eval.harness import flat_metrics, run_suites
    from recipes import load_recipe
    from recipes.schema import SuiteConfig
    from registry.gate import decide

    old = tmp_path / "old"
    shutil.copytree(project / "artifacts" / "base", old / "artifacts" / "base")
    shutil.copy(project / "params.yaml", old / "params.yaml")
    for stage in ("data", "sft", "preference"):
        _run([str(BIN / "lathe"), stage, *OLD_WAY], old)
    assert json.loads((old / "artifacts/data/manifest.json").read_text())["metrics"].get("sft_replay_rows") is None
    recipe = load_recipe(project / "params.yaml")
    base_out = project / "artifacts/evaluate/base"
    base_results = json.loads((base_out / "results.json").read_text())
    results = run_suites(old / "artifacts/preference/model", [SuiteConfig(name="skills"), SuiteConfig(name="retention")],
                         mirror_dir=SHARED_DATA, skills_file=project / "artifacts/data/skills_eval.jsonl",
                         out_dir=old / "judged", label="old-way", cache_dir=project / ".lathe/eval-cache",
                         reference_dir=project / "artifacts/base/model")
    decision = decide(flat_metrics(results), flat_metrics(base_results), recipe.gate,
                      paired=compare(base_results, base_out, results, old / "judged"), against="base")
    retention = next(c for c in decision.checks if c.name == "retention")
    assert not decision.promote and not retention.passed, decision.to_dict()
    value = retention.numbers["candidate"]
    assert value > recipe.gate.max_retention and f"{value:.4g}" in retention.detail
    assert recipe.gate.retention_metric in retention.detail
    assert retention.detail in decision.reasons
