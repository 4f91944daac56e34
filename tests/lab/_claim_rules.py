"""Shared checks of a claim's rules on a tiny run with a few seeds (tests/lab/test_claim_*.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from test_claims_fair import RecordingContext

from normlab.lab.tuning import TUNING_SEED_BASE
from normlab.lab.verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, decide


def run_tiny(claim, tmp_path, seeds=(0, 1, 2)):
    """Run ``claim`` at its tiny level on ``seeds`` with every unit trained in this process; returns (ctx, outcome)
    (``ctx.seen``: every config it ran, tuning units first)."""
    ctx = RecordingContext(claim, "tiny", list(seeds), tmp_path)
    return ctx, claim.run(ctx)


def implied(rule, lo: float, hi: float) -> str:
    """The verdict a 95% interval [lo, hi] of treatment - control implies for ``rule`` (a family of one)."""
    m = rule.margin
    if rule.kind == "equivalence":
        return SUPPORTED if -m < lo and hi < m else NOT_SUPPORTED if hi <= -m or lo >= m else INCONCLUSIVE
    lo_s, hi_s = (lo, hi) if rule.direction == "greater" else (-hi, -lo)  # in the predicted direction
    bound = m if rule.kind == "superiority" else -m
    return SUPPORTED if lo_s > bound else NOT_SUPPORTED if hi_s <= bound else INCONCLUSIVE


def check_rules(claim, out, seeds) -> dict:
    """Every rule of ``claim`` decided on ``out``: its effect and 95% paired-t interval equal an independent
    computation (scipy's t quantile) from the per-seed values, and its verdict is the one that interval implies.
    Returns {(metric, treatment, control): verdict}."""
    verdicts = {}
    for rule in (claim.rule, *claim.secondary):
        t, c = out.metrics[rule.metric][rule.treatment], out.metrics[rule.metric][rule.control]
        assert set(t) == set(c) == set(seeds), rule
        d = np.array([t[s] - c[s] for s in seeds], dtype=np.float64)
        v = decide(rule, t, c)
        assert v.n_seeds == len(seeds) and v.margin == rule.margin > 0
        assert v.effect == pytest.approx(float(d.mean()), abs=1e-12)
        sd = float(d.std(ddof=1))
        if sd > 0:
            half = float(stats.t.ppf(0.975, len(d) - 1)) * sd / math.sqrt(len(d))
            assert (v.ci_low, v.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
            assert v.verdict == implied(rule, d.mean() - half, d.mean() + half), (rule, v)
        else:
            assert v.verdict == INCONCLUSIVE  # no interval without spread
        verdicts[(rule.metric, rule.treatment, rule.control)] = v
    return verdicts


def check_tuning(ctx, out, seeds) -> None:
    """Tuning units on tuning seeds and the tuning split only; every verdict unit of an arm at its chosen rate (one
    of the rates the search evaluated: the declared grid, extended where its best was at an edge)."""
    tuning = [c for c in ctx.seen if "tuning_fraction" in c.data_args]
    verdict = [c for c in ctx.seen if "tuning_fraction" not in c.data_args]
    assert tuning and verdict
    assert all(c.seed >= TUNING_SEED_BASE for c in tuning)
    assert {c.seed for c in verdict} == set(seeds)
    assert {c.split_seed for c in verdict} == {c.split_seed for c in tuning}
    for arm in out.arms.values():
        assert arm["lr"] in arm["tuning"]["evaluated"] and math.isfinite(arm["lr"])
    assert {c.lr for c in verdict} <= {a["lr"] for a in out.arms.values()}
