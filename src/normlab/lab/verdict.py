"""Declared decision rules and the verdicts they produce.

Every claim states its rules *before* any run: which metric, which two arms, what the claim predicts (a
difference in one direction, "no worse than", or "the same within a margin") and the smallest effect worth
reporting (``margin``). After the runs, :func:`decide` turns the per-seed measurements into a verdict with no
human in the loop. The statistics, for ``n`` seeds (the unit of replication: same seed = same data order):

    d_s      = metric(treatment, seed s) - metric(control, seed s)           paired difference of seed s
    effect   = mean_s d_s;   SD = sample standard deviation of the d_s (n - 1 in the denominator);  SE = SD / sqrt(n)
    CI       = effect -/+ c_{1-a, n} * SE           paired t-interval, two-sided level 1 - 2a = 95%, where c is the
                                                    skew-robust critical value of the t statistic (below)
    a        = (1 - confidence) / 2 = 2.5%           the one-sided error level of every decision
    signed   = effect in the predicted direction (+1 for "greater", -1 for "less")

    superiority      supported     if p = P(T_{n-1} >= (signed - margin) / SE) < a   (the CI clears +margin)
                     not supported if the whole signed CI lies at or below margin
    non-inferiority  supported     if the signed CI lies above -margin (at most ``margin`` worse)
                     not supported if the whole signed CI lies at or below -margin
    equivalence      supported     if both one-sided tests of TOST (Schuirmann 1987) reject at level a, i.e. the
                                   95% CI lies inside (-margin, +margin); p = the larger of the two p-values
                     not supported if the whole CI lies outside (-margin, +margin)
    otherwise        inconclusive; also with fewer than 2 seeds, or with zero spread (SD = 0: every seed gave the
                     same difference, so no interval exists -- a quantized metric must be measured more finely)

*Skew-robust critical values.* Student's t_{1-a, n-1} is exact for normal differences and conservative for
symmetric heavy-tailed ones, but not valid for skewed ones: differences shaped like a centred exponential
(skewness 2) against the rule give 11% false "supported" at 5 seeds. So ``c_{1-a, n}`` and every p-value are the
more conservative of Student's and those of the t statistic of ``n`` exponential-shaped differences skewed against
the rule (:data:`ROBUST_SHAPE`, simulated once per n with a fixed seed): at most ~2.5% false "supported" for
every shape up to that skewness, at the price of a wider interval at few seeds (c = 6.44 instead of 2.78 at 5
seeds, 4.13 instead of 2.26 at 10). ``ROBUST_SHAPE = None`` restores Student's t. :func:`calibrate` measures it
by simulation through the same code, shapes beyond the class included. (The percentile bootstrap used before
is [min, max] at 3 seeds: it says "supported" 12% of the time with no effect at all.)

``MDE`` (minimum detectable effect) = nc * SD / sqrt(n), with nc the noncentrality at which the test with the
critical value actually used rejects with probability ``power`` (80%) for normal differences:
``nct.sf(c_{1-a, n}, n - 1, nc) = power`` (noncentral t): how far beyond the margin a true effect must lie to be
supported with that power at this seed count and observed spread (a sum c + t_{power} of Student's quantiles,
used before, gave 69-76% power under the skew-robust c). For equivalence the true difference must lie inside
+-(margin - MDE), the same root for the near one-sided test of TOST. The reference distribution is simulated at
every seed count (fewer simulations above 30 seeds, never below 50,000), so c falls steadily with n.
``d_z`` = effect / SD is the standardized paired effect (Cohen's d for paired samples).

A claim's *confirmatory* rules (its primary rule and the secondary rules declared ``confirmatory=True``) form a
family: :func:`holm` adjusts their p-values (Holm 1979) so that the chance of any false "supported" in the family
stays at ``a``. The other secondary rules are descriptive and decided at level ``a`` each.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["Rule", "Verdict", "bootstrap_mean_ci", "decide", "holm", "not_run", "calibrate", "STATISTICS",
           "SUPPORTED", "NOT_SUPPORTED", "INCONCLUSIVE", "NOT_RUN", "KINDS"]

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not run"
DIRECTIONS = ("greater", "less", "within")
KINDS = ("superiority", "noninferiority", "equivalence")
METHODS = {"superiority": "paired t", "noninferiority": "paired t (non-inferiority)",
           "equivalence": "paired t TOST"}  # with skew-robust critical values (ROBUST_SHAPE) unless it is None

# Every statistic the report prints, defined once (the report shows these where the numbers appear).
STATISTICS = {
    "d_s": "paired difference of seed s: metric(treatment, seed s) - metric(control, seed s); the same seed gives "
           "both arms the same data split, initialization seed and mini-batch order",
    "effect": "mean of the paired differences d_s over seeds, in the metric's units",
    "95% CI": "paired t-interval: effect -/+ c x SD / sqrt(n), with SD the standard deviation of the d_s (n-1 "
              "denominator), n the number of seeds and c the skew-robust critical value: the larger of Student's "
              "t(0.975, n-1) and the 97.5% point of the t statistic of n exponential-shaped (skewed) differences "
              "(6.44 at 5 seeds, 4.14 at 10), so the interval holds for skewed seed-to-seed differences too",
    "p": "one-sided p-value of the rule's t statistic, the larger of Student's and the skewed (exponential-shaped) "
         "reference's (for equivalence the larger of the two TOST p-values); supported needs p below 2.5% after "
         "Holm's adjustment",
    "Holm": "Holm's step-down adjustment of the p-values of a claim's confirmatory rules: with m such rules, the "
            "smallest p is multiplied by m, the next by m-1, ... (kept monotone), so that the chance of any false "
            "'supported' among them stays at 2.5%",
    "margin": "the smallest effect worth reporting, declared with the rule before running (metric units)",
    "MDE": "minimum detectable effect: nc x SD / sqrt(n), with nc the noncentrality at which a noncentral t with "
           "n-1 degrees of freedom exceeds c (the critical value of the 95% CI) with probability 80%: how far beyond "
           "the margin a "
           "true effect must lie to be supported with 80% power at this seed count and spread (in a claim's Holm "
           "family of m confirmatory rules, at the strictest level 2.5%/m; for equivalence the "
           "true difference must lie inside plus/minus (margin - MDE))",
    "d_z": "standardized paired effect (Cohen's d_z): effect / SD of the paired differences; 0.2 small, 0.5 medium, "
           "0.8 large by Cohen's convention",
    "n": "number of seeds with a measurement in both arms",
}


@dataclass(frozen=True)
class Rule:
    """A decision rule declared before running.

    ``metric`` names the per-seed number compared (e.g. ``"final validation accuracy"``), ``treatment`` and
    ``control`` the two arms. ``kind``:

    - ``"superiority"`` (default): the claim predicts ``treatment - control`` ``"greater"`` or ``"less"``
      (``direction``) than ``margin``, in the metric's units and the predicted direction (``margin=0.01`` with
      ``"less"`` means "at least 0.01 lower");
    - ``"noninferiority"``: treatment is at most ``margin`` worse than control, "worse" meaning the opposite of
      ``direction`` (the claim's "no worse");
    - ``"equivalence"`` (``direction="within"``): ``|treatment - control| < margin`` (the claim's "is not
      problematic", "removes the cost"), tested by TOST.

    ``margin`` must be > 0 for non-inferiority and equivalence. For superiority a margin of 0 is still accepted
    (older rules declared none) but every verdict then carries a warning: the smallest effect worth reporting must
    be declared. ``confirmatory=True`` puts a secondary rule into the claim's Holm family with the primary rule.
    ``power`` is the power at which the minimum detectable effect is stated.

    Raises ``ValueError`` naming the field for a direction, kind, margin, confidence or power out of range, or
    the same arm twice.
    """

    metric: str
    treatment: str
    control: str
    direction: str
    margin: float = 0.0
    unit: str = ""
    confidence: float = 0.95
    kind: str = "superiority"
    confirmatory: bool = False
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Rule: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.kind not in KINDS:
            raise ValueError(f"Rule: kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "equivalence") != (self.direction == "within"):
            raise ValueError(f"Rule: direction 'within' goes with kind 'equivalence' and only with it, got direction "
                             f"{self.direction!r} with kind {self.kind!r}")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"Rule: margin must be a finite number >= 0, got {self.margin!r}")
        if self.kind != "superiority" and self.margin <= 0:
            raise ValueError(f"Rule: a {self.kind} rule needs a declared margin > 0, got {self.margin!r}")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"Rule: confidence must lie in (0.5, 1), got {self.confidence!r}")
        if not 0.5 <= self.power < 1.0:
            raise ValueError(f"Rule: power must lie in [0.5, 1), got {self.power!r}")
        if self.treatment == self.control:
            raise ValueError(f"Rule: treatment and control must be different arms, got {self.treatment!r} twice")

    @property
    def alpha(self) -> float:
        """The one-sided error level of the rule's decision: (1 - confidence) / 2."""
        return round((1.0 - self.confidence) / 2.0, 12)  # 0.025, not 0.025000000000000022

    @property
    def method(self) -> str:
        base = METHODS[self.kind]
        return base if ROBUST_SHAPE is None else f"{base}, skew-robust critical value ({ROBUST_SHAPE} reference)"

    @property
    def margin_declared(self) -> bool:
        return self.margin > 0

    def describe(self) -> str:
        """The rule in one sentence, as printed in the report before the results."""
        pct = f"{self.confidence:.0%}"
        diff = f"[{self.metric}: {self.treatment} - {self.control}]"
        ci = f"the {pct} paired t-interval of the paired difference {diff} over seeds"
        m = f"{_fmt(self.margin)}{self.unit}"
        if self.kind == "equivalence":
            return (f"Supported if {ci} lies entirely inside (-{m}, +{m}) (equivalence, TOST at one-sided "
                    f"{self.alpha:.1%} each); not supported if it lies entirely outside; otherwise inconclusive.")
        up = self.direction == "greater"
        if self.kind == "noninferiority":
            bound = f"{'-' if up else '+'}{m}"
            sign = ">" if up else "<"
            return (f"Supported if {ci} lies entirely {sign} {bound} (non-inferiority: at most {m} worse); not "
                    f"supported if it lies entirely on the other side of {bound}; otherwise inconclusive.")
        sign = ">" if up else "<"
        bound = f"{'+' if up else '-'}{m}" if self.margin > 0 else "0"
        return (f"Supported if {ci} lies entirely {sign} {bound}; not supported if it lies entirely on the other "
                f"side of {bound}; otherwise inconclusive.")


@dataclass(frozen=True)
class Verdict:
    """The outcome of a :class:`Rule` applied to per-seed measurements.

    ``method``, ``kind``, ``margin``, ``mde``, ``power``, ``n_seeds`` describe the test; ``p_value`` is the raw
    one-sided p-value, ``p_adjusted`` the Holm-adjusted one (equal to ``p_value`` outside a family),
    ``family_size`` the number of confirmatory rules it was adjusted over (1 outside a family).
    """

    verdict: str
    effect: float | None  # mean paired difference treatment - control (metric units), None when not computable
    ci_low: float | None
    ci_high: float | None
    d_z: float | None  # standardized paired effect, None when undefined (n < 2 or zero spread)
    n_seeds: int
    diffs: tuple[float, ...] = ()
    reason: str = ""
    rule: Rule | None = field(default=None, compare=False)
    method: str = ""
    kind: str = ""
    margin: float | None = None
    sd: float | None = None
    mde: float | None = None
    power: float | None = None
    alpha: float | None = None  # the one-sided level the (adjusted) p-value is compared with
    p_value: float | None = None
    p_adjusted: float | None = None
    family_size: int = 1
    warnings: tuple[str, ...] = ()
    seeds_needed: int | None = None  # seeds at which the observed effect and SD would be decided with ``power``

    def to_dict(self) -> dict:
        out = asdict(self)
        out["diffs"] = list(self.diffs)
        out["warnings"] = list(self.warnings)
        out["rule"] = asdict(self.rule) if self.rule is not None else None
        if self.rule is not None:
            out["rule"]["description"] = self.rule.describe()
            out["rule"]["margin_declared"] = self.rule.margin_declared
        out["what_would_change_it"] = self.what_would_change_it()
        return out

    def summary(self) -> str:
        """``effect [low, high]`` in the metric's units, or the reason no number exists."""
        if self.effect is None:
            return self.reason or "no measurement"
        unit = self.rule.unit if self.rule else ""
        text = f"{_fmt(self.effect, signed=True)}{unit}"
        if self.ci_low is not None and self.ci_high is not None:
            text += f" [{_fmt(self.ci_low, signed=True)}, {_fmt(self.ci_high, signed=True)}]{unit}"
        return text

    def what_would_change_it(self) -> str:
        """One sentence on what would change the verdict, from the minimum detectable effect."""
        if self.verdict == NOT_RUN:
            return "Running both arms would give a verdict."
        unit = self.rule.unit if self.rule else ""
        pw = f"{self.power:.0%}" if self.power else "80%"
        if self.mde is None:
            return ("No interval exists: at least 2 seeds whose differences are not all equal are needed "
                    "(more seeds, or a finer measurement of a quantized metric).")
        mde, m, n = _fmt(self.mde) + unit, _fmt(self.margin or 0.0) + unit, self.n_seeds
        more = (f"; about {self.seeds_needed} seeds would detect the observed effect with {pw} power"
                if self.seeds_needed else "")
        if self.kind == "equivalence":
            if self.mde >= (self.margin or 0.0):
                text = (f"At {n} seeds and this spread equivalence cannot be shown with {pw} power even for a true "
                        f"difference of 0: the margin {m} is not wider than the MDE {mde}")
            else:
                inside = _fmt((self.margin or 0.0) - self.mde)
                text = (f"At {n} seeds and this spread, a true difference inside +-{inside}"
                        f"{unit} (margin {m} minus the MDE {mde}) is shown equivalent with {pw} power")
        else:
            where = "beyond the margin" if self.kind == "superiority" else "above minus the margin"
            text = (f"At {n} seeds and this spread, a true effect must lie at least {mde} (the MDE) {where} {m} in "
                    f"the predicted direction to be supported with {pw} power")
        if self.verdict == SUPPORTED:
            return text + "; fresh seeds moving the interval's near end back across the margin would change it."
        if self.verdict == NOT_SUPPORTED:
            return text + "; the interval already lies on the wrong side of the margin, so only a different true " \
                          "effect would change it."
        if self.seeds_needed:
            return text + more + "."
        return text + "; the observed effect does not clear the margin, so more seeds would more likely make it " \
                      "'not supported'."


def _fmt(x: float, signed: bool = False) -> str:
    if x == 0:
        return "0"
    mag = abs(x)
    if 100 <= mag < 1e7:
        body = f"{x:.0f}"
    elif 1e-3 <= mag < 100:
        body = f"{x:.3g}"
    else:
        body = f"{x:.2e}"
    return ("+" + body) if signed and x > 0 else body


def bootstrap_mean_ci(values: Sequence[float], *, confidence: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap ``confidence`` interval (resampling with replacement).

    No longer used for verdicts (its coverage at a few seeds is far below nominal, see :func:`calibrate`); kept
    as the reference the calibration compares against. Deterministic for a given ``seed``. Needs at least one
    finite value; with one value the interval is that value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_mean_ci: expected at least one value, got none")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"bootstrap_mean_ci: expected finite values, got {v.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_mean_ci: confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- the decision core
# One vectorized implementation, used by decide() (one row) and by calibrate() (many simulated rows), so the
# calibration measures the very function the report's verdicts come from.

_SUP, _NOT, _INC = 0, 1, 2
_CODES = {_SUP: SUPPORTED, _NOT: NOT_SUPPORTED, _INC: INCONCLUSIVE}


def _t():
    from scipy import stats  # scipy is the lab's dependency; imported here so normlab.lab imports stay light

    return stats.t


#: The least favourable shape of the paired differences the decisions guard against (None: Student's t, exact for
#: normal differences only). A paired t-test of a mean is not valid for skewed differences at 3-10 seeds: with the
#: differences of a centred exponential (skewness 2) in the adverse direction it says "supported" 11% of the time
#: at 5 seeds instead of 2.5%, and no test of a mean holds for every shape (Bahadur & Savage 1956). So the
#: critical value and p-value of the t statistic are the more conservative of Student's and those of the t
#: statistic of ``n`` draws of this shape in the adverse direction (simulated once per ``n``, fixed seed): exact
#: for it and conservative for the normal, symmetric heavy-tailed and less skewed shapes (see :func:`calibrate`).
ROBUST_SHAPE: str | None = "exponential"
_REF_SIMS = 200_000  # simulated t statistics per seed count up to _REF_FULL_N (resolution 5e-6)
# Above _REF_FULL_N seeds (the "seeds needed" hint goes up to 1000) fewer simulations keep the cost of one seed
# count near 20M draws (~0.5 s) while leaving >= 50_000 of them: >= 250 in the tail at the strictest Holm level
# used (2.5% / 10), enough for the quantile. Simulated at every n: an asymptotic (Edgeworth) formula used before
# above 30 seeds was not conservative (c fell from 2.85 at 30 seeds to 2.40 at 31; 4.3% false "supported").
_REF_FULL_N = 30
_REF_DRAWS = 20_000_000
_REF_MIN_SIMS = 50_000
_REF_SEED = 20221201


def _ref_sims(n: int) -> int:
    return _REF_SIMS if n <= _REF_FULL_N else max(_REF_MIN_SIMS, min(_REF_SIMS, _REF_DRAWS // n))


@lru_cache(maxsize=64)
def _reference_t(n: int, shape: str) -> np.ndarray:
    """Sorted t statistics (H0 true) of ``n`` draws of ``shape`` centred and mirrored to negative skew (the one that
    inflates the upper tail, i.e. false "supported" of a "greater" rule)."""
    if shape != "exponential":
        raise ValueError(f"verdict: ROBUST_SHAPE must be 'exponential' or None, got {shape!r}")
    rng = np.random.default_rng(_REF_SEED + n)
    sims = _ref_sims(n)
    out = np.empty(sims)
    chunk = max(1, 4_000_000 // n)
    for i in range(0, sims, chunk):
        k = min(chunk, sims - i)
        d = 1.0 - rng.exponential(size=(k, n))  # mean 0, skewness -2
        out[i:i + k] = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    out.sort()
    return out


def _sf(x: np.ndarray, n: int) -> np.ndarray:
    """P(T >= x) for the t statistic of ``n`` paired differences: the larger of Student's and the least favourable
    shape's (:data:`ROBUST_SHAPE`, simulated at every ``n``)."""
    x = np.asarray(x, dtype=np.float64)
    p = _t().sf(x, n - 1)
    if ROBUST_SHAPE is None:
        return p
    ref = _reference_t(n, ROBUST_SHAPE)
    count = ref.size - np.searchsorted(ref, np.nan_to_num(x, nan=np.inf), side="left")
    q = (count + 1.0) / (ref.size + 1.0)  # never 0: the simulation's resolution
    return np.where(np.isnan(x), np.nan, np.minimum(1.0, np.maximum(p, q)))


def _crit(n: int, a: float) -> float:
    """The critical value c with P(T >= c) = a under :func:`_sf` (Student's quantile when ROBUST_SHAPE is None)."""
    return _crit_for(n, a, ROBUST_SHAPE)


@lru_cache(maxsize=4096)
def _crit_for(n: int, a: float, shape: str | None) -> float:
    c = float(_t().ppf(1.0 - a, n - 1))
    if shape is None:
        return c
    return max(c, float(np.quantile(_reference_t(n, shape), 1.0 - a)))


def _analyse(rule: Rule, d: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of every row of ``d`` (shape (k, n), one row = one set of paired differences)."""
    k, n = d.shape
    mean = d.mean(axis=1) if n else np.full(k, np.nan)
    sd = d.std(axis=1, ddof=1) if n >= 2 else np.zeros(k)
    # Zero spread up to rounding: differences of floats that are "equal" differ in the last bits.
    defined = (sd > 1e-9 * np.abs(d).max(axis=1)) if n >= 2 else np.zeros(k, dtype=bool)
    out = {"mean": mean, "sd": sd, "defined": defined}
    nan = np.full(k, np.nan)
    if n < 2:
        return {**out, "lo": nan, "hi": nan, "p": np.ones(k), "refuted": np.zeros(k, dtype=bool)}
    a = rule.alpha
    se = np.where(defined, sd, np.nan) / math.sqrt(n)
    tq = _crit(n, a)
    lo, hi = mean - tq * se, mean + tq * se
    m = float(rule.margin)
    if rule.kind == "equivalence":
        # each one-sided test against its own adverse skew: the upper one mirrors the lower one
        p = np.maximum(_sf((mean + m) / se, n), _sf(-(mean - m) / se, n))
        refuted = (lo >= m) | (hi <= -m)
    else:
        sign = 1.0 if rule.direction == "greater" else -1.0
        bound = m if rule.kind == "superiority" else -m
        p = _sf((sign * mean - bound) / se, n)
        refuted = sign * mean + tq * se <= bound
    p = np.where(defined, p, 1.0)
    return {**out, "lo": lo, "hi": hi, "p": p, "refuted": refuted & defined}


def _classify(p_adj: np.ndarray, refuted: np.ndarray, defined: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(defined & (p_adj < alpha), _SUP, np.where(refuted, _NOT, _INC))


def _holm_adjust(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p-values along the last axis (shape (..., m)): max over j <= i of min(1, (m - j) p_(j))."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


@lru_cache(maxsize=4096)
def _mde_factor(n: int, alpha: float, power: float, kind: str, shape: str | None) -> float:
    """MDE / (SD / sqrt(n)): the noncentrality ``nc`` at which the test with the critical value actually used
    (:func:`_crit_for`) rejects with probability ``power`` for normal differences, i.e. the root of
    ``nct.sf(c, n - 1, nc) = power``. For equivalence (TOST) the same root for the near one-sided test at a true
    difference of margin - MDE (the far test, margin + (margin - MDE) away, is neglected: its miss is below
    1 - power only when margin >= MDE, which is also when the statement is made)."""
    from scipy import optimize, stats

    c = _crit_for(n, alpha, shape)

    def miss(nc: float) -> float:
        return float(stats.nct.sf(c, n - 1, nc)) - power

    hi = c + 10.0
    while miss(hi) < 0:
        hi *= 2.0
    return float(optimize.brentq(miss, 0.0, hi, xtol=1e-10))


def _mde(rule: Rule, sd: float, n: int, alpha: float) -> float | None:
    if n < 2 or not sd > 0:
        return None
    return _mde_factor(n, alpha, rule.power, rule.kind, ROBUST_SHAPE) * sd / math.sqrt(n)


def _seeds_needed(rule: Rule, mean: float, sd: float, alpha: float, limit: int = 1000) -> int | None:
    """Smallest seed count whose MDE (at this SD) is within the observed effect's distance from the boundary;
    None when the observed effect is on the wrong side of it (no number of seeds would support it) or > limit."""
    if rule.kind == "equivalence":
        gap = rule.margin - abs(mean)
    else:
        sign = 1.0 if rule.direction == "greater" else -1.0
        gap = sign * mean - (rule.margin if rule.kind == "superiority" else -rule.margin)
    if not (gap > 0 and sd > 0):
        return None

    def mde(n: int) -> float:
        return _mde_factor(n, alpha, rule.power, rule.kind, ROBUST_SHAPE) * sd / math.sqrt(n)

    # the MDE falls with n: double up to the first n with mde(n) <= gap (large seed counts, whose reference
    # distributions cost the most to simulate, only when needed), then bisect below it
    lo, hi = 2, 2
    while mde(hi) > gap:
        if hi >= limit:
            return None
        lo, hi = hi + 1, min(2 * hi, limit)
    while lo < hi:
        mid = (lo + hi) // 2
        if mde(mid) <= gap:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _reason(code: int, rule: Rule, n: int, spread: bool, p: float, p_adj: float, family: int) -> str:
    if n == 0:
        return "no seed has both arms"
    if n < 2:
        return "one seed: no interval, no verdict"
    if not spread:
        return ("zero spread: every seed gave the same difference, so no interval exists (a quantized metric must be "
                "measured finely enough that seeds can differ)")
    eq = rule.kind == "equivalence"
    if code == _SUP:
        return "interval entirely inside the equivalence margin" if eq else \
            "interval entirely in the predicted direction beyond the margin"
    if code == _NOT:
        return "interval entirely outside the equivalence margin" if eq else \
            "interval entirely short of the predicted effect"
    if p < rule.alpha <= p_adj:
        return (f"the interval clears the margin (p = {p:.2g}) but not after Holm's adjustment over {family} "
                f"confirmatory rules (adjusted p = {p_adj:.2g})")
    return "interval straddles the equivalence margin" if eq else "interval straddles the margin"


def _warnings(rule: Rule) -> tuple[str, ...]:
    if rule.margin_declared:
        return ()
    return ("margin 0: the rule declares no smallest effect worth reporting; any non-zero effect counts",)


def _verdict(rule: Rule, diffs: tuple[float, ...], p_adj: float | None = None, family: int = 1) -> Verdict:
    n = len(diffs)
    base: dict[str, Any] = dict(rule=rule, method=rule.method, kind=rule.kind, margin=float(rule.margin),
                                power=rule.power, warnings=_warnings(rule), family_size=family)
    if n == 0:
        return Verdict(INCONCLUSIVE, None, None, None, None, 0, (), _reason(_INC, rule, 0, False, 1, 1, family),
                       p_value=None, p_adjusted=None, alpha=rule.alpha, **base)
    s = _analyse(rule, np.asarray(diffs, dtype=np.float64)[None, :])
    mean, sd, defined = float(s["mean"][0]), float(s["sd"][0]), bool(s["defined"][0])
    p = float(s["p"][0])
    p_adj = p if p_adj is None else float(p_adj)
    code = int(_classify(np.array([p_adj]), s["refuted"], s["defined"], rule.alpha)[0])
    d_z = mean / sd if defined else None
    lo, hi = (float(s["lo"][0]), float(s["hi"][0])) if defined else (None, None)
    return Verdict(_CODES[code], mean, lo, hi, d_z, n, tuple(diffs),
                   _reason(code, rule, n, defined, p, p_adj, family), sd=sd if n >= 2 else None,
                   mde=_mde(rule, sd if defined else 0.0, n, rule.alpha / family), alpha=rule.alpha,
                   seeds_needed=_seeds_needed(rule, mean, sd, rule.alpha / family) if defined else None,
                   p_value=p if defined else None,
                   p_adjusted=p_adj if defined else None, **base)


def decide(rule: Rule, treatment: Mapping[int, float] | Sequence[float],
           control: Mapping[int, float] | Sequence[float]) -> Verdict:
    """Apply ``rule`` to per-seed values of the two arms (a family of one; see :func:`holm` for families).

    ``treatment`` and ``control`` are either ``{seed: value}`` mappings (paired on the seeds both contain) or
    equal-length sequences (paired by position). Non-finite values (a diverged run with no metric) must be turned
    into a number by the claim *before* this call (e.g. accuracy of a diverged run = chance), because what a
    divergence means depends on the metric; here they are rejected (``ValueError`` naming the metric).
    """
    if isinstance(treatment, Mapping) != isinstance(control, Mapping):
        raise TypeError("decide: pass both arms as {seed: value} mappings or both as sequences")
    if isinstance(treatment, Mapping):
        seeds = sorted(set(treatment) & set(control))
        t = [float(treatment[s]) for s in seeds]
        c = [float(control[s]) for s in seeds]
    else:
        if len(treatment) != len(control):
            raise ValueError(f"decide: arms must have one value per seed each, got {len(treatment)} and {len(control)}")
        t, c = [float(x) for x in treatment], [float(x) for x in control]
    bad = [x for x in t + c if not math.isfinite(x)]
    if bad:
        raise ValueError(f"decide: {rule.metric!r} has non-finite values {bad}; map diverged runs to a number first")
    return _verdict(rule, tuple(a - b for a, b in zip(t, c)))


def holm(primary: Verdict, secondary: Sequence[Verdict] = ()) -> tuple[Verdict, list[Verdict]]:
    """The verdicts of one claim with Holm's adjustment over its confirmatory family.

    The family is the primary verdict plus every secondary verdict whose rule has ``confirmatory=True``. Each
    member is re-decided from its own paired differences with its Holm-adjusted p-value (a member without a
    p-value -- not run, one seed, zero spread -- counts in the family with p = 1, since it was declared). Other
    verdicts are returned unchanged. Idempotent: it always starts from the raw p-values.
    """
    members = [0] + [i + 1 for i, v in enumerate(secondary) if v.rule is not None and v.rule.confirmatory]
    allv = [primary, *secondary]
    m = len(members)
    if m == 1:
        return primary, list(secondary)
    raw = np.array([1.0 if allv[i].p_value is None else allv[i].p_value for i in members])
    adj = _holm_adjust(raw)
    for j, i in enumerate(members):
        v = allv[i]
        if v.verdict == NOT_RUN or v.rule is None:
            allv[i] = dataclasses.replace(v, family_size=m)
        else:
            allv[i] = _verdict(v.rule, v.diffs, p_adj=float(adj[j]) if v.p_value is not None else None, family=m)
    return allv[0], allv[1:]


def not_run(rule: Rule | None, reason: str) -> Verdict:
    """The verdict of an experiment that could not run (a missing dependency, ...), with the reason shown."""
    if rule is None:
        return Verdict(NOT_RUN, None, None, None, None, 0, (), reason, None)
    return Verdict(NOT_RUN, None, None, None, None, 0, (), reason, rule, method=rule.method, kind=rule.kind,
                   margin=float(rule.margin), power=rule.power, alpha=rule.alpha, warnings=_warnings(rule))


# ---------------------------------------------------------------------------------------------------- calibration

_LN_SIGMA = 0.5


def _lognormal(rng, size, sigma=_LN_SIGMA):
    mean, sd = math.exp(sigma ** 2 / 2), math.sqrt((math.exp(sigma ** 2) - 1) * math.exp(sigma ** 2))
    return (rng.lognormal(0.0, sigma, size) - mean) / sd


#: Null distributions of the paired differences the calibration simulates (mean 0, unit variance). Two
#: exchangeable arms give symmetric differences (normal; heavy-tailed Student t with 3 df; exponential -
#: exponential); arms that differ in shape give skewed ones, in either direction ("-": long left tail, the adverse
#: one for a "greater" rule; "+": long right tail): a centred exponential (skewness 2) and a centred lognormal
#: (sigma 0.5, skewness 1.75).
NULLS = {
    "normal": lambda rng, size: rng.standard_normal(size),
    "student-t3": lambda rng, size: rng.standard_t(3, size) / math.sqrt(3.0),
    "exp-exp": lambda rng, size: (rng.exponential(size=size) - rng.exponential(size=size)) / math.sqrt(2.0),
    "exponential-": lambda rng, size: 1.0 - rng.exponential(size=size),
    "exponential+": lambda rng, size: rng.exponential(size=size) - 1.0,
    "lognormal-": lambda rng, size: -_lognormal(rng, size),
    "lognormal+": lambda rng, size: _lognormal(rng, size),
}
#: Shapes beyond the class the method is built for (more skewed than the exponential), measured and reported
#: separately in ``calibrate(...)["beyond_class"]``: no test of a mean at a few seeds holds for every shape.
STRESS_NULLS = {
    "lognormal(sigma 1)-": lambda rng, size: -_lognormal(rng, size, 1.0),
}


def _bootstrap_rows(d: np.ndarray, confidence: float, n_boot: int, rng: np.random.Generator) -> tuple:
    """Percentile-bootstrap interval of the mean of every row (the old method, for comparison only)."""
    k, n = d.shape
    lo, hi = np.empty(k), np.empty(k)
    q = (1.0 - confidence) / 2.0
    chunk = max(1, 2_000_000 // (n_boot * n))
    for s in range(0, k, chunk):
        block = d[s:s + chunk]
        idx = rng.integers(0, n, size=(block.shape[0], n_boot, n))
        means = block[np.arange(block.shape[0])[:, None, None], idx].mean(axis=2)
        lo[s:s + chunk], hi[s:s + chunk] = np.quantile(means, [q, 1.0 - q], axis=1)
    return lo, hi


def _simulate(rule: Rule, n: int, null: str, n_sim: int, rng: np.random.Generator, method: str,
              n_boot: int) -> dict[str, Any]:
    """False-supported rate and interval coverage of ``rule`` at ``n`` seeds, true effect on the boundary."""
    if rule.kind == "equivalence":
        true = float(rule.margin)  # the boundary of "equivalent"; (by symmetry the same at -margin)
    else:
        sign = 1.0 if rule.direction == "greater" else -1.0
        true = sign * (rule.margin if rule.kind == "superiority" else -rule.margin)
    d = true + {**NULLS, **STRESS_NULLS}[null](rng, (n_sim, n))
    if method == "paired t":
        s = _analyse(rule, d)
        codes = _classify(s["p"], s["refuted"], s["defined"], rule.alpha)
        lo, hi = s["lo"], s["hi"]
    elif method == "percentile bootstrap":
        lo, hi = _bootstrap_rows(d, rule.confidence, n_boot, rng)
        sign = 1.0 if rule.direction == "greater" else -1.0
        s_lo = np.minimum(sign * lo, sign * hi)
        codes = np.where(s_lo > rule.margin, _SUP, _INC)  # the old rule: whole interval beyond the margin
    else:
        raise ValueError(f"calibrate: method must be 'paired t' or 'percentile bootstrap', got {method!r}")
    ok = np.isfinite(lo) & np.isfinite(hi)
    coverage = float(np.mean((lo <= true) & (true <= hi))) if n >= 2 else None
    return {"n_seeds": n, "kind": rule.kind, "null": null, "true_effect": true, "margin": float(rule.margin),
            "false_supported_rate": float(np.mean(codes == _SUP)), "coverage": coverage,
            "intervals_defined": float(np.mean(ok))}


def _holm_family(n: int, m: int, n_sim: int, rng: np.random.Generator) -> float:
    """Chance of at least one false 'supported' among ``m`` independent null superiority rules with Holm."""
    rule = Rule("x", "a", "b", "greater", margin=1.0)
    d = rule.margin + rng.standard_normal((n_sim * m, n))
    s = _analyse(rule, d)
    p = s["p"].reshape(n_sim, m)
    codes = _classify(_holm_adjust(p).ravel(), s["refuted"], s["defined"], rule.alpha).reshape(n_sim, m)
    return float(np.mean((codes == _SUP).any(axis=1)))


def calibrate(seed_counts: Sequence[int], *, n_sim: int = 20_000, seed: int = 0, method: str = "paired t",
              nulls: Sequence[str] = tuple(NULLS), kinds: Sequence[str] = KINDS, family_size: int = 1,
              confidence: float = 0.95, n_boot: int = 1000, stress: bool = True) -> dict[str, Any]:
    """Measure the decision method on simulated null effects at the given seed counts.

    For every seed count, kind of rule (superiority with a margin, non-inferiority, equivalence) and null
    distribution in :data:`NULLS` (symmetric, heavy-tailed and skewed in both directions), ``n_sim`` sets of paired
    differences are drawn with the true effect exactly on the rule's boundary (superiority: at the margin;
    non-inferiority: at -margin; equivalence: at +margin), the most favourable place for a false "supported", and
    passed through the same decision code as :func:`decide`. Returns ``{false_supported_rate, coverage, n_seeds,
    n_sim, method, conditions, by_null, worst, ...}``: the *largest* false "supported" rate and the *smallest*
    coverage of the (two-sided, ``confidence``) interval over the conditions, the worst rate per null shape, the
    worst condition, and every condition. ``beyond_class`` (with ``stress``) gives the same for the
    :data:`STRESS_NULLS` (superiority rules), which are not in the maximum. With ``family_size > 1`` it also
    measures the family-wise rate of Holm's adjustment over that many independent null rules (normal).
    Deterministic for a given ``seed``; vectorized. ``method="percentile bootstrap"`` measures the old method
    (superiority only). Raises ValueError for empty or non-positive seed counts, ``n_sim`` < 100, an unknown null
    or method.
    """
    counts = sorted({int(n) for n in seed_counts})
    if not counts or counts[0] < 1:
        raise ValueError(f"calibrate: seed_counts must be positive integers, got {list(seed_counts)}")
    if not isinstance(n_sim, int) or n_sim < 100:
        raise ValueError(f"calibrate: n_sim must be an int >= 100, got {n_sim!r}")
    unknown = [x for x in nulls if x not in NULLS and x not in STRESS_NULLS]
    if unknown:
        raise ValueError(f"calibrate: unknown null distribution(s) {unknown}; valid: {sorted(NULLS)}")
    if method not in ("paired t", "percentile bootstrap"):
        raise ValueError(f"calibrate: method must be 'paired t' or 'percentile bootstrap', got {method!r}")
    rng = np.random.default_rng(seed)
    rules = {"superiority": Rule("x", "a", "b", "greater", margin=0.5, confidence=confidence),
             "noninferiority": Rule("x", "a", "b", "greater", margin=0.5, confidence=confidence,
                                    kind="noninferiority"),
             # a wide margin (3 SD) is the worst case of TOST: the far one-sided test always rejects
             "equivalence": Rule("x", "a", "b", "within", margin=3.0, confidence=confidence, kind="equivalence")}
    if method == "percentile bootstrap":
        kinds = ("superiority",)
    conditions = [_simulate(rules[k], n, null, n_sim, rng, method, n_boot)
                  for n in counts for k in kinds for null in nulls]
    covs = [c["coverage"] for c in conditions if c["coverage"] is not None]
    worst = max(conditions, key=lambda c: c["false_supported_rate"])
    name = method if method != "paired t" else _method_name()
    out: dict[str, Any] = {
        "false_supported_rate": worst["false_supported_rate"],
        "coverage": min(covs) if covs else None,
        "nominal_false_supported_rate": round((1.0 - confidence) / 2.0, 12), "nominal_coverage": confidence,
        "bar": 0.05, "n_seeds": counts, "n_sim": n_sim, "method": method, "method_detail": name, "seed": seed,
        "robust_to": ROBUST_SHAPE if method == "paired t" else None,
        "nulls": list(nulls), "kinds": list(kinds), "conditions": conditions,
        "by_null": {x: max(c["false_supported_rate"] for c in conditions if c["null"] == x) for x in nulls},
        "worst": {k: worst[k] for k in ("null", "kind", "n_seeds", "false_supported_rate")},
    }
    if stress and method == "paired t":
        stressed = [_simulate(rules["superiority"], n, x, n_sim, rng, method, n_boot)
                    for n in counts for x in STRESS_NULLS]
        out["beyond_class"] = {
            "conditions": stressed,
            "false_supported_rate": max(c["false_supported_rate"] for c in stressed),
            "note": ("shapes more skewed than the exponential the method guards against; not in the maximum above: "
                     "no test of a mean at a few seeds is valid for every shape (Bahadur & Savage 1956)"),
        }
    if family_size > 1 and method == "paired t":
        fam = {n: _holm_family(n, family_size, n_sim, rng) for n in counts if n >= 2}
        out["holm_family"] = {"family_size": family_size, "familywise_false_supported_rate": fam}
    out["passes"] = out["false_supported_rate"] <= out["bar"]
    return out


def _method_name() -> str:
    if ROBUST_SHAPE is None:
        return "paired t (Student)"
    return (f"paired t statistic with skew-robust critical values (the more conservative of Student's t and the t "
            f"statistic's distribution for {ROBUST_SHAPE}-shaped differences skewed against the rule)")
