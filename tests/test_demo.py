"""What `make demo` promises, checked on the real thing (`make check-demo`; CI runs it after `make test`):
`lathe demo` on the default recipe in a committed copy of the project — the embedded SmolLM2-135M,
real DVC, MLflow and lm-eval — learns the held-out skills, keeps what the base could do (the guards
powered to see a 10-point drop, retention bounded), promotes it, and `lathe serve` answers the official
`openai` client with it; the same chain trained the old way (no replay) is refused for forgetting.
The chain's mechanics (DVC commands, reruns, runs, registry) are tests/test_chain.py's, on the tiny model.

    make check-demo      (~21 minutes on 2 cores: the demo, then the old-way candidate)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.project import BIN, env, run, run_demo
from tests.servers import free_port, wait_ready

pytestmark = [pytest.mark.demo, pytest.mark.timeout(2700)]


OLD_WAY = ["data.replay.enabled=false", "sft.max_steps=30", "sft.batch_size=8", "sft.packing=false"]
"""The default recipe before the forgetting measures: no replay; SFT 30 steps of 8 rows at the same learning rate."""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return run_demo(tmp_path_factory.mktemp("demo") / "lathe")


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


def test_serve_champion_with_openai_client(project):
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen([str(BIN / "lathe"), "serve", "--port", str(port)], cwd=project, env=env(),
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


def test_mlflow_shows_the_promoted_champion_stored_as_adapters(project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # else the registry is this process's last one
    experiment = client.get_experiment_by_name("lathe")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("lathe.role") == "pipeline")
    assert "PROMOTED" in parent.data.tags["mlflow.note.content"]  # the parent run opens on the verdict
    judged = {r.data.tags["lathe.model_label"]: r.data.metrics for r in runs if "lathe.model_label" in r.data.tags}
    assert judged["base"]["skills/exact_match"] < judged["tuned"]["skills/exact_match"]
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
        run([str(BIN / "lathe"), stage, *OLD_WAY], old)
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
