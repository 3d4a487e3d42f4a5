"""`lathe evaluate --endpoint URL`: the recipe's suites against a running server, written outside the
DVC outputs, flat metrics printed; clear errors when the tokenizer cannot be found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.manifest import write_manifest
from tests.conftest import ROOT
from tests.serving.conftest import MODEL_NAME, running_server

LATHE = str(Path(sys.executable).parent / "lathe")
RECIPE = str(ROOT / "recipes" / "default.yaml")
SKILLS = [{"skill": "upper", "prompt": "Say HI", "answer": "HI"}, {"skill": "sum", "prompt": "What is 2+2?", "answer": "4"}]


@pytest.fixture(scope="module")
def base_url(tiny_model_dir):
    with running_server(model_dir=tiny_model_dir, model_name=MODEL_NAME) as base:
        yield f"{base}/v1"


def lathe(*args, cwd: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    return subprocess.run([LATHE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_evaluate_endpoint_writes_results_and_report_outside_dvc_outputs(base_url, tiny_model_dir, shared_data, tmp_path):
    skills = tmp_path / "skills_eval.jsonl"
    skills.write_text("".join(json.dumps(r) + "\n" for r in SKILLS))
    (tmp_path / "artifacts" / "data").mkdir(parents=True)
    write_manifest(tmp_path / "artifacts" / "data", stage="data", inputs={}, settings={},
                   outputs={"skills_eval": {"path": str(skills), "rows": len(SKILLS)}})
    done = lathe("evaluate", "--recipe", RECIPE, "--endpoint", base_url, "--served-model", MODEL_NAME,
                 "--tokenizer", str(tiny_model_dir), f"eval.mirror_dir={shared_data}",
                 "eval.suites=[{name: skills}, {name: mmlu, subjects: [anatomy], limit: 2, num_fewshot: 0}]",
                 "gate.guards=null", "gate.max_retention=null", "eval.intermediate_suites=null", "gate.required=[skills/exact_match]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "artifacts" / "endpoint-eval" / MODEL_NAME
    results = json.loads((out / "results.json").read_text())
    assert results["suites"]["mmlu"]["settings"]["backend"] == "local-completions"
    assert results["suites"]["skills"]["settings"]["endpoint"] == base_url
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"mmlu/acc", "skills/exact_match", "skills.upper/exact_match"}
    assert "mmlu/acc" in done.stdout and f"{metrics['mmlu/acc']:.3f}" in done.stdout  # the flat metrics, printed
    for report in ("report.md", "report.html"):
        assert f"{MODEL_NAME} at {base_url}" in (out / report).read_text()
    assert not (tmp_path / "artifacts" / "evaluate").exists()  # the DVC stage's output is left alone


def test_evaluate_endpoint_needs_a_tokenizer(base_url, tmp_path):
    other = lathe("evaluate", "--recipe", RECIPE, "--endpoint", base_url, "--served-model", MODEL_NAME, cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "--tokenizer DIR is needed" in other.stderr and "'lathe-default'" in other.stderr
    # The recipe's own model: the tokenizer comes from the registry's champion, and there is none yet.
    own = lathe("evaluate", "--recipe", RECIPE, "--endpoint", base_url, cwd=tmp_path)
    assert own.returncode == 2 and "Traceback" not in own.stderr
    assert "taken from the registry's champion" in own.stderr and "no MLflow store" in own.stderr
    assert "Or pass --tokenizer DIR" in own.stderr
    stray = lathe("evaluate", "--recipe", RECIPE, "--tokenizer", str(tmp_path), cwd=tmp_path)
    assert stray.returncode == 2 and "go with --endpoint" in stray.stderr
