"""Skew-robust critical values of the paired t statistic: checked against an independent simulation (another
seed, a plain loop over scipy's t statistic), never below Student's, used consistently by the interval, the
p-value, the decision and the MDE."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from normlab.lab import verdict
from normlab.lab.verdict import SUPPORTED, Rule, _crit, _sf, decide


@pytest.mark.parametrize("n", [3, 5, 10])
def test_skew_robust_critical_value_matches_an_independent_simulation(n):
    rng = np.random.default_rng(99)
    d = 1.0 - rng.exponential(size=(100_000, n))  # centred exponential, skewed against a "greater" rule
    tstat = stats.ttest_1samp(d, 0.0, axis=1).statistic
    ref = np.quantile(tstat, 0.975)
    assert _crit(n, 0.025) == pytest.approx(ref, rel=0.03)
    assert _crit(n, 0.025) > stats.t.ppf(0.975, n - 1)
    # the p-value is the same reference's tail (and never below Student's)
    x = np.array([1.0, 2.0, _crit(n, 0.025)])
    p = _sf(x, n)
    assert np.all(p >= stats.t.sf(x, n - 1))
    assert p[2] == pytest.approx(0.025, rel=0.02)


def test_skew_robust_decision_interval_and_mde_are_consistent():
    rule = Rule("m", "a", "b", "greater", margin=0.01)
    rng = np.random.default_rng(4)
    for _ in range(200):
        d = rng.normal(0.05, 0.03, 5)
        v = decide(rule, list(d), [0.0] * 5)
        se = np.std(d, ddof=1) / math.sqrt(5)
        assert v.ci_low == pytest.approx(d.mean() - _crit(5, 0.025) * se)
        assert v.mde == pytest.approx(verdict._mde_factor(5, 0.025, 0.8, "superiority", "exponential")
                                      * np.std(d, ddof=1) / math.sqrt(5))
        # the factor is the noncentrality giving 80% power past the robust critical value
        assert stats.nct.sf(_crit(5, 0.025), 4, v.mde / se) == pytest.approx(0.8, abs=1e-6)
        # supported <=> the interval clears the margin <=> p < 2.5% (up to the simulation's resolution)
        if abs(v.ci_low - 0.01) > 1e-3:
            assert (v.verdict == SUPPORTED) == (v.ci_low > 0.01) == (v.p_value < 0.025)
    assert "skew-robust" in rule.method


def test_skew_robust_switch_restores_student(monkeypatch):
    monkeypatch.setattr(verdict, "ROBUST_SHAPE", None)
    assert _crit(5, 0.025) == pytest.approx(stats.t.ppf(0.975, 4))
    assert "skew-robust" not in Rule("m", "a", "b", "greater").method


def test_skew_robust_seeds_needed_is_the_smallest_count_whose_mde_fits():
    rule = Rule("m", "a", "b", "greater", margin=0.0)
    v = decide(rule, [0.3, 0.1, 0.5, 0.2, 0.4], [0.0] * 5)
    n = v.seeds_needed
    sd, gap = np.std([0.3, 0.1, 0.5, 0.2, 0.4], ddof=1), 0.3

    def mde(k):
        return verdict._mde_factor(k, 0.025, 0.8, "superiority", "exponential") * sd / math.sqrt(k)

    assert n is not None and mde(n) <= gap < mde(n - 1)
