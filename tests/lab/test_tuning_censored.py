"""Censored learning-rate grids (a bug kind): a best rate at an edge of the searched grid is extended by the grid's
own ratio up to a declared cap and hard bound, and the record says whether the result is still censored. Both the
argmax search (tune) and the stable-rate bisection (bisect_stable_lr) on tiny synthetic objectives."""

from __future__ import annotations

import json
import math

import pytest

from normlab.lab.protocol import protocol
from normlab.lab.train import RunResult, TrainConfig
from normlab.lab.tuning import Search, bisect_stable_lr, stable_lr_censored, tune, tuning_seeds


class Ctx:
    def __init__(self, make):
        self.seeds = [0, 1, 2]
        self.make = make
        self.calls: list[list[float]] = []

    def map(self, configs, *, alone=False):
        self.calls.append([c.lr for c in configs])
        return [self.make(c) for c in configs]


def _base():
    return TrainConfig(data="gaussian_mixture", data_args={"n": 200, "dim": 4, "classes": 2}, split_seed=0, seed=0,
                       model="mlp", norm="bn", model_args={"widths": [4]}, optimizer="sgd", lr=0.1, batch_size=16,
                       steps=20, eval_every=10)


def _peaked(best_lr):
    """A synthetic objective: accuracy falls with the log-distance of the rate from ``best_lr``."""
    def make(c):
        acc = 0.9 - 0.1 * abs(math.log10(c.lr) - math.log10(best_lr))
        return RunResult(c, [], [{"step": 0, "val_acc": 0.1, "val_loss": 2.0}, {"step": 10, "val_acc": acc,
                                                                               "val_loss": 1.0}], {})
    return make


def _tune(best_lr, **kw):
    ctx = Ctx(_peaked(best_lr))
    search = Search(grid=(0.01, 0.03, 0.1), seeds=tuning_seeds(2), **kw)
    (lr, rec), = tune(ctx, {"a": _base()}, search).values()
    json.dumps(rec, allow_nan=False)
    return lr, rec, ctx


def test_censored_grid_interior_optimum_is_not_extended():
    lr, rec, ctx = _tune(0.03)
    assert lr == 0.03 and rec["extended"] is False and rec["censored"] is False and rec["censored_side"] is None
    assert rec["evaluated"] == [0.01, 0.03, 0.1] and len(ctx.calls) == 1


def test_censored_grid_is_extended_upward_by_its_own_ratio():
    lr, rec, ctx = _tune(0.5)
    # top ratio 0.1 / 0.03 = 3.33: 0.333, then 1.11 (worse than 0.333) stops the extension
    assert rec["extensions"] == [0.333, 1.11] and lr == 0.333
    assert rec["extended"] is True and rec["censored"] is False
    assert rec["evaluated"] == [0.01, 0.03, 0.1, 0.333, 1.11] and rec["grid"] == [0.01, 0.03, 0.1]
    assert set(rec["scores"]) == {repr(r) for r in rec["evaluated"]}
    assert ctx.calls == [[0.01, 0.01, 0.03, 0.03, 0.1, 0.1], [0.333, 0.333], [1.11, 1.11]]


def test_censored_grid_is_extended_downward_by_its_own_ratio():
    lr, rec, _ = _tune(0.004)
    # bottom ratio 0.01 / 0.03: 0.00333 (best), then 0.00111 (worse)
    assert rec["extensions"] == [0.00333, 0.00111] and lr == 0.00333 and rec["censored"] is False


def test_censored_grid_cap_reached_sets_the_censored_flag():
    lr, rec, ctx = _tune(100.0)
    assert rec["extensions"] == [0.333, 1.11, 3.7] and lr == 3.7  # cap: 3 extensions
    assert rec["censored"] is True and rec["censored_side"] == "above" and len(ctx.calls) == 4
    assert rec["declaration"]["extend"] == 3


def test_censored_grid_never_crosses_the_hard_bound():
    lr, rec, _ = _tune(100.0, bounds=(1e-6, 0.5))
    assert rec["extensions"] == [0.333] and lr == 0.333 and rec["censored"] is True
    lr, rec, _ = _tune(100.0, extend=0)
    assert rec["extensions"] == [] and lr == 0.1 and rec["censored"] is True


def test_censored_grid_a_flat_objective_is_not_censored():
    ctx = Ctx(lambda c: RunResult(c, [], [{"step": 0, "val_acc": 0.5, "val_loss": 1.0}], {}))
    (lr, rec), = tune(ctx, {"a": _base()}, Search(grid=(0.01, 0.1), seeds=(1000,))).values()
    assert lr == 0.01 and rec["censored"] is False and rec["extended"] is False


def test_censored_grid_every_rate_diverging_extends_downward():
    def make(c):
        div = c.lr > 0.002
        return RunResult(c, [], [{"step": 0, "val_acc": 0.5, "val_loss": 1.0}], {}, diverged=div,
                         diverged_step=1 if div else None)
    ctx = Ctx(make)
    (lr, rec), = tune(ctx, {"a": _base()}, Search(grid=(0.01, 0.1), seeds=(1000,))).values()
    # 0.001 is stable; 0.0001 ties with it (not better), which ends the extension
    assert rec["extensions"] == [0.001, 0.0001] and lr == 0.001 and rec["censored"] is False


def test_censored_grid_search_declaration_is_validated():
    with pytest.raises(ValueError, match="extend must be an int >= 0"):
        Search(grid=(0.1, 1.0), extend=-1)
    with pytest.raises(ValueError, match="bounds must be"):
        Search(grid=(0.1, 20.0), bounds=(1e-6, 10.0))
    # the default bounds widen to contain a declared grid (a default never cuts the grid)
    assert Search(grid=(0.1, 20.0)).bounds == (1e-6, 20.0) and Search(grid=(0.1, 1.0)).bounds == (1e-6, 10.0)


def test_censored_grid_extension_rule_enters_the_protocol_hash():
    from normlab.lab.claims import get_claim

    proto = protocol(get_claim("batch-layer-norm"), "tiny", 1)
    assert proto["search"]["extend"] == 3 and proto["search"]["bounds"] == [1e-6, 10.0]
    assert "grid step beyond" in proto["search"]["extension_rule"]


def test_censored_grid_bisection_accepts_a_grid_beyond_the_default_bounds():
    def make(c):
        return RunResult(c, [], [{"step": 0, "val_acc": 0.9 if c.lr <= 50.0 else 0.1}], {})

    rates, trails = bisect_stable_lr(Ctx(make), [TrainConfig(seed=0)], lambda r: r.evals[-1]["val_acc"] > 0.5,
                                     (1.0, 10.0, 30.0), rounds=0)
    assert rates == [30.0] and [r for r, _ in trails[0]] == [1.0, 10.0, 30.0]  # censored at the widened bound
    assert stable_lr_censored(trails) == ["above"]


def test_censored_grid_bisection_extends_both_ways_and_names_what_stays_censored():
    thresholds = {0: 0.3, 1: 1e6, 2: 1e-9}

    def make(c):
        return RunResult(c, [], [{"step": 0, "val_acc": 0.9 if c.lr <= thresholds[c.seed] else 0.1}], {})

    bases = [TrainConfig(seed=s) for s in thresholds]
    rates, trails = bisect_stable_lr(Ctx(make), bases, lambda r: r.evals[-1]["val_acc"] > 0.5, (0.01, 0.1),
                                     rounds=4, extend=2)
    # 0: ok at the top of the grid -> 1.0 tried (not ok) -> [0.1, 1.0] bisected 4 times (1/16 decade)
    assert rates[0] <= 0.3 and math.log10(0.3) - math.log10(rates[0]) <= 1 / 16 + 1e-12
    assert [r for r, _ in trails[0][:3]] == [0.01, 0.1, 1.0] and len(trails[0]) == 3 + 4
    assert rates[1] == 10.0 and rates[2] == pytest.approx(1e-4 / 10 ** 0.5)
    assert stable_lr_censored(trails) == [None, "above", "below"]


def test_censored_grid_is_shown_next_to_the_chosen_rate_on_the_page(tmp_path):
    from normlab.lab.claims import run_claim
    from normlab.lab.claims.base import Claim, Outcome, Quote
    from normlab.lab.report import write_report
    from normlab.lab.verdict import Rule

    def run(ctx):
        out = Outcome()
        for s in ctx.seeds:
            out.add("score", "a", s, 1.0 + 0.1 * s)
            out.add("score", "b", s, 0.5)
        out.arms = {"a": {"lr": 3.7, "tuning": {"extensions": [0.333, 1.11, 3.7], "censored": True,
                                                "censored_side": "above"}},
                    "b": {"lr": 0.333, "tuning": {"extensions": [0.333], "censored": False, "censored_side": None}}}
        return out

    claim = Claim(id="synthetic", title="t", articles=(Quote("x", "y"),), papers="p", measures="m",
                  rule=Rule("score", "a", "b", "greater", margin=0.1), configs={"tiny": {}, "quick": {}, "full": {}},
                  run=run)
    r = run_claim(claim, "tiny", [0, 1, 2], tmp_path)
    paths = write_report([r], tmp_path)
    page = paths["html"].read_text()
    assert ('<span class="censored">3.7 CENSORED: the largest rate evaluated scored best even after extending the '
            "grid to 0.333, 1.11, 3.7; the arm&#x27;s best rate may lie above</span>") in page
    assert "0.333 (grid extended beyond its edge to 0.333)" in page
    assert "**3.7 CENSORED" in paths["md"].read_text()
