"""normlab.lab.tuning: the per-arm learning-rate search never sees a verdict seed or a verdict-validation example,
chooses the argmax of its declared criterion, and leaves a JSON-able record; bisection of the stable rate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from normlab.lab import data
from normlab.lab.train import RunResult, TrainConfig, cached_dataset
from normlab.lab.tuning import (
    TUNING_SEED_BASE,
    Search,
    bisect_stable_lr,
    choose,
    log_grid,
    tune,
    tuning_configs,
    tuning_seeds,
)


class FakeCtx:
    """A Context stand-in: records every config it is asked to run and answers with ``make(config)``."""

    def __init__(self, seeds, make):
        self.seeds = list(seeds)
        self.make = make
        self.seen: list[TrainConfig] = []

    def map(self, configs, *, alone=False):
        self.seen += list(configs)
        return [self.make(c) for c in configs]


def _result(config, val_accs, diverged=False, val_loss=0.5):
    evals = [{"step": 10 * i, "val_acc": a, "val_loss": val_loss} for i, a in enumerate(val_accs)]
    return RunResult(config, [], evals, {}, diverged=diverged, diverged_step=5 if diverged else None)


def _base(**kw):
    args = dict(data="gaussian_mixture", data_args={"n": 400, "dim": 5, "classes": 3}, split_seed=0, seed=0,
                model="mlp", norm="bn", model_args={"widths": [8]}, optimizer="sgd", lr=0.1, batch_size=16,
                steps=40, eval_every=10, probes={"g": {"kind": "gradients", "every": 10}})
    args.update(kw)
    return TrainConfig(**args)


# --------------------------------------------------------------------------------------- tuning/verdict split


def test_tuning_uses_no_verdict_seed_and_no_verdict_validation_example():
    base = _base()
    search = Search(grid=(0.01, 0.1, 1.0), seeds=tuning_seeds(2), steps=20)
    ctx = FakeCtx(range(10), lambda c: _result(c, [0.3, 0.5]))
    tune(ctx, {"bn": base, "none": _base(norm="none")}, search)
    assert len(ctx.seen) == 2 * 3 * 2
    verdict = cached_dataset(base)
    verdict_val = {r.numpy().tobytes() for r in verdict.x_val}
    verdict_test = {r.numpy().tobytes() for r in verdict.x_test}
    verdict_train = {r.numpy().tobytes() for r in verdict.x_train}
    assert verdict_val and verdict_test  # the check below could not fail on empty sets
    for c in ctx.seen:
        assert c.seed >= TUNING_SEED_BASE and c.seed not in ctx.seeds
        assert c.split_seed == base.split_seed and c.data_args["tuning_fraction"] == search.fraction
        assert c.steps == 20 and c.probes == {}
        ds = cached_dataset(c)
        seen = {r.numpy().tobytes() for x in (ds.x_train, ds.x_val, ds.x_test) for r in x}
        assert not seen & verdict_val and not seen & verdict_test
        assert seen == verdict_train  # the tuning view is exactly the verdict's training split, re-cut
        assert len(ds.y_test) == 0 and len(ds.y_val) == round(0.2 * len(verdict.y_train))


def test_tuning_split_on_mnist5k_is_a_recut_of_the_training_split():
    ds = data.load_mnist5k(split_seed=0)
    tun = data.load_dataset("mnist5k", split_seed=0, tuning_fraction=0.2)
    assert (len(tun.y_train), len(tun.y_val), len(tun.y_test)) == (3200, 800, 0)
    assert torch.equal(torch.bincount(tun.y_val, minlength=10), torch.full((10,), 80))
    # by content: the tuning train + val rows are the verdict's training rows, as multisets
    key = lambda x: sorted(r.numpy().tobytes() for r in x)  # noqa: E731
    assert key(torch.cat([tun.x_train, tun.x_val])) == key(ds.x_train)


def test_tuning_split_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="tuning_fraction in \\(0, 1\\)"):
        data.load_dataset("digits", tuning_fraction=1.5)


def test_tune_refuses_a_tuning_seed_that_is_a_verdict_seed():
    ctx = FakeCtx([0, 1, 1000], lambda c: _result(c, [0.5]))
    with pytest.raises(ValueError, match="tuning seeds \\[1000\\] are verdict seeds"):
        tune(ctx, {"bn": _base()}, Search(grid=(0.1, 1.0), seeds=(1000, 1001)))
    assert ctx.seen == []


def test_search_refuses_seeds_below_the_tuning_range_and_unknown_criteria():
    with pytest.raises(ValueError, match="seeds must be distinct tuning seeds >= 1000"):
        Search(grid=(0.1, 1.0), seeds=(3,))
    with pytest.raises(ValueError, match="criterion must be one of"):
        Search(grid=(0.1, 1.0), criterion="best")
    with pytest.raises(ValueError, match="grid must be distinct finite rates > 0"):
        Search(grid=(0.1, -1.0))


# ------------------------------------------------------------------------------------------------- choice


@pytest.mark.parametrize("criterion", ["final_val_acc", "mean_val_acc", "neg_final_val_loss"])
def test_choice_is_the_argmax_of_the_declared_criterion_and_the_record_is_json(criterion):
    # accuracy curves designed so the three criteria disagree: lr 0.1 ends highest, lr 1.0 is highest on average,
    # lr 0.01 has the lowest loss
    curves = {0.01: ([0.1, 0.5, 0.6], 0.2), 0.1: ([0.1, 0.3, 0.9], 0.4), 1.0: ([0.1, 0.8, 0.85], 0.3)}

    def make(c):
        # a rate beyond the grid (the search extends an edge optimum) is worse than every grid rate
        accs, loss = curves.get(c.lr, ([0.1, 0.1, 0.1], 9.0))
        jitter = 0.01 * (c.seed - TUNING_SEED_BASE)  # seeds differ; the mean decides
        return _result(c, [a + jitter for a in accs], val_loss=loss + jitter)

    search = Search(grid=(0.01, 0.1, 1.0), seeds=tuning_seeds(3), criterion=criterion)
    ctx = FakeCtx(range(5), make)
    (lr, rec), = tune(ctx, {"bn": _base()}, search).values()
    expected = {"final_val_acc": 0.1, "mean_val_acc": 1.0, "neg_final_val_loss": 0.01}[criterion]
    assert lr == expected == rec["lr"]
    best = max(rec["scores"], key=lambda k: rec["scores"][k])
    assert float(best) == lr
    assert math.isclose(rec["scores"]["1.0"], {"final_val_acc": 0.86, "mean_val_acc": 0.835,
                                               "neg_final_val_loss": -0.31}[criterion])
    assert rec["grid"] == [0.01, 0.1, 1.0] and rec["seeds"] == [1000, 1001, 1002] and rec["criterion"] == criterion
    # an edge optimum (mean_val_acc: the top, neg_final_val_loss: the bottom) got one rate beyond it, which lost
    extra = {"final_val_acc": [], "mean_val_acc": [10.0], "neg_final_val_loss": [0.001]}[criterion]
    assert rec["extensions"] == extra and rec["extended"] == bool(extra) and rec["censored"] is False
    assert rec["split"]["split_seed"] == 0 and rec["split"]["tuning_fraction"] == 0.2
    again = json.loads(json.dumps(rec, allow_nan=False))
    assert again == rec


def test_a_rate_that_diverges_on_any_tuning_seed_is_not_eligible():
    def make(c):
        return _result(c, [0.1, 0.99], diverged=(c.lr == 1.0 and c.seed == 1001))

    search = Search(grid=(0.1, 1.0), seeds=tuning_seeds(2))
    lr, rec = choose(search, [make(c) for c in tuning_configs(_base(), search)])
    assert lr == 0.1 and rec["scores"]["1.0"] is None and rec["per_seed"]["1.0"][0] == pytest.approx(0.99)
    json.dumps(rec, allow_nan=False)


def test_when_every_rate_diverges_the_smallest_is_taken_and_said():
    search = Search(grid=(0.3, 0.1), seeds=tuning_seeds(1))
    lr, rec = choose(search, [_result(c, [0.1], diverged=True) for c in tuning_configs(_base(), search)])
    assert lr == 0.1 and "every rate diverged" in rec["note"]


def test_ties_go_to_the_first_rate_of_the_grid():
    search = Search(grid=(0.3, 0.1, 1.0), seeds=tuning_seeds(1))
    lr, _ = choose(search, [_result(c, [0.5]) for c in tuning_configs(_base(), search)])
    assert lr == 0.3


def test_log_grid():
    assert log_grid(0.01, 1.0, 3) == (0.01, 0.1, 1.0)
    with pytest.raises(ValueError):
        log_grid(1.0, 0.1, 3)


def test_tuning_runs_for_real_through_the_engine():
    """A real (tiny) search through train(): the configs are valid and the tuning view loads."""
    from normlab.lab.train import train

    class Ctx(FakeCtx):
        def map(self, configs, *, alone=False):
            self.seen += list(configs)
            return [train(c, progress="none", threads=1) for c in configs]

    ctx = Ctx([0, 1], None)
    out = tune(ctx, {"bn": _base(steps=6, eval_every=3, probes={})}, Search(grid=(0.01, 0.1), seeds=(1000,)))
    lr, rec = out["bn"]
    assert lr in rec["evaluated"] and all(v is not None for v in rec["scores"].values())
    json.dumps(rec, allow_nan=False)


# ----------------------------------------------------------------------------------------------- bisection


def test_bisection_brackets_each_configs_threshold():
    # ok when the rate is in [floor, threshold]: too small a rate fails too (non-monotone at the low end)
    thresholds = {0: 0.05, 1: 0.7, 2: 20.0, 3: 1e-4, 4: 0.3}  # by seed; 2 is above the grid, 3 below
    floor = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.05}

    def make(c):
        return _result(c, [0.9 if floor[c.seed] <= c.lr <= thresholds[c.seed] else 0.1])

    bases = [_base(seed=s) for s in thresholds]
    ctx = FakeCtx([0], make)
    grid = (0.01, 0.1, 1.0, 10.0)
    rates, trail = bisect_stable_lr(ctx, bases, lambda r: r.evals[-1]["val_acc"] > 0.5, grid, rounds=6,
                                    bounds=(1e-6, 1e3))
    width = 1.0 / 2 ** 6  # decades: one grid step bisected 6 times
    for s in (0, 1, 4):
        assert rates[s] <= thresholds[s] and math.log10(thresholds[s]) - math.log10(rates[s]) <= width + 1e-12
    # censored configs get the grid extended by its own ratio (10x): 2 is bracketed by [10, 100] and bisected,
    # 3 finds 1e-4 ok below the grid (the bracket [1e-4, 1e-3] is then bisected)
    for s in (2, 3):
        assert rates[s] <= thresholds[s] and math.log10(thresholds[s]) - math.log10(rates[s]) <= width + 1e-12
    assert [r for r, _ in trail[2][4:5]] == [100.0] and [r for r, _ in trail[3][4:6]] == [0.001, 0.0001]
    assert len(trail[0]) == 4 + 6 and len(trail[2]) == 4 + 1 + 6 and len(trail[3]) == 4 + 2 + 6
    assert trail[1][:4] == [(0.01, True), (0.1, True), (1.0, False), (10.0, False)]
    assert all(0.1 <= r <= 1.0 for r, _ in trail[1][4:])
    with pytest.raises(ValueError, match="ascending grid"):
        bisect_stable_lr(ctx, bases, bool, (1.0, 0.1), 2)


def test_a_stored_null_value_is_not_eligible():
    search = Search(grid=(0.1, 1.0), seeds=tuning_seeds(1))
    cs = tuning_configs(_base(), search)
    lr, rec = choose(search, [_result(cs[0], [0.1, 0.6]), _result(cs[1], [0.1, None])])
    assert lr == 0.1 and rec["scores"]["1.0"] is None
