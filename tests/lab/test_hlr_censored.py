"""Kind: censored per-seed values of higher-learning-rates (a seed stable at no rate tried, or still stable at the
largest) must not enter the verdict as if measured: they enter as the bound of the evaluated range, are flagged
in the arm's tuning record and tables, and censoring in the rule's favour is marked. Fake runner, no training."""

from __future__ import annotations

import json
import math

from normlab.lab.claims import get_claim
from normlab.lab.claims import higher_learning_rates as hlr
from normlab.lab.train import RunResult


class FakeCtx:
    """A Context with a fake unit runner: a run is stable iff its rate is at most ``limit[(norm, seed)]``."""

    def __init__(self, limit, seeds=(0, 1, 2)):
        self.config = dict(get_claim("higher-learning-rates").configs["quick"])
        self.seeds = list(seeds)
        self.limit = limit

    def map(self, configs, *, alone=False):
        out = []
        for c in configs:
            ok = c.lr <= self.limit[(c.norm, c.seed)]
            out.append(RunResult(c, [], [{"step": 0, "val_acc": 0.95 if ok else 0.1}], {}))
        return out


def _run(limit):
    return hlr.run(FakeCtx(limit))


def test_hlr_censored_below_enters_as_the_smallest_rate_tried_and_is_flagged():
    # bn seed 1 stable nowhere (censored below: in the rule's favour); none seed 2 stable everywhere (above: too)
    limit = {("bn", 0): 3.0, ("bn", 1): 0.0, ("bn", 2): 2.0,
             ("none", 0): 0.05, ("none", 1): 0.04, ("none", 2): 1e9}
    out = _run(limit)
    values = out.metrics[hlr.PRIMARY]
    tried_bn1 = [r for r, _ in json.loads(json.dumps(out.arms["bn"]["tuning"]["per_seed"]["1"]))]
    assert values["bn"][1] == math.log10(min(tried_bn1))  # the bound, not min(tried) / 10**0.5
    tried_none2 = [r for r, _ in out.arms["none"]["tuning"]["per_seed"]["2"]]
    assert values["none"][2] == math.log10(max(tried_none2))
    assert out.arms["bn"]["tuning"]["censored"] and out.arms["bn"]["tuning"]["censored_seeds"] == {"1": "below"}
    assert out.arms["none"]["tuning"]["censored_seeds"] == {"2": "above"}
    assert out.arms["bn"]["tuning"]["censored_favours_rule"] == ["1"]
    assert out.arms["none"]["tuning"]["censored_favours_rule"] == ["2"]
    assert any("CENSORED IN THE RULE'S FAVOUR" in n for n in out.notes)
    trails = next(t for t in out.tables if t.title.startswith("Bisection trails"))
    assert ("bn", "1") in {(r[0], r[1]) for r in trails.rows if r[3] == "below"}
    json.dumps(out.arms, allow_nan=False)


def test_hlr_censoring_against_the_rule_is_flagged_but_not_marked_as_favouring():
    limit = {("bn", s): 1e9 for s in range(3)} | {("none", s): 0.05 for s in range(3)}
    out = _run(limit)
    assert out.arms["bn"]["tuning"]["censored_seeds"] == {"0": "above", "1": "above", "2": "above"}
    assert out.arms["bn"]["tuning"]["censored_favours_rule"] == []
    assert not any("CENSORED IN THE RULE'S FAVOUR" in n for n in out.notes)


def test_hlr_uncensored_seeds_keep_their_bisected_values():
    limit = {("bn", s): 3.0 for s in range(3)} | {("none", s): 0.05 for s in range(3)}
    out = _run(limit)
    assert not out.arms["bn"]["tuning"]["censored"] and not out.arms["none"]["tuning"]["censored"]
    assert all(math.log10(3.0) - 0.5 < v <= math.log10(3.0) for v in out.metrics[hlr.PRIMARY]["bn"].values())
