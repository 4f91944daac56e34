"""The verdicts' statistics against independent formulas: the paired t-interval and p-value (scipy.stats and a
hand-written float64 formula), TOST, non-inferiority, the minimum detectable effect (noncentral t power), Holm's
adjustment, zero spread, and the margin declaration."""

import math

import numpy as np
import pytest
from scipy import stats

from normlab.lab import verdict
from normlab.lab.verdict import (
    INCONCLUSIVE,
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Rule,
    _holm_adjust,
    decide,
    holm,
    not_run,
)


@pytest.fixture(autouse=True)
def student_t(monkeypatch):
    """These tests check the Student-t path against independent formulas; the skew-robust critical values (the
    default) are tested in test_verdict_skew.py."""
    monkeypatch.setattr(verdict, "ROBUST_SHAPE", None)


T_975 = {2: 4.302652730, 4: 2.776445105, 9: 2.262157163}  # Student t 97.5% quantiles, printed tables (10 digits)


def _hand_t_interval(d, confidence=0.95):
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    mean = d.sum() / n
    sd = math.sqrt(((d - mean) ** 2).sum() / (n - 1))
    q = T_975[n - 1] if confidence == 0.95 else stats.t.ppf(0.5 + confidence / 2, n - 1)
    return mean, mean - q * sd / math.sqrt(n), mean + q * sd / math.sqrt(n)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_paired_t_interval_and_p_value_match_independent_formulas(n):
    rng = np.random.default_rng(n)
    t, c = rng.normal(1.0, 0.3, n), rng.normal(0.8, 0.3, n)
    rule = Rule("m", "t", "c", "greater", margin=0.05)
    v = decide(rule, list(t), list(c))
    mean, lo, hi = _hand_t_interval(t - c)
    assert (v.effect, v.ci_low, v.ci_high) == pytest.approx((mean, lo, hi), rel=1e-8)
    s_lo, s_hi = stats.t.interval(0.95, n - 1, loc=mean, scale=np.std(t - c, ddof=1) / math.sqrt(n))
    assert (v.ci_low, v.ci_high) == pytest.approx((s_lo, s_hi), rel=1e-12)
    ref = stats.ttest_1samp(t - c, popmean=0.05, alternative="greater").pvalue
    assert v.p_value == pytest.approx(ref, rel=1e-10)
    assert v.method == "paired t" and v.n_seeds == n and v.margin == 0.05 and v.power == 0.8
    # The decision is the interval's: supported <=> the lower end clears the margin <=> p < 2.5%.
    assert (v.verdict == SUPPORTED) == (lo > 0.05) == (ref < 0.025)


def test_direction_less_mirrors_greater():
    t, c = [1.0, 1.2, 0.9, 1.1], [1.5, 1.6, 1.6, 1.4]
    less = decide(Rule("m", "t", "c", "less", margin=0.1), t, c)
    greater = decide(Rule("m", "c", "t", "greater", margin=0.1), c, t)
    assert less.verdict == greater.verdict == SUPPORTED
    assert less.p_value == pytest.approx(greater.p_value) and less.mde == pytest.approx(greater.mde)
    assert (less.ci_low, less.ci_high) == pytest.approx((-greater.ci_high, -greater.ci_low))


def test_equivalence_is_tost_against_two_one_sided_scipy_tests():
    rule = Rule("acc", "gn", "none", "within", margin=0.02, kind="equivalence")
    rng = np.random.default_rng(7)
    d = rng.normal(0.001, 0.004, 8)
    v = decide(rule, list(0.9 + d), [0.9] * 8)
    d = (0.9 + d) - 0.9  # the differences decide() sees, rounding included
    p1 = stats.ttest_1samp(d, -0.02, alternative="greater").pvalue
    p2 = stats.ttest_1samp(d, 0.02, alternative="less").pvalue
    assert v.p_value == pytest.approx(max(p1, p2), rel=1e-10)
    assert v.verdict == SUPPORTED and -0.02 < v.ci_low < v.ci_high < 0.02 and v.method == "paired t TOST"
    # A difference clearly beyond the margin is "not supported"; one straddling it is inconclusive.
    assert decide(rule, [0.95, 0.96, 0.955, 0.97], [0.9] * 4).verdict == NOT_SUPPORTED
    assert decide(rule, [0.92, 0.90, 0.93, 0.89], [0.9] * 4).verdict == INCONCLUSIVE
    assert "Supported if" in rule.describe() and "inside (-0.02, +0.02)" in rule.describe()


def test_noninferiority_allows_a_loss_up_to_the_margin():
    rule = Rule("acc", "folded", "bn", "greater", margin=0.01, kind="noninferiority")
    # ~0.003 worse on every seed: within the 0.01 allowance -> supported; ~0.03 worse -> not supported.
    assert decide(rule, [0.897, 0.8975, 0.8965, 0.897], [0.9] * 4).verdict == SUPPORTED
    assert decide(rule, [0.87, 0.871, 0.869, 0.8705], [0.9] * 4).verdict == NOT_SUPPORTED
    d = np.array([0.897, 0.8975, 0.8965, 0.897]) - 0.9
    ref = stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
    assert decide(rule, list(d), [0.0] * 4).p_value == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_mde_is_the_formula_and_has_about_the_stated_power(n):
    rng = np.random.default_rng(100 + n)
    d = rng.normal(0.0, 2.0, n)
    v = decide(Rule("m", "t", "c", "greater"), list(d), [0.0] * n)
    sd = np.std(d, ddof=1)
    # Exact power of the one-sided t-test at a true effect of one MDE (noncentral t): 80% by construction.
    lam = v.mde / (sd / math.sqrt(n))
    power = stats.nct.sf(stats.t.ppf(0.975, n - 1), n - 1, lam)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert "MDE" in v.what_would_change_it() and str(n) in v.what_would_change_it()
    eq = decide(Rule("m", "t", "c", "within", margin=1.0, kind="equivalence"), list(d), [0.0] * n)
    # equivalence: the near one-sided test at margin - MDE has the stated power
    assert stats.nct.sf(stats.t.ppf(0.975, n - 1), n - 1, eq.mde / (sd / math.sqrt(n))) == pytest.approx(0.8, abs=1e-6)


def test_zero_spread_is_inconclusive_not_a_zero_width_interval():
    # Quantized metric: every seed lands on the same grid step. Also when float rounding leaves ~1e-17 of spread.
    for t, c in (([100, 110, 90], [130, 140, 120]), ([0.95, 0.96, 0.94], [0.90, 0.91, 0.89])):
        v = decide(Rule("steps", "bn", "none", "less", margin=10.0), t, c)
        assert v.verdict == INCONCLUSIVE and "zero spread" in v.reason, v
        assert v.ci_low is None and v.mde is None and v.p_value is None and v.d_z is None
        assert "finer measurement" in v.what_would_change_it()


def test_margin_must_be_declared_for_the_new_kinds_and_zero_is_flagged():
    v = decide(Rule("m", "a", "b", "greater"), [1.0, 1.2, 1.1], [0.0, 0.1, 0.05])
    assert v.warnings and "margin 0" in v.warnings[0] and v.to_dict()["rule"]["margin_declared"] is False
    assert decide(Rule("m", "a", "b", "greater", margin=0.1), [1, 2], [0, 0]).warnings == ()
    with pytest.raises(ValueError, match="equivalence rule needs a declared margin > 0"):
        Rule("m", "a", "b", "within", kind="equivalence")
    with pytest.raises(ValueError, match="noninferiority rule needs a declared margin > 0"):
        Rule("m", "a", "b", "greater", kind="noninferiority")
    with pytest.raises(ValueError, match="'within' goes with kind 'equivalence'"):
        Rule("m", "a", "b", "within", margin=1.0)
    with pytest.raises(ValueError, match="'within' goes with kind 'equivalence'"):
        Rule("m", "a", "b", "greater", margin=1.0, kind="equivalence")
    with pytest.raises(ValueError, match="kind must be one of"):
        Rule("m", "a", "b", "greater", kind="bayes")
    with pytest.raises(ValueError, match="power must lie"):
        Rule("m", "a", "b", "greater", power=1.0)


def test_holm_adjusted_p_values_match_the_hand_computation():
    # p = (0.01, 0.04, 0.03): sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone max: 0.06.
    assert _holm_adjust(np.array([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    assert _holm_adjust(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])
    np.testing.assert_allclose(_holm_adjust(np.array([[0.02], [0.3]])), [[0.02], [0.3]])  # family of one


def _verdict_with_p(rule, n=5, shift=0.0, seed=0):
    d = np.random.default_rng(seed).normal(0, 1, n)
    d = (d - d.mean()) / d.std(ddof=1) + shift  # SD exactly 1
    return decide(rule, list(d), [0.0] * n)


def test_holm_turns_a_lone_pass_into_inconclusive_and_leaves_descriptive_rules_alone():
    prim = Rule("a", "t", "c", "greater")
    conf = Rule("b", "t", "c", "greater", confirmatory=True)
    desc = Rule("c", "t", "c", "greater")
    # Primary alone: p just below 2.5% -> supported; with a null confirmatory secondary Holm needs p < 1.25%.
    shift = stats.t.ppf(1 - 0.02, 4) * 1.0 / math.sqrt(5)  # gives p = 0.02 with SD 1
    p = _verdict_with_p(prim, shift=shift)
    assert p.verdict == SUPPORTED and p.p_value == pytest.approx(0.02)
    s_conf, s_desc = _verdict_with_p(conf, seed=1), _verdict_with_p(desc, shift=shift, seed=2)
    p2, (c2, d2) = holm(p, [s_conf, s_desc])
    assert p2.verdict == INCONCLUSIVE and "Holm" in p2.reason and p2.family_size == 2
    assert p2.p_adjusted == pytest.approx(0.04)
    assert c2.family_size == 2 and d2 is s_desc and d2.verdict == SUPPORTED  # descriptive: unadjusted
    # Idempotent: adjusting again gives the same verdicts; a family of one is unchanged.
    p3, (c3, d3) = holm(p2, [c2, d2])
    assert (p3, c3, d3) == (p2, c2, d2)
    assert holm(p, [s_desc]) == (p, [s_desc])
    # A declared confirmatory rule that could not run still counts in the family (p = 1).
    p4, _ = holm(p, [not_run(conf, "arm missing")])
    assert p4.verdict == INCONCLUSIVE and p4.p_adjusted == pytest.approx(0.04)


def test_not_run_and_serialized_fields():
    v = not_run(Rule("m", "a", "b", "less", margin=0.5, unit=" ms"), "no GPU")
    assert v.verdict == NOT_RUN and v.method == "paired t" and v.margin == 0.5 and v.mde is None
    d = _verdict_with_p(Rule("m", "t", "c", "greater", margin=0.1), shift=2.0).to_dict()
    for key in ("method", "margin", "mde", "n_seeds", "power", "p_value", "p_adjusted", "kind", "alpha",
                "what_would_change_it", "warnings"):
        assert key in d, key
    assert d["n_seeds"] == 5 and d["margin"] == 0.1 and d["mde"] > 0 and d["alpha"] == 0.025


def test_seeds_needed_is_the_smallest_n_whose_mde_reaches_the_observed_effect():
    rule = Rule("m", "t", "c", "greater", margin=0.1)
    d = np.array([0.3, 0.1, 0.5, 0.2])  # mean 0.275: 0.175 beyond the margin, inconclusive at 4 seeds
    v = decide(rule, list(d), [0.0] * 4)
    assert v.verdict == INCONCLUSIVE and v.seeds_needed is not None
    sd = d.std(ddof=1)

    def mde(n):
        return verdict._mde_factor(n, 0.025, 0.8, "superiority", None) * sd / math.sqrt(n)

    assert mde(v.seeds_needed) <= 0.175 < mde(v.seeds_needed - 1)
    assert f"about {v.seeds_needed} seeds" in v.what_would_change_it()
    wrong_side = decide(rule, [0.05, 0.15, -0.1, 0.2], [0.0] * 4)
    assert wrong_side.seeds_needed is None and "not supported" in wrong_side.what_would_change_it()
    assert "lies entirely > 0;" in Rule("m", "t", "c", "greater").describe()


def test_zero_spread_up_to_rounding_is_named_as_such():
    # Differences equal but for the last bits of float rounding: no real spread, no interval.
    d = [0.1 + 0.2, 0.3, 0.3000000000000001]
    assert np.std(d, ddof=1) > 0
    v = decide(Rule("m", "t", "c", "greater"), d, [0.0] * 3)
    assert v.verdict == INCONCLUSIVE and "zero spread" in v.reason and v.ci_low is None
