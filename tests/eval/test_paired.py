"""eval.paired: paired comparison, exact McNemar, MDE. Every expected value is worked out by hand here."""

from __future__ import annotations

import json
import math
import statistics
from math import comb
from statistics import NormalDist

import pytest

from eval.paired import Z_80, Z_95, Paired, items_needed, paired, underpowered, wilson

K = Z_95 + Z_80  # ≈ 2.8016 for alpha 0.05, power 0.80


def binary_pair(n: int, b01: int, b10: int, both_right: int = 0) -> tuple[dict, dict]:
    """n items: b01 where a is right and b wrong, b10 the reverse, both_right concordant 1/1, rest 0/0."""
    a, b = {}, {}
    for i in range(n):
        if i < b01:
            a[i], b[i] = 1, 0
        elif i < b01 + b10:
            a[i], b[i] = 0, 1
        elif i < b01 + b10 + both_right:
            a[i], b[i] = 1, 1
        else:
            a[i], b[i] = 0, 0
    return a, b


def test_k_matches_defaults():
    assert K == pytest.approx(2.8016, abs=1e-4)
    assert NormalDist().inv_cdf(0.975) == pytest.approx(Z_95, abs=1e-12)
    assert NormalDist().inv_cdf(0.80) == pytest.approx(Z_80, abs=1e-12)


def test_binary_all_right_vs_four_lost():
    a = {f"q{i}": True for i in range(20)}
    b = {f"q{i}": i >= 4 for i in range(20)}  # b wrong on q0..q3
    r = paired(a, b)
    assert r.test == "mcnemar-exact"
    assert r.n == 20
    assert r.discordant == (4, 0)
    assert r.mean_a == 1.0 and r.mean_b == pytest.approx(0.8)
    assert r.delta == pytest.approx(-0.2)
    assert r.p_value == pytest.approx(2 * 0.5**4)  # 0.125
    d = [-1.0] * 4 + [0.0] * 16
    se = statistics.stdev(d) / math.sqrt(20)
    assert r.se == pytest.approx(se)
    assert r.ci95 == pytest.approx((-0.2 - Z_95 * se, -0.2 + Z_95 * se))
    assert r.mde == pytest.approx(max(K * se, K**2 / (20 + K**2)))


def test_binary_ten_two_of_hundred():
    a, b = binary_pair(100, b01=10, b10=2, both_right=50)
    r = paired(a, b)
    assert r.discordant == (10, 2)
    assert r.delta == pytest.approx(-0.08)
    assert r.mean_a == pytest.approx(0.60) and r.mean_b == pytest.approx(0.52)
    assert r.p_value == pytest.approx(2 * sum(comb(12, k) for k in range(3)) / 2**12)  # 0.0386
    # Swapping the models mirrors the result: same p, opposite delta.
    s = paired(b, a)
    assert s.discordant == (2, 10) and s.delta == pytest.approx(0.08) and s.p_value == r.p_value


def test_no_discordant_pairs():
    a, b = binary_pair(400, b01=0, b10=0, both_right=300)
    r = paired(a, b)
    assert r.p_value == 1.0
    assert r.delta == 0.0 and r.se == 0.0
    assert r.ci95 == (0.0, 0.0)
    assert r.mde == pytest.approx(K**2 / (400 + K**2))
    assert r.mde == pytest.approx(0.0192, abs=1e-4)


def test_continuous_paired_z():
    base = [0.5, 0.25, 0.75, 0.4, 0.6, 0.33, 0.9, 0.1]
    d = [0.1, -0.2, 0.05, 0.3, -0.1, 0.0, 0.15, 0.2]
    a = {("t", i): x for i, x in enumerate(base)}
    b = {("t", i): x + di for i, (x, di) in enumerate(zip(base, d))}
    r = paired(a, b)
    assert r.test == "paired-z" and r.discordant is None and r.n == 8
    delta = sum(d) / 8  # 0.0625
    se = statistics.stdev(d) / math.sqrt(8)
    assert r.delta == pytest.approx(delta)
    assert r.se == pytest.approx(se)
    assert r.ci95 == pytest.approx((delta - 1.959963984540054 * se, delta + 1.959963984540054 * se))
    assert r.p_value == pytest.approx(2 * (1 - NormalDist().cdf(abs(delta) / se)))
    assert r.mde == pytest.approx(2.8015852181 * se)


def test_continuous_zero_se():
    a = {i: 0.5 for i in range(5)}
    assert paired(a, {i: 0.5 for i in range(5)}).p_value == 1.0
    r = paired(a, {i: 0.75 for i in range(5)})  # every item up by exactly 0.25
    assert r.se == 0.0 and r.delta == 0.25 and r.p_value == 0.0 and r.mde == 0.0


def test_overlap_and_none_dropped():
    a = {"x": 1, "y": 0, "z": None, "w": 1, "only_a": 1}
    b = {"x": 1, "y": None, "z": 1, "w": 0, "only_b": 0}
    r = paired(a, b)
    assert r.n == 2  # x and w; y and z have a None, only_a / only_b are in one dict
    assert r.discordant == (1, 0)
    assert r.delta == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="no items scored by both models"):
        paired({"x": 1, "y": None}, {"y": 1, "z": 0})
    with pytest.raises(ValueError, match="no items scored by both models"):
        paired({}, {})


def test_single_item_mde_infinite():
    r = paired({"x": 1}, {"x": 0})
    assert r.n == 1 and r.se == 0.0 and math.isinf(r.mde)
    assert underpowered(r, 0.5)


def test_mde_balanced_thirty_percent_of_200():
    a, b = binary_pair(200, b01=30, b10=30, both_right=100)
    r = paired(a, b)
    assert r.delta == 0.0 and r.p_value == 1.0
    # d: 30 × -1, 30 × +1, 140 × 0 → sample variance 60/199.
    se = math.sqrt(60 / 199) / math.sqrt(200)
    assert r.se == pytest.approx(se)
    expected = max(K * se, K**2 / (200 + K**2))  # the first term wins: 0.1088 vs 0.0378
    assert r.mde == pytest.approx(expected)
    assert r.mde == pytest.approx(0.1088, abs=1e-4)  # so 200 items at 30% disagreement cannot see a 10-point drop
    assert underpowered(r, 0.10) is True
    assert underpowered(r, 0.11) is False
    assert underpowered(r, r.mde) is False  # at the boundary: not underpowered


def test_mde_tracks_alpha_and_power():
    a, b = binary_pair(200, b01=30, b10=30)
    r = paired(a, b, alpha=0.10, power=0.90)
    k = NormalDist().inv_cdf(0.95) + NormalDist().inv_cdf(0.90)
    assert r.mde == pytest.approx(k * math.sqrt(60 / 199) / math.sqrt(200))


def test_items_needed():
    assert items_needed(0.3, 0.1) == math.ceil(2.8015852181**2 * 0.3 / 0.01)
    assert items_needed(0.3, 0.1) == 236
    with pytest.raises(ValueError):
        items_needed(0.3, 0.0)


def test_wilson():
    lo, hi = wilson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(Z_95**2 / (10 + Z_95**2))  # closed form at 0 successes
    assert hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert 0.5 - lo == pytest.approx(hi - 0.5)
    assert wilson(0, 0) == (0.0, 1.0)


def test_to_dict_is_json_friendly():
    a, b = binary_pair(20, b01=3, b10=1)
    r = paired(a, b)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["ci95"] == list(r.ci95) and d["discordant"] == [3, 1] and d["test"] == "mcnemar-exact"
    assert set(d) == set(Paired.__dataclass_fields__)
    assert paired({1: 0.5}, {1: 0.7}).to_dict()["discordant"] is None


def test_mcnemar_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for b01, b10, n in [(4, 0, 20), (10, 2, 100), (7, 5, 50), (25, 12, 300), (3, 3, 10)]:
        r = paired(*binary_pair(n, b01, b10))
        assert r.p_value == pytest.approx(stats.binomtest(min(b01, b10), b01 + b10, 0.5).pvalue, rel=1e-9)
