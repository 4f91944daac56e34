"""Declared decision rules and the verdicts they produce.

Every claim states its rule *before* any run: which metric, which two arms, the direction the claim predicts and
the smallest effect that would count (``margin``). After the runs, :func:`decide` turns the per-seed measurements
into a verdict with no human in the loop:

    d_s      = metric(treatment, seed s) - metric(control, seed s)        (paired: same seed, same data order)
    effect   = mean_s d_s,   CI = percentile bootstrap 95% interval of the mean of d (resampling seeds)
    signed   = effect and CI multiplied by +1 if the claim predicts "greater", -1 if it predicts "less"

    supported       if the whole signed CI lies above ``margin``        (the predicted effect, clearly)
    not supported   if the whole signed CI lies at or below ``margin``   (no effect of that size, or the opposite)
    inconclusive    otherwise (the interval straddles the margin), or fewer than 2 seeds, or missing arms

The bootstrap (Efron & Tibshirani 1993) resamples the *seeds*, the unit of replication here; with 3 seeds the 95%
interval of the mean reaches the smallest and largest difference, so "supported" then means every seed agrees.
The bootstrap generator is seeded, so the same numbers always give the same verdict. The standardized effect
``d_z = mean(d) / sd(d)`` (Cohen's d for paired samples) is reported alongside when it is defined.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Rule", "Verdict", "bootstrap_mean_ci", "decide", "not_run", "SUPPORTED", "NOT_SUPPORTED", "INCONCLUSIVE", "NOT_RUN"]

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not run"
DIRECTIONS = ("greater", "less")


@dataclass(frozen=True)
class Rule:
    """A decision rule declared before running.

    ``metric`` names the per-seed number compared (e.g. ``"final validation accuracy"``), ``treatment`` and
    ``control`` the two arms, ``direction`` whether the claim predicts ``treatment - control`` to be ``"greater"``
    or ``"less"`` than ``margin`` (in the metric's units, in the predicted direction: ``margin=0.01`` with
    ``"less"`` means "at least 0.01 lower").
    """

    metric: str
    treatment: str
    control: str
    direction: str
    margin: float = 0.0
    unit: str = ""
    confidence: float = 0.95
    n_boot: int = 10_000

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Rule: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"Rule: margin must be a finite number >= 0, got {self.margin!r}")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"Rule: confidence must lie in (0.5, 1), got {self.confidence!r}")
        if not isinstance(self.n_boot, int) or self.n_boot < 100:
            raise ValueError(f"Rule: n_boot must be an int >= 100, got {self.n_boot!r}")
        if self.treatment == self.control:
            raise ValueError(f"Rule: treatment and control must be different arms, got {self.treatment!r} twice")

    def describe(self) -> str:
        """The rule in one sentence, as printed in the report before the results."""
        sign = ">" if self.direction == "greater" else "<"
        bound = f"{'+' if self.direction == 'greater' else '-'}{_fmt(self.margin)}{self.unit}"
        pct = f"{self.confidence:.0%}"
        return (
            f"Supported if the {pct} bootstrap interval of the paired difference "
            f"[{self.metric}: {self.treatment} - {self.control}] over seeds lies entirely {sign} {bound}; "
            f"not supported if it lies entirely on the other side of {bound}; otherwise inconclusive."
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of a :class:`Rule` applied to per-seed measurements."""

    verdict: str
    effect: float | None  # mean paired difference treatment - control (metric units), None when not computable
    ci_low: float | None
    ci_high: float | None
    d_z: float | None  # standardized paired effect, None when undefined (n < 2 or zero spread)
    n_seeds: int
    diffs: tuple[float, ...] = ()
    reason: str = ""
    rule: Rule | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["diffs"] = list(self.diffs)
        out["rule"] = asdict(self.rule) if self.rule is not None else None
        if self.rule is not None:
            out["rule"]["description"] = self.rule.describe()
        return out

    def summary(self) -> str:
        """``effect [low, high]`` in the metric's units, or the reason no number exists."""
        if self.effect is None:
            return self.reason or "no measurement"
        unit = self.rule.unit if self.rule else ""
        text = f"{_fmt(self.effect, signed=True)}{unit}"
        if self.ci_low is not None:
            text += f" [{_fmt(self.ci_low, signed=True)}, {_fmt(self.ci_high, signed=True)}]{unit}"
        return text


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

    Deterministic for a given ``seed``. Needs at least one finite value; with one value the interval is that value.
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


def decide(rule: Rule, treatment: Mapping[int, float] | Sequence[float],
           control: Mapping[int, float] | Sequence[float]) -> Verdict:
    """Apply ``rule`` to per-seed values of the two arms.

    ``treatment`` and ``control`` are either ``{seed: value}`` mappings (paired on the seeds both contain) or
    equal-length sequences (paired by position). Non-finite values (a diverged run with no metric) must be turned
    into a number by the claim *before* this call (e.g. accuracy of a diverged run = chance), because what a
    divergence means depends on the metric; here they are rejected.
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
    diffs = tuple(a - b for a, b in zip(t, c))
    n = len(diffs)
    if n == 0:
        return Verdict(INCONCLUSIVE, None, None, None, None, 0, (), "no seed has both arms", rule)
    mean = float(np.mean(diffs))
    sd = float(np.std(diffs, ddof=1)) if n >= 2 else 0.0
    d_z = mean / sd if n >= 2 and sd > 0 else None
    if n < 2:
        return Verdict(INCONCLUSIVE, mean, None, None, d_z, n, diffs, "one seed: no interval, no verdict", rule)
    _, lo, hi = bootstrap_mean_ci(diffs, confidence=rule.confidence, n_boot=rule.n_boot, seed=0)
    sign = 1.0 if rule.direction == "greater" else -1.0
    s_lo, s_hi = sorted((sign * lo, sign * hi))
    if s_lo > rule.margin:
        verdict, reason = SUPPORTED, "interval entirely in the predicted direction beyond the margin"
    elif s_hi <= rule.margin:
        verdict, reason = NOT_SUPPORTED, "interval entirely short of the predicted effect"
    else:
        verdict, reason = INCONCLUSIVE, "interval straddles the margin"
    return Verdict(verdict, mean, lo, hi, d_z, n, diffs, reason, rule)


def not_run(rule: Rule | None, reason: str) -> Verdict:
    """The verdict of an experiment that could not run (a missing dependency, ...), with the reason shown."""
    return Verdict(NOT_RUN, None, None, None, None, 0, (), reason, rule)
