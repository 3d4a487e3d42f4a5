"""evaluate → register → promote glue on the tiny model with a real MLflow sqlite store:
first version wins, identical re-registration is idempotent, a candidate that does not beat the
champion leaves it in place and the final report says why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipelines import evaluate, promote, register
from pipelines.data import run_data
from pipelines.manifest import write_manifest
from pipelines.preference import run_preference
from pipelines.rl import run_rl
from pipelines.sft import run_sft
from recipes import load_recipe
from tests.tiny_model import build_tiny_model

OVERRIDES = ["data.skills.n_train=12", "data.skills.n_eval=6", "data.skills.n_preference=4",
             "sft.enabled=false", "preference.enabled=false", "eval.suites=[{name: skills}]",
             "registry.model_name=tiny", "gate.min_improvement=0.0",
             "data.replay.enabled=false", "gate.guards=null", "gate.max_retention=null", "eval.intermediate_suites=null", "gate.required=[skills/exact_match]"]


def _pipeline(tmp: Path, model_dir: Path, capsys, overrides: list[str] = OVERRIDES) -> tuple[dict, str]:
    from registry import tracking

    recipe = load_recipe("default", overrides)
    tracking.configure(recipe.registry.tracking_uri, tmp)
    root = Path("artifacts")
    (root / "base").mkdir(parents=True, exist_ok=True)
    write_manifest(root / "base", stage="base", inputs={}, settings={},
                   outputs={"model_dir": str(model_dir), "model_hash": model_dir.name})
    run_data(recipe, root)
    run_sft(recipe, root)
    run_preference(recipe, root)
    run_rl(recipe, root)
    evaluate.run_evaluate(recipe, root)
    manifest = register.run_register(recipe, root)
    args = argparse.Namespace(force=False, reason=None, version=None)
    capsys.readouterr()
    promote.main(recipe, args)
    return manifest, capsys.readouterr().out


@pytest.fixture
def project(tmp_path, monkeypatch):
    from registry import store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LATHE_PIPELINE_ID", "test-lifecycle")
    store.reset()
    yield tmp_path
    store.reset()


def test_first_version_is_judged_against_its_base_then_a_tie_does_not_win(project, tiny_model_dir, capsys):
    first, out = _pipeline(project, tiny_model_dir, capsys)  # training off: the candidate IS the base model
    assert first["version"] == "1" and "NOT promoted" in out and "ties base" in out
    decision = json.loads((project / "artifacts/promote/decision.json").read_text())
    assert decision["compared_with"] == "base" and decision["champion_after"] is None
    report = (project / "artifacts/promote/report.md").read_text()
    assert "version 1: NOT promoted" in report and "champion zero" in report and "**tuned vs base model**" in report
    promote.main(load_recipe("default", OVERRIDES), argparse.Namespace(force=True, reason="test: accept it", version=None))
    assert "PROMOTED to champion" in capsys.readouterr().out

    again, out = _pipeline(project, tiny_model_dir, capsys)  # identical inputs: no duplicate version
    assert again["version"] == "1" and "already the champion" in (project / "artifacts/promote/report.md").read_text()

    other = build_tiny_model(project / "other", seed=1)  # a different random model: no better on skills
    second, out = _pipeline(project, other, capsys)
    assert second["version"] == "2"
    assert "NOT promoted (champion unchanged)" in out
    decision = json.loads((project / "artifacts/promote/decision.json").read_text())
    assert decision["champion_before"] == "1" and decision["champion_after"] == "1" and not decision["promote"]
    report = (project / "artifacts/promote/report.md").read_text()
    assert "NOT promoted" in report and "primary" in report
    # the champion was re-judged in the same evaluation run, and the report shows it
    metrics = json.loads((project / "artifacts/evaluate/metrics.json").read_text())
    assert metrics["champion"]["version"] == "1" and "champion" in report

    from registry import models

    assert models.get_version("tiny", "champion").version == "1"


def test_the_gate_decides_on_the_users_own_suite(project, tiny_model_dir, capsys):
    """A custom suite from a hand-written JSONL is the gate's primary metric: judged on base and candidate,
    compared item by item, and named in the decision and the report."""
    rows = [{"prompt": "Reply with nothing.", "answer": "^$"}, {"prompt": "Say NEVER.", "answer": "^NEVER$"},
            {"messages": [{"role": "user", "content": "Reply with nothing again."}], "answer": "^$"}]
    (project / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = f"{{name: tickets, file: {project / 'tickets.jsonl'}, kind: generate, metric: regex, max_gen_toks: 4}}"
    overrides = [o for o in OVERRIDES if not o.startswith(("eval.suites", "gate.required"))] + [
        f"eval.suites=[{suite}]", "gate.primary_metric=tickets/regex", "gate.required=[tickets/regex]"]
    _, out = _pipeline(project, tiny_model_dir, capsys, overrides)
    # The tiny model answers only newlines: the two "^$" rows are right, for base and candidate alike.
    metrics = json.loads((project / "artifacts/evaluate/metrics.json").read_text())
    assert metrics["base"]["tickets/regex"] == metrics["tuned"]["tickets/regex"] == pytest.approx(2 / 3)
    comparisons = json.loads((project / "artifacts/evaluate/comparisons.json").read_text())
    paired = comparisons["against"]["base"]["paired"]["tickets/regex"]
    assert paired["n"] == 3 and paired["delta"] == 0.0 and paired["primary"]
    decision = json.loads((project / "artifacts/promote/decision.json").read_text())
    assert not decision["promote"] and "NOT promoted" in out and "tickets/regex" in out
    report = (project / "artifacts/promote/report.md").read_text()
    verdict = report[report.index("## Verdict"):report.index("## Models")]  # first, before any table
    assert "NOT promoted" in verdict and "Gate policy: primary `tickets/regex`" in verdict
    assert "✘ FAIL · **primary**: tickets/regex" in verdict and "Significant drops vs base: none" in verdict
    import mlflow

    parent = mlflow.search_runs(experiment_names=["lathe"], filter_string="tags.`lathe.role` = 'pipeline'",
                                output_format="list")[0]
    assert "NOT promoted" in parent.data.tags["mlflow.note.content"]  # MLflow's run page opens on the verdict
    assert parent.data.metrics["promoted"] == 0.0 and parent.data.metrics["tuned.tickets/regex"] == pytest.approx(2 / 3)


def test_a_lora_candidate_is_registered_as_its_adapter_and_rejudged_from_it(project, tiny_model_dir, capsys):
    """SFT with LoRA: the version stores the adapter on the base registered once; when it is champion, the next
    evaluation resolves it (adapter merged onto the registered base) and scores it exactly as it scored when
    it was the candidate: the same weights."""
    lora = [o for o in OVERRIDES if o != "sft.enabled=false"] + [
        "sft.max_steps=2", "sft.batch_size=4", "sft.packing=false", "sft.learning_rate=1e-3"]
    first, _ = _pipeline(project, tiny_model_dir, capsys, lora)
    assert first["stored_as"] == "adapters sft on models:/tiny-base/1"
    from registry import models

    models.set_alias("tiny", "champion", first["version"])
    tuned = json.loads((project / "artifacts/evaluate/metrics.json").read_text())["tuned"]
    _pipeline(project, tiny_model_dir, capsys, lora)
    champion = json.loads((project / "artifacts/evaluate/metrics.json").read_text())["champion"]
    assert champion["version"] == first["version"]
    assert champion["metrics"]["skills/exact_match"] == tuned["skills/exact_match"]
    judged = json.loads((project / "artifacts/evaluate/champion/results.json").read_text())
    assert judged["model_hash"] == json.loads((project / "artifacts/evaluate/tuned/results.json").read_text())["model_hash"]
