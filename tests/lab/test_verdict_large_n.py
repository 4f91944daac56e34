"""Kind: the skew-robust critical value must keep guarding at every seed count (no asymptotic switch above some n
that is not conservative), and the MDE must have its stated power under the critical value actually used."""

import math

import numpy as np
import pytest
from scipy import stats

from normlab.lab import verdict
from normlab.lab.verdict import Rule, _crit, _seeds_needed, calibrate, decide


def test_large_n_critical_value_is_non_increasing_across_the_old_switch():
    crit = [_crit(n, 0.025) for n in range(25, 41)]
    # non-increasing within simulation noise (a 97.5% quantile of 200k draws: a few 0.01 at most)
    for a, b in zip(crit, crit[1:]):
        assert b <= a + 0.02
    assert crit[6] > 2.7  # n = 31: no drop to the Edgeworth formula's 2.40
    assert all(c >= stats.t.ppf(0.975, n - 1) for n, c in zip(range(25, 41), crit))


def test_large_n_calibration_holds_above_30_seeds():
    out = calibrate([31], n_sim=20_000, nulls=("exponential-", "normal"), kinds=("superiority",), stress=False)
    assert out["by_null"]["exponential-"] <= 0.03
    assert out["by_null"]["normal"] <= 0.03


def test_large_n_seeds_needed_has_no_jump_at_the_old_switch():
    rule = Rule("m", "t", "c", "greater", margin=0.0)
    # the seeds needed fall steadily as the observed effect grows: none is skipped around 30
    needed = [_seeds_needed(rule, g, 1.0, 0.025) for g in np.linspace(0.45, 0.75, 31)]
    assert all(x is not None for x in needed)
    assert all(b <= a for a, b in zip(needed, needed[1:]))
    assert all(a - b <= 3 for a, b in zip(needed, needed[1:]))


def _power(rule: Rule, n: int, true: float, sims: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    d = true + rng.standard_normal((sims, n))
    s = verdict._analyse(rule, d)
    codes = verdict._classify(s["p"], s["refuted"], s["defined"], rule.alpha)
    return float(np.mean(codes == verdict._SUP))


@pytest.mark.parametrize("n", [5, 10])
@pytest.mark.parametrize("kind", ["superiority", "noninferiority"])
def test_mde_power_is_the_stated_power_under_the_robust_critical_value(n, kind):
    rule = Rule("m", "t", "c", "greater", margin=0.5, kind=kind)
    d = np.random.default_rng(n).standard_normal(n)
    v = decide(rule, list(d), [0.0] * n)
    sd = float(np.std(d, ddof=1))
    factor = v.mde / (sd / math.sqrt(n))  # the MDE in units of the standard error
    boundary = rule.margin if kind == "superiority" else -rule.margin
    # unit-SD normal differences at the boundary + MDE (for SD 1): supported 80% of the time
    power = _power(rule, n, boundary + factor / math.sqrt(n), 40_000, 7 + n)
    assert power == pytest.approx(0.8, abs=0.02)


@pytest.mark.parametrize("n", [5, 10])
def test_mde_power_of_equivalence_at_margin_minus_mde(n):
    rule = Rule("m", "t", "c", "within", margin=50.0, kind="equivalence")
    d = np.random.default_rng(n).standard_normal(n)
    v = decide(rule, list(d), [0.0] * n)
    factor = v.mde / (float(np.std(d, ddof=1)) / math.sqrt(n))
    power = _power(rule, n, rule.margin - factor / math.sqrt(n), 40_000, 11 + n)
    assert power == pytest.approx(0.8, abs=0.02)
