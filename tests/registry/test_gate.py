"""The promotion policy as a pure function: accept / refuse matrix, no MLflow involved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.schema import GateConfig
from registry.gate import decide

P = "skills/exact_match"


def policy(**kw) -> GateConfig:
    return GateConfig(**{"primary_metric": P, "required": [P], "min_improvement": 0.0, "max_regression": 0.05, **kw})


def check(decision, name):
    return next(c for c in decision.checks if c.name == name)


def test_first_version_with_required_metrics_becomes_champion():
    d = decide({P: 0.1}, None, policy())
    assert d.promote and [c.name for c in d.checks] == ["required", "first_version"]
    assert "first version" in d.reasons[0]


@pytest.mark.parametrize("candidate", [{}, {"mmlu/acc": 0.5}, {P: float("nan")}, {P: "0.5"}])
def test_missing_or_non_numeric_required_metric_refuses_even_the_first_version(candidate):
    d = decide(candidate, None, policy(required=[P, "mmlu/acc"]))
    assert not d.promote
    req = check(d, "required")
    assert not req.passed and P in req.detail and req.detail in d.reasons


def test_primary_metric_is_required_even_when_not_listed():
    d = decide({"mmlu/acc": 0.5}, None, policy(required=["mmlu/acc"]))
    assert not d.promote and P in check(d, "required").detail


def test_better_primary_promotes_and_reports_numbers():
    d = decide({P: 0.8}, {P: 0.6}, policy())
    assert d.promote
    primary = check(d, "primary")
    assert primary.numbers["candidate"] == 0.8 and primary.numbers["champion"] == 0.6
    assert primary.numbers["gain"] == pytest.approx(0.2)
    assert "beats" in d.reasons[0]


def test_tie_keeps_the_champion_even_with_zero_min_improvement():
    d = decide({P: 0.6}, {P: 0.6}, policy(min_improvement=0.0))
    assert not d.promote
    assert "ties" in check(d, "primary").detail


@pytest.mark.parametrize("new,promote", [(0.65, False), (0.7, False), (0.7001, True)])
def test_improvement_must_exceed_min_improvement(new, promote):
    # 0.7 - 0.6 is 0.09999999999999998 in floats: still a tie with min_improvement 0.1, not a loss
    assert decide({P: new}, {P: 0.6}, policy(min_improvement=0.1)).promote is promote


def test_worse_primary_refuses():
    d = decide({P: 0.5}, {P: 0.6}, policy())
    assert not d.promote and "does not beat" in d.reasons[0]


def test_regression_beyond_tolerance_on_a_shared_metric_refuses():
    d = decide({P: 0.9, "mmlu/acc": 0.40}, {P: 0.6, "mmlu/acc": 0.50}, policy(max_regression=0.05))
    assert not d.promote
    reg = check(d, "no_regression")
    assert not reg.passed and "mmlu/acc" in reg.detail
    assert reg.numbers["compared"]["mmlu/acc"]["drop"] == pytest.approx(0.10)
    assert check(d, "primary").passed  # the primary win does not excuse the regression


def test_drop_exactly_at_tolerance_is_allowed():
    # 0.60 - 0.65 is -0.05000000000000004 in floats: exactly the allowed drop
    d = decide({P: 0.9, "mmlu/acc": 0.60}, {P: 0.6, "mmlu/acc": 0.65}, policy(max_regression=0.05))
    assert d.promote, d.reasons


def test_unshared_and_stderr_metrics_are_not_compared():
    cand = {P: 0.9, "mmlu/acc_stderr": 0.01, "gsm8k/exact_match": 0.1}
    champ = {P: 0.6, "mmlu/acc_stderr": 0.30, "hellaswag/acc_norm": 0.9}
    d = decide(cand, champ, policy())
    assert d.promote
    assert check(d, "no_regression").numbers["compared"] == {}


def test_lower_is_better_metrics_flip_direction():
    pol = policy(primary_metric="val/loss", required=["val/loss"], lower_is_better=["val/loss", "val/ppl"])
    assert decide({"val/loss": 1.0}, {"val/loss": 1.2}, pol).promote
    assert not decide({"val/loss": 1.3}, {"val/loss": 1.2}, pol).promote
    regressed = decide({"val/loss": 1.0, "val/ppl": 9.0}, {"val/loss": 1.2, "val/ppl": 8.0}, pol)
    assert not regressed.promote and "val/ppl" in check(regressed, "no_regression").detail


def test_champion_without_primary_metric_refuses_with_a_way_out():
    d = decide({P: 0.9}, {"old/metric": 0.5}, policy())
    assert not d.promote and "force" in check(d, "primary").detail


def test_decision_serialises_to_json():
    d = decide({P: 0.8, "mmlu/acc": 0.5}, {P: 0.6, "mmlu/acc": 0.5}, policy())
    data = json.loads(json.dumps(d.to_dict()))
    assert data["promote"] is True and data["forced"] is False
    assert [c["name"] for c in data["checks"]] == ["required", "primary", "no_regression"]


def test_gate_does_not_import_mlflow():
    code = "import sys, registry.gate, registry.card; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_regression_ignore_patterns_skip_noisy_breakdowns():
    cand = {P: 0.9, "skills.upper/exact_match": 0.2, "mmlu/acc": 0.5}
    champ = {P: 0.6, "skills.upper/exact_match": 0.6, "mmlu/acc": 0.5}
    assert not decide(cand, champ, policy()).promote  # default: breakdowns are compared
    lenient = decide(cand, champ, policy(regression_ignore=["*stderr*", "*.*/*"]))
    assert lenient.promote and list(check(lenient, "no_regression").numbers["compared"]) == ["mmlu/acc"]
