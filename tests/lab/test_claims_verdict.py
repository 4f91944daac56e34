"""The verdict rule on synthetic numbers whose answer is known."""

import math

import numpy as np
import pytest
from scipy import stats

from normlab.lab.verdict import (
    INCONCLUSIVE,
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Rule,
    _crit,
    bootstrap_mean_ci,
    decide,
    not_run,
)

GREATER = Rule(metric="accuracy", treatment="bn", control="none", direction="greater")
LESS = Rule(metric="steps", treatment="bn", control="none", direction="less", margin=10.0)


def test_bootstrap_interval_matches_normal_theory_for_many_values():
    # For n=400 draws of N(0, 1) the 95% interval of the mean has half-width ~1.96/sqrt(400) = 0.098.
    v = np.random.default_rng(1).normal(size=400)
    mean, lo, hi = bootstrap_mean_ci(v, n_boot=4000)
    assert mean == pytest.approx(v.mean())
    assert lo < mean < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 * v.std(ddof=1) / math.sqrt(400), rel=0.1)


def test_bootstrap_with_three_values_reaches_min_and_max():
    # P(resample = all-min) = 1/27 > 2.5%, so the percentile interval's ends are exactly min and max.
    mean, lo, hi = bootstrap_mean_ci([1.0, 2.0, 6.0])
    assert (mean, lo, hi) == (3.0, 1.0, 6.0)


def test_bootstrap_is_deterministic_and_rejects_bad_input():
    assert bootstrap_mean_ci([0.3, 0.1, 0.5, 0.9]) == bootstrap_mean_ci([0.3, 0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci([1.0, float("nan")])


def test_clear_improvement_is_supported():
    # The interval is the paired t-interval with the skew-robust critical value (it was the percentile bootstrap's
    # [min, max] at 3 seeds): it contains scipy.stats.t.interval of the differences (Student's, narrower).
    v = decide(GREATER, {0: 0.95, 1: 0.96, 2: 0.94, 3: 0.952, 4: 0.948}, {0: 0.90, 1: 0.905, 2: 0.895, 3: 0.9, 4: 0.9})
    d = np.array([0.05, 0.055, 0.045, 0.052, 0.048])
    se = d.std(ddof=1) / math.sqrt(5)
    lo, hi = stats.t.interval(0.95, 4, loc=d.mean(), scale=se)
    assert v.verdict == SUPPORTED
    assert v.effect == pytest.approx(0.05)
    assert v.ci_low < lo and v.ci_high > hi
    assert v.ci_low == pytest.approx(d.mean() - _crit(5, 0.025) * se)
    assert v.n_seeds == 5 and v.d_z == pytest.approx(d.mean() / d.std(ddof=1))
    # Three seeds that agree in sign but spread widely are no longer enough (the bootstrap said supported here).
    assert decide(GREATER, {0: 0.95, 1: 0.96, 2: 0.94}, {0: 0.90, 1: 0.91, 2: 0.92}).verdict == INCONCLUSIVE


def test_opposite_effect_is_not_supported():
    v = decide(GREATER, [0.90, 0.91, 0.89, 0.90, 0.905], [0.95, 0.96, 0.97, 0.955, 0.96])
    assert v.verdict == NOT_SUPPORTED and v.effect < 0


def test_mixed_signs_are_inconclusive():
    v = decide(GREATER, [0.95, 0.90, 0.93], [0.90, 0.95, 0.92])
    assert v.verdict == INCONCLUSIVE and v.ci_low < 0 < v.ci_high


def test_margin_and_direction_less():
    # bn needs ~30 fewer steps on every seed: beyond the 10-step margin.
    assert decide(LESS, [100, 110, 90, 95, 105], [131, 138, 122, 126, 134]).verdict == SUPPORTED
    # ~5 fewer steps on every seed: a real but smaller effect than the declared margin -> not supported.
    assert decide(LESS, [100, 110, 90, 95, 105], [104, 116, 95, 100, 110]).verdict == NOT_SUPPORTED
    # between 2 and 30 fewer: the interval straddles the margin.
    assert decide(LESS, [100, 110, 90], [102, 140, 105]).verdict == INCONCLUSIVE


def test_pairs_on_common_seeds_only_and_one_seed_is_inconclusive():
    v = decide(GREATER, {0: 1.0, 1: 2.0, 7: 5.0}, {1: 0.5, 7: 4.0, 9: 0.0})
    assert v.n_seeds == 2 and v.diffs == (1.5, 1.0)
    one = decide(GREATER, [1.0], [0.0])
    assert one.verdict == INCONCLUSIVE and one.effect == 1.0 and one.ci_low is None and "one seed" in one.reason
    assert decide(GREATER, {0: 1.0}, {1: 0.0}).verdict == INCONCLUSIVE


def test_large_sample_from_known_distributions():
    # Normal(0.02, 0.01) paired differences, 30 seeds: supported; Normal(0, 0.01): not beyond a 0.01 margin.
    rng = np.random.default_rng(3)
    base = rng.normal(0.9, 0.02, size=30)
    assert decide(GREATER, list(base + rng.normal(0.02, 0.01, 30)), list(base)).verdict == SUPPORTED
    r = Rule(metric="a", treatment="x", control="y", direction="greater", margin=0.01)
    assert decide(r, list(base + rng.normal(0.0, 0.01, 30)), list(base)).verdict == NOT_SUPPORTED


def test_bad_input_is_rejected_with_names():
    with pytest.raises(ValueError, match="direction must be one of"):
        Rule(metric="a", treatment="x", control="y", direction="up")
    with pytest.raises(ValueError, match="margin must be"):
        Rule(metric="a", treatment="x", control="y", direction="less", margin=-1)
    with pytest.raises(ValueError, match="different arms"):
        Rule(metric="a", treatment="x", control="x", direction="less")
    with pytest.raises(ValueError, match="one value per seed"):
        decide(GREATER, [1.0, 2.0], [1.0])
    with pytest.raises(TypeError, match="both as"):
        decide(GREATER, {0: 1.0}, [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        decide(GREATER, [1.0, float("inf")], [1.0, 2.0])


def test_serialization_and_text():
    v = decide(GREATER, [0.95, 0.96, 0.94], [0.90, 0.905, 0.895])
    d = v.to_dict()
    assert d["verdict"] == SUPPORTED and d["rule"]["metric"] == "accuracy" and "paired t" in d["rule"]["description"]
    assert v.summary().startswith("+0.05 [")
    n = not_run(GREATER, "the family layers are missing")
    assert n.verdict == NOT_RUN and n.summary() == "the family layers are missing"
