"""The promotion gate: a pure function (candidate, baseline, per-item comparisons, policy) → decision.

No MLflow here, so the policy can be read and tested on its own. The baseline is the current
champion, or — when there is none yet — the base model the candidate was trained from ("champion
zero"): a first version must beat its own base, under the same rules. The rules:

1. `required`: every metric in `policy.required`, and the primary metric, is present in the
   candidate and is a finite number.
2. `primary`: the candidate beats the baseline's primary metric by MORE than `min_improvement`, and,
   when both were scored on the same items, the paired difference is significant (p < `alpha`).
   A tie is not a win: the incumbent stays (no churn on noise).
3. `guard <metric>`, one check per guard metric (default: the headline metric of every suite both
   report, but the primary's and retention's): it fails when the metric drops by more than
   `max_regression`, or when its paired drop is significant (p < `alpha`) and larger than `tolerance`.
   Each guard reports the smallest drop its sample could have detected (`mde`, 80% power); one whose
   `mde` exceeds `max_regression` is *underpowered*, and with `require_power` that refuses promotion:
   a guard that cannot see the drop it is meant to stop protects nothing. A guard without per-item
   results (unpaired) has unknown power and counts as underpowered.
4. `retention`: with `max_retention` set, the candidate's `retention_metric` (default
   `retention/nll_gap`: how much less likely it finds the base model's own answers to held-out general
   prompts, nats per token; or `retention/kl`) is at most that bound.

Metrics in `policy.lower_is_better` improve by going down. Differences within 1e-9 count as equal.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import Any

EPSILON = 1e-9


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    checks: list[Check]
    forced: bool = False
    """True when a human overrode a refusal (`promote(force=True)`)."""
    compared_with: str | None = None
    """What the candidate was judged against: `base` (no champion yet) or `champion version N`."""

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "forced": self.forced, "compared_with": self.compared_with,
                "reasons": list(self.reasons), "checks": [asdict(check) for check in self.checks]}


def decide(candidate: dict[str, float], baseline: dict[str, float] | None, policy, *,
           paired: dict[str, dict] | None = None, against: str = "champion") -> Decision:
    """Judge `candidate` against `baseline` (the champion's or the base model's metrics; None: nothing
    to compare with) under a `GateConfig`. `paired` maps `suite/metric` to a paired comparison of the
    same items (`eval.paired.Paired.to_dict()`: delta = candidate − baseline, se, p_value, mde, n)."""
    paired = paired or {}
    checks = [_required(candidate, policy)]
    if baseline is None:
        checks.append(Check("baseline", False, "nothing to compare with: neither a champion nor the base model's "
                            "results (run `lathe evaluate`, which judges the base model too)"))
    else:
        checks.append(_primary(candidate, baseline, paired.get(policy.primary_metric), policy, against))
        checks += [_guard(key, candidate, baseline, paired.get(key), policy, against)
                   for key in guard_metrics(candidate, baseline, paired, policy)]
    if policy.max_retention is not None:
        checks.append(_retention(candidate, policy))
    promote = all(check.passed for check in checks)
    reasons = ([c.detail for c in checks if c.name == "primary"] if promote
               else [c.detail for c in checks if not c.passed])
    return Decision(promote=promote, reasons=reasons, checks=checks, compared_with=against if baseline else None)


def guard_metrics(candidate: dict, baseline: dict, paired: dict, policy) -> list[str]:
    """`policy.guards`, or every paired headline metric (then every shared metric when nothing is paired),
    minus the primary, retention and `regression_ignore` patterns."""
    if policy.guards is not None:
        return list(policy.guards)
    pool = list(paired) if paired else sorted(set(candidate) & set(baseline))
    return [key for key in pool if key != policy.primary_metric and not key.startswith("retention/")
            and not any(fnmatch.fnmatchcase(key, pattern) for pattern in policy.regression_ignore)]


def _finite(metrics: dict[str, float], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _gain(key: str, new: float, old: float, policy) -> float:
    """How much better `new` is than `old` (negative: worse), respecting the metric's direction."""
    return old - new if key in policy.lower_is_better else new - old


def _required(candidate: dict[str, float], policy) -> Check:
    wanted = list(dict.fromkeys([*policy.required, policy.primary_metric]))
    missing = [key for key in wanted if _finite(candidate, key) is None]
    numbers = {key: candidate.get(key) for key in wanted}
    if missing:
        return Check("required", False, f"candidate lacks required metric(s) {', '.join(missing)} "
                     "(not evaluated, or not a finite number)", numbers)
    return Check("required", True, f"all required metrics present: {', '.join(wanted)}", numbers)


def _stats(pair: dict | None) -> str:
    if not pair:
        return "unpaired"
    return f"paired n={pair['n']}, ±{pair['se']:.3g} SE, p={pair['p_value']:.3g}"


def _primary(candidate: dict, baseline: dict, pair: dict | None, policy, against: str) -> Check:
    key = policy.primary_metric
    new, old = _finite(candidate, key), _finite(baseline, key)
    numbers = {"metric": key, "candidate": new, "baseline": old, "against": against,
               "min_improvement": policy.min_improvement, "paired": pair}
    if new is None:
        return Check("primary", False, f"candidate has no {key}", numbers)
    if old is None:
        return Check("primary", False, f"{against} has no {key} to compare with (policy changed?); "
                     "promote with force and a reason if this candidate should win", numbers)
    gain = _gain(key, new, old, policy)
    numbers["gain"] = gain
    significant = pair is None or pair["p_value"] < policy.alpha
    passed = gain > policy.min_improvement + EPSILON and significant
    verdict = "beats" if passed else ("ties" if abs(gain) <= EPSILON else "does not beat")
    if gain > policy.min_improvement + EPSILON and not significant:
        verdict = f"is not significantly better than (p ≥ {policy.alpha:g})"
    return Check("primary", passed, f"{key}: candidate {new:.4g} {verdict} {against} {old:.4g} "
                 f"(gain {gain:+.4g}, needs > {policy.min_improvement:g}; {_stats(pair)})", numbers)


def _guard(key: str, candidate: dict, baseline: dict, pair: dict | None, policy, against: str) -> Check:
    new, old = _finite(candidate, key), _finite(baseline, key)
    name = f"guard {key}"
    numbers: dict[str, Any] = {"metric": key, "candidate": new, "baseline": old, "against": against,
                               "max_regression": policy.max_regression, "paired": pair}
    if new is None or old is None:
        who = "candidate" if new is None else against
        return Check(name, False, f"{key}: the {who} has no value, so a regression cannot be ruled out", numbers)
    drop = 0.0 - _gain(key, new, old, policy)  # not -gain: a tie would print "drop -0"
    mde = pair["mde"] if pair else math.inf
    significant = bool(pair) and pair["p_value"] < policy.alpha and drop > 0
    underpowered = mde > policy.max_regression + EPSILON
    numbers.update(drop=drop, mde=mde, significant=significant, underpowered=underpowered)
    said = f"{key}: {against} {old:.4g} → candidate {new:.4g} (drop {drop:+.4g}; {_stats(pair)}"
    said += f"; detectable drop {mde:.3g})" if pair else "; power unknown)"
    if drop > policy.max_regression + EPSILON:
        return Check(name, False, f"{said}: dropped more than max_regression {policy.max_regression:g}", numbers)
    if significant and drop > policy.tolerance + EPSILON:
        return Check(name, False, f"{said}: a significant drop (p < {policy.alpha:g})", numbers)
    if underpowered:
        why = (f"the sample cannot detect a drop of {policy.max_regression:g}" if pair
               else "no per-item results to compare pairwise")
        if policy.require_power:
            return Check(name, False, f"{said}: underpowered — {why} (gate.require_power)", numbers)
        return Check(name, True, f"{said}: no significant drop, but underpowered — {why}", numbers)
    return Check(name, True, f"{said}: no significant drop", numbers)


_RETENTION_SAYS = {"retention/nll_gap": "extra NLL of the base's own answers to held-out general prompts, nats/token",
                   "retention/kl": "KL(base ‖ candidate) on held-out general prompts, nats/token"}


def _retention(candidate: dict, policy) -> Check:
    key, bound = policy.retention_metric, policy.max_retention
    value = _finite(candidate, key)
    numbers = {"metric": key, "candidate": value, "max_retention": bound, "stderr": _finite(candidate, key + "_stderr"),
               "retention/kl": _finite(candidate, "retention/kl"), "retention/nll_gap": _finite(candidate, "retention/nll_gap")}
    if value is None:
        return Check("retention", False, f"{key} was not measured (add {{name: retention}} to eval.suites), "
                     f"but gate.max_retention is set", numbers)
    passed = value <= bound + EPSILON
    return Check("retention", passed, f"{key} ({_RETENTION_SAYS[key]}) {value:.4g} {'≤' if passed else '>'} bound "
                 f"{bound:g}" + ("" if passed else ": the candidate forgot what the base could do"), numbers)
