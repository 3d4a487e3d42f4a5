"""`lathe report`: the report (md + self-contained html) rebuilt from stored results, the training logs
and the promotion decision, evaluating nothing; a clear error when nothing has been evaluated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.schema import GateConfig, SuiteConfig
from registry import gate
from tests.conftest import ROOT

LATHE = str(Path(sys.executable).parent / "lathe")
RECIPE = str(ROOT / "recipes" / "default.yaml")


def lathe(*args, cwd: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([LATHE, "report", "--recipe", RECIPE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory) -> Path:
    """A project dir whose artifacts/ hold what `dvc repro` leaves: evaluate/<label>/results.json for base
    and tuned, an SFT loss log and a promotion decision."""
    from eval.harness import run_suites

    project = tmp_path_factory.mktemp("project")
    artifacts = project / "artifacts"
    skills = project / "skills_eval.jsonl"
    skills.write_text(json.dumps({"skill": "upper", "prompt": "Say HI", "answer": "HI"}) + "\n")
    base = run_suites(tiny_model_dir, [SuiteConfig(name="skills")], mirror_dir=project, skills_file=skills,
                      out_dir=artifacts / "evaluate" / "base", label="base")
    tuned = {**base, "label": "tuned"}
    tuned["suites"] = {"skills": {**base["suites"]["skills"], "metrics": {"exact_match": 1.0, "exact_match_stderr": 0.0}}}
    (artifacts / "evaluate" / "tuned").mkdir()
    (artifacts / "evaluate" / "tuned" / "results.json").write_text(json.dumps(tuned))
    (artifacts / "sft").mkdir()
    (artifacts / "sft" / "log_history.json").write_text(json.dumps([{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.25}]))
    decision = gate.decide({"skills/exact_match": 1.0}, {"skills/exact_match": 0.0}, GateConfig(), against="base")
    (artifacts / "promote").mkdir()
    (artifacts / "promote" / "decision.json").write_text(json.dumps({"name": "lathe-default", "candidate": "7",
                                                                      **decision.to_dict()}))
    return project


def test_report_is_rebuilt_from_stored_results(evaluated):
    done = lathe(cwd=evaluated)
    assert done.returncode == 0, done.stderr
    out = evaluated / "artifacts" / "report"
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, html):
        assert "+1.000" in text                                           # skills Δ tuned vs base
        assert "lathe-default version 7: PROMOTED to champion" in text    # from decision.json
        assert "judged against the base model (no champion yet: champion zero)" in text and "beats base 0" in text
        assert "2.5000" in text and "1.2500" in text                      # the SFT loss log
        assert "Say HI" in text                                           # a stored sample output
    assert "<script" not in html and "<link" not in html                  # self-contained
    assert "artifacts/report/report.html" in done.stdout


def test_report_out_dir_and_without_a_decision(evaluated, tmp_path):
    decision = evaluated / "artifacts" / "promote" / "decision.json"
    saved = decision.read_text()
    decision.unlink()
    try:
        done = lathe("--out", str(tmp_path / "elsewhere"), cwd=evaluated)
    finally:
        decision.write_text(saved)
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "elsewhere" / "report.md").read_text()
    assert "no promotion decision yet" in done.stdout
    assert "PROMOTED" not in md and "tuned" in md and (tmp_path / "elsewhere" / "report.html").is_file()


def test_report_without_results_is_a_clear_error(tmp_path):
    done = lathe(cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "nothing has been evaluated yet" in done.stderr and "lathe evaluate" in done.stderr
    assert not (tmp_path / "artifacts" / "report").exists()
