"""Paired comparison of two models scored on the same items, with the drop the sample could detect.

Why paired: both models answer the same items, so item difficulty is shared. Comparing the two
means as if they came from independent samples counts that shared difficulty as noise twice and
gives intervals far too wide. Instead we look at the per-item difference d_i = b_i - a_i: its
mean is the change in score, and its spread (how much the models disagree item by item) is the
only noise that matters.

Tests: for 0/1 scores (right/wrong) only the items where the models disagree carry information,
so we use the exact McNemar test: under "no change" each disagreement is equally likely to go
either way, a fair coin, and the p-value is an exact two-sided binomial tail. For other scores
we use a paired z-test on d_i (normal approximation; fine for the hundreds of items an eval has).

MDE (minimum detectable difference): the smallest true change that this many items, with this
much disagreement, would flag with probability `power` (80%) at two-sided level `alpha` (5%).
A gate that sees "no significant drop" must also check that the MDE is below the drop it cares
about; otherwise "no drop found" only means "too few items to tell". For 0/1 scores a low
observed disagreement rate makes the standard error look tiny, but a real drop of delta would
itself force at least a delta share of items to disagree, so the MDE is never below the delta
that solves delta = k * sqrt(delta * (1 - delta) / n), i.e. k^2 / (n + k^2).

Pure standard library on purpose: the promotion gate imports this and must stay light.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist, stdev

Z_95 = 1.959963984540054  # two-sided alpha 0.05
Z_80 = 0.8416212335729143  # power 0.80

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Paired:
    n: int  # items scored by both models
    mean_a: float  # baseline (base or champion)
    mean_b: float  # candidate
    delta: float  # mean_b - mean_a; positive = candidate higher
    se: float  # standard error of the mean paired difference (ddof=1); 0 if n < 2
    ci95: tuple[float, float]  # delta +- Z_95 * se
    p_value: float  # two-sided
    mde: float  # minimum detectable difference at alpha / power; inf if n < 2
    test: str  # "mcnemar-exact" or "paired-z"
    discordant: tuple[int, int] | None  # (a right & b wrong, a wrong & b right); None if continuous

    def to_dict(self) -> dict:
        d = asdict(self)  # asdict keeps tuples; JSON wants lists
        d["ci95"] = list(self.ci95)
        d["discordant"] = list(self.discordant) if self.discordant is not None else None
        return d


def _k(alpha: float, power: float) -> float:
    """z(1 - alpha/2) + z(power): how many standard errors a true effect must be to be detected."""
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha}, {power}")
    return _NORMAL.inv_cdf(1.0 - alpha / 2.0) + _NORMAL.inv_cdf(power)


def _score(value: float | int | bool) -> float:
    x = float(value)  # bool -> 1.0 / 0.0
    if math.isnan(x):  # a NaN score is a broken metric, not a missing item: fail loudly
        raise ValueError("NaN score; use None for a missing item")
    return x


def mcnemar_exact(b01: int, b10: int) -> float:
    """Two-sided exact McNemar p: 2 * P(X <= min) for X ~ Binomial(b01 + b10, 1/2), capped at 1."""
    m = b01 + b10
    if m == 0:
        return 1.0
    lo = min(b01, b10)
    # Exact integer arithmetic (comb recurrence), so large counts neither overflow nor lose digits.
    term, tail = 1, 1
    for k in range(lo):
        term = term * (m - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2**m)


def paired(a: Mapping[Hashable, float | int | bool | None], b: Mapping[Hashable, float | int | bool | None],
           *, alpha: float = 0.05, power: float = 0.80) -> Paired:
    """Compare candidate `b` with baseline `a` on the items both scored (None = not scored)."""
    k = _k(alpha, power)
    keys = [key for key in a if key in b and a[key] is not None and b[key] is not None]
    if not keys:
        raise ValueError("no items scored by both models")
    xa = [_score(a[key]) for key in keys]  # type: ignore[arg-type]
    xb = [_score(b[key]) for key in keys]  # type: ignore[arg-type]
    n = len(keys)
    d = [y - x for x, y in zip(xa, xb)]
    mean_a, mean_b = math.fsum(xa) / n, math.fsum(xb) / n
    delta = math.fsum(d) / n
    se = stdev(d) / math.sqrt(n) if n >= 2 else 0.0
    ci95 = (delta - Z_95 * se, delta + Z_95 * se)
    binary = all(v in (0.0, 1.0) for v in xa) and all(v in (0.0, 1.0) for v in xb)

    if binary:
        b01 = sum(1 for x, y in zip(xa, xb) if x == 1.0 and y == 0.0)  # candidate lost the item
        b10 = sum(1 for x, y in zip(xa, xb) if x == 0.0 and y == 1.0)  # candidate gained the item
        p_value = mcnemar_exact(b01, b10)
        test, discordant = "mcnemar-exact", (b01, b10)
        # Floor: a true drop of mde needs >= mde disagreements, whatever this sample's rate was.
        mde = max(k * se, k * k / (n + k * k)) if n >= 2 else math.inf
    else:
        if se > 0.0:
            p_value = 2.0 * _NORMAL.cdf(-abs(delta) / se)  # = 2 * (1 - Phi(|z|)), without cancellation
        else:  # every item moved by exactly delta: no noise at all
            p_value = 1.0 if delta == 0.0 else 0.0
        test, discordant = "paired-z", None
        mde = k * se if n >= 2 else math.inf

    return Paired(n=n, mean_a=mean_a, mean_b=mean_b, delta=delta, se=se, ci95=ci95,
                  p_value=p_value, mde=mde, test=test, discordant=discordant)


def underpowered(result: Paired, max_drop: float) -> bool:
    """True when the sample could not reliably detect a drop of `max_drop` (so "no drop" proves little)."""
    return result.mde > max_drop + 1e-12


def wilson(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion; unlike p +- z*se it stays inside [0, 1] and is sane at 0 or n."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def items_needed(discordance: float, drop: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Planning: items a paired 0/1 comparison needs to detect `drop` with `power` at `alpha`.

    `discordance` is the expected share of items on which the two models disagree (e.g. from an
    earlier comparison); the paired difference then has variance about `discordance`, so we need
    k * sqrt(discordance / n) <= drop, i.e. n >= k^2 * discordance / drop^2.
    """
    if drop <= 0.0 or not 0.0 <= discordance <= 1.0:
        raise ValueError(f"need drop > 0 and discordance in [0, 1], got {drop}, {discordance}")
    k = _k(alpha, power)
    return math.ceil(k * k * discordance / (drop * drop))
