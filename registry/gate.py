"""The promotion gate: a pure function (candidate metrics, champion metrics, policy) → decision.

No MLflow here, so the policy can be read and tested on its own. The rules:

1. `required`: every metric in `policy.required`, and the primary metric, is present in the
   candidate and is a finite number.
2. No champion yet: the first version that passes (1) becomes champion.
3. `primary`: the candidate beats the champion's primary metric by MORE than `min_improvement`.
   A tie is not a win, even with `min_improvement: 0`: the incumbent stays (no churn on noise).
4. `no_regression`: no other metric that both report (finite, not matched by `regression_ignore`,
   default `*stderr*`) gets worse by more than `max_regression`.

All thresholds are absolute. Metrics in `policy.lower_is_better` improve by going down. Differences
within 1e-9 count as equal, so 0.65 - 0.60 is a drop of exactly 0.05, not 0.05000000000000004.
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

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "forced": self.forced, "reasons": list(self.reasons),
                "checks": [asdict(check) for check in self.checks]}


def decide(candidate: dict[str, float], champion: dict[str, float] | None, policy) -> Decision:
    """Judge `candidate` against `champion` (None: there is none yet) under a `GateConfig`."""
    checks = [_required(candidate, policy)]
    if champion is None:
        checks.append(Check("first_version", True, "no champion yet: the first version with every required metric wins"))
    else:
        checks.append(_primary(candidate, champion, policy))
        checks.append(_no_regression(candidate, champion, policy))
    promote = all(check.passed for check in checks)
    if promote:
        reasons = [check.detail for check in checks if check.name in ("primary", "first_version")]
    else:
        reasons = [check.detail for check in checks if not check.passed]
    return Decision(promote=promote, reasons=reasons, checks=checks)


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


def _primary(candidate: dict[str, float], champion: dict[str, float], policy) -> Check:
    key = policy.primary_metric
    new, old = _finite(candidate, key), _finite(champion, key)
    numbers = {"metric": key, "candidate": new, "champion": old, "min_improvement": policy.min_improvement}
    if new is None:
        return Check("primary", False, f"candidate has no {key}", numbers)
    if old is None:
        return Check("primary", False, f"champion has no {key} to compare with (policy changed?); "
                     "promote with force and a reason if this candidate should win", numbers)
    gain = _gain(key, new, old, policy)
    numbers["gain"] = gain
    passed = gain > policy.min_improvement + EPSILON
    verdict = "beats" if passed else ("ties" if abs(gain) <= EPSILON else "does not beat")
    return Check("primary", passed, f"{key}: candidate {new:.4g} {verdict} champion {old:.4g} "
                 f"(gain {gain:+.4g}, needs > {policy.min_improvement:g})", numbers)


def _no_regression(candidate: dict[str, float], champion: dict[str, float], policy) -> Check:
    drops: dict[str, dict[str, float]] = {}
    for key in sorted(set(candidate) & set(champion)):
        new, old = _finite(candidate, key), _finite(champion, key)
        ignored = any(fnmatch.fnmatchcase(key, pattern) for pattern in policy.regression_ignore)
        if key == policy.primary_metric or ignored or new is None or old is None:
            continue
        drops[key] = {"candidate": new, "champion": old, "drop": -_gain(key, new, old, policy)}
    numbers = {"max_regression": policy.max_regression, "compared": drops}
    too_far = {k: v for k, v in drops.items() if v["drop"] > policy.max_regression + EPSILON}
    if too_far:
        listed = "; ".join(f"{k} {v['champion']:.4g} → {v['candidate']:.4g} (drop {v['drop']:.4g})" for k, v in too_far.items())
        return Check("no_regression", False, f"regression beyond {policy.max_regression:g}: {listed}", numbers)
    if not drops:
        return Check("no_regression", True, "no other metric shared with the champion", numbers)
    worst = max(drops, key=lambda k: drops[k]["drop"])
    return Check("no_regression", True, f"no metric dropped more than {policy.max_regression:g} "
                 f"(worst: {worst} {drops[worst]['drop']:+.4g})", numbers)
