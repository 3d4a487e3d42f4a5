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
    # require_power off: most tests here exercise the unpaired fallback, whose power is unknown
    return GateConfig(**{"primary_metric": P, "required": [P], "min_improvement": 0.0, "max_regression": 0.05,
                         "require_power": False, **kw})


def check(decision, name):
    return next(c for c in decision.checks if c.name == name)


def test_nothing_to_compare_with_refuses_even_a_first_version():
    d = decide({P: 0.1}, None, policy())
    assert not d.promote and [c.name for c in d.checks] == ["required", "baseline"]
    assert "nothing to compare with" in d.reasons[0] and d.compared_with is None


@pytest.mark.parametrize("candidate", [{}, {"mmlu/acc": 0.5}, {P: float("nan")}, {P: "0.5"}])
def test_missing_or_non_numeric_required_metric_refuses_even_the_first_version(candidate):
    d = decide(candidate, {P: 0.0, "mmlu/acc": 0.5}, policy(required=[P, "mmlu/acc"]), against="base")
    assert not d.promote
    req = check(d, "required")
    assert not req.passed and P in req.detail and req.detail in d.reasons


def test_primary_metric_is_required_even_when_not_listed():
    d = decide({"mmlu/acc": 0.5}, {"mmlu/acc": 0.5}, policy(required=["mmlu/acc"]))
    assert not d.promote and P in check(d, "required").detail


def test_better_primary_promotes_and_reports_numbers():
    d = decide({P: 0.8}, {P: 0.6}, policy())
    assert d.promote
    primary = check(d, "primary")
    assert primary.numbers["candidate"] == 0.8 and primary.numbers["baseline"] == 0.6
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
    reg = check(d, "guard mmlu/acc")
    assert not reg.passed and "mmlu/acc" in reg.detail
    assert reg.numbers["drop"] == pytest.approx(0.10)
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
    assert [c.name for c in d.checks] == ["required", "primary"]


def test_lower_is_better_metrics_flip_direction():
    pol = policy(primary_metric="val/loss", required=["val/loss"], lower_is_better=["val/loss", "val/ppl"])
    assert decide({"val/loss": 1.0}, {"val/loss": 1.2}, pol).promote
    assert not decide({"val/loss": 1.3}, {"val/loss": 1.2}, pol).promote
    regressed = decide({"val/loss": 1.0, "val/ppl": 9.0}, {"val/loss": 1.2, "val/ppl": 8.0}, pol)
    assert not regressed.promote and "val/ppl" in check(regressed, "guard val/ppl").detail


def test_champion_without_primary_metric_refuses_with_a_way_out():
    d = decide({P: 0.9}, {"old/metric": 0.5}, policy())
    assert not d.promote and "force" in check(d, "primary").detail


def test_decision_serialises_to_json():
    d = decide({P: 0.8, "mmlu/acc": 0.5}, {P: 0.6, "mmlu/acc": 0.5}, policy())
    data = json.loads(json.dumps(d.to_dict()))
    assert data["promote"] is True and data["forced"] is False
    assert [c["name"] for c in data["checks"]] == ["required", "primary", "guard mmlu/acc"]


def test_gate_does_not_import_mlflow():
    code = "import sys, registry.gate, registry.card; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_regression_ignore_patterns_skip_noisy_breakdowns():
    cand = {P: 0.9, "skills.upper/exact_match": 0.2, "mmlu/acc": 0.5}
    champ = {P: 0.6, "skills.upper/exact_match": 0.6, "mmlu/acc": 0.5}
    assert not decide(cand, champ, policy()).promote  # default: breakdowns are compared
    lenient = decide(cand, champ, policy(regression_ignore=["*stderr*", "*.*/*"]))
    assert lenient.promote and [c.name for c in lenient.checks][2:] == ["guard mmlu/acc"]


# ---- paired comparisons, power and champion zero ---------------------------------------------------

def pair(delta, p_value, mde, n=300, se=0.02):
    return {"n": n, "delta": delta, "se": se, "p_value": p_value, "mde": mde, "mean_a": 0.5, "mean_b": 0.5 + delta,
            "ci95": [delta - 1.96 * se, delta + 1.96 * se], "test": "mcnemar-exact"}


PAIRED_POLICY = dict(require_power=True, max_regression=0.10)


def test_champion_zero_is_the_base_model_and_the_decision_says_so():
    base = {P: 0.05, "mmlu/acc": 0.30}
    paired = {P: pair(0.75, 1e-9, 0.05, n=42), "mmlu/acc": pair(0.0, 1.0, 0.06)}
    d = decide({P: 0.80, "mmlu/acc": 0.30}, base, policy(**PAIRED_POLICY), paired=paired, against="base")
    assert d.promote and d.compared_with == "base" and d.to_dict()["compared_with"] == "base"
    assert "candidate 0.8 beats base 0.05" in check(d, "primary").detail
    assert check(d, "guard mmlu/acc").numbers["mde"] == 0.06


def test_a_significant_guard_drop_refuses_even_below_max_regression():
    paired = {P: pair(0.7, 1e-9, 0.05), "mmlu/acc": pair(-0.06, 0.01, 0.05)}
    d = decide({P: 0.8, "mmlu/acc": 0.24}, {P: 0.1, "mmlu/acc": 0.30}, policy(**PAIRED_POLICY), paired=paired)
    guard = check(d, "guard mmlu/acc")
    assert not d.promote and not guard.passed and "significant drop" in guard.detail and guard.numbers["significant"]
    tolerant = decide({P: 0.8, "mmlu/acc": 0.24}, {P: 0.1, "mmlu/acc": 0.30},
                      policy(**PAIRED_POLICY, tolerance=0.07), paired=paired)
    assert tolerant.promote, tolerant.reasons


def test_an_underpowered_guard_refuses_only_when_power_is_required():
    paired = {P: pair(0.7, 1e-9, 0.05), "hellaswag/acc_norm": pair(-0.02, 0.5, 0.25, n=20)}
    cand, base = {P: 0.8, "hellaswag/acc_norm": 0.33}, {P: 0.1, "hellaswag/acc_norm": 0.35}
    strict = decide(cand, base, policy(**PAIRED_POLICY), paired=paired, against="base")
    guard = check(strict, "guard hellaswag/acc_norm")
    assert not strict.promote and "underpowered" in guard.detail and "0.25" in guard.detail
    lenient = decide(cand, base, policy(max_regression=0.10, require_power=False), paired=paired, against="base")
    assert lenient.promote and "underpowered" in check(lenient, "guard hellaswag/acc_norm").detail


def test_unpaired_guards_have_unknown_power():
    d = decide({P: 0.8, "mmlu/acc": 0.3}, {P: 0.1, "mmlu/acc": 0.3}, policy(**PAIRED_POLICY))
    assert not d.promote and "no per-item results" in check(d, "guard mmlu/acc").detail


def test_a_primary_gain_that_is_not_significant_does_not_promote():
    paired = {P: pair(0.05, 0.4, 0.2, n=42)}
    d = decide({P: 0.65}, {P: 0.60}, policy(**PAIRED_POLICY), paired=paired)
    assert not d.promote and "not significantly better" in check(d, "primary").detail


def test_retention_bound_refuses_a_model_that_forgot_and_names_the_numbers():
    pol = policy(require_power=False, max_retention=0.3)
    forgot = decide({P: 0.9, "retention/nll_gap": 0.85, "retention/kl": 0.1}, {P: 0.1}, pol, against="base")
    check_ = check(forgot, "retention")
    assert not forgot.promote and "retention/nll_gap" in check_.detail and "0.85" in check_.detail and "0.3" in check_.detail
    kept = decide({P: 0.9, "retention/nll_gap": -0.2, "retention/kl": 0.9}, {P: 0.1}, pol, against="base")
    assert kept.promote  # grew surer of the base's answers: moved (KL), but forgot nothing
    by_kl = decide({P: 0.9, "retention/nll_gap": -0.2, "retention/kl": 0.9}, {P: 0.1},
                   policy(require_power=False, max_retention=0.3, retention_metric="retention/kl"), against="base")
    assert not by_kl.promote and "retention/kl" in check(by_kl, "retention").detail
    unmeasured = decide({P: 0.9}, {P: 0.1}, pol, against="base")
    assert not unmeasured.promote and "not measured" in check(unmeasured, "retention").detail


def test_explicit_guards_are_the_only_guards():
    paired = {P: pair(0.7, 1e-9, 0.05), "mmlu/acc": pair(0.0, 1.0, 0.05), "gsm8k/exact_match_strict-match":
              pair(-0.5, 0.5, 0.9, n=2)}
    cand = {P: 0.8, "mmlu/acc": 0.3, "gsm8k/exact_match_strict-match": 0.0}
    base = {P: 0.1, "mmlu/acc": 0.3, "gsm8k/exact_match_strict-match": 0.5}
    d = decide(cand, base, policy(**PAIRED_POLICY, guards=["mmlu/acc"]), paired=paired, against="base")
    assert d.promote and [c.name for c in d.checks] == ["required", "primary", "guard mmlu/acc"]
