"""Fair baselines and declared margins in the claims (issue 12, items 3 and 4): per-arm tuned rates on tuning
seeds and a tuning split the verdict never sees, the standard init per activation, interpolated steps-to-target,
bisected stable rates, separate vanishing/exploding rules, and a non-zero margin on every rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _claims_tiny import tiny_report

from normlab.lab.claims import all_claims, get_claim
from normlab.lab.claims.base import Context
from normlab.lab.train import RunResult, train
from normlab.lab.tuning import TUNING_SEED_BASE

TUNED = ("faster-convergence", "dying-relu", "vanishing-gradients", "batch-layer-norm", "bn-only-training",
         "regularization", "dropout-order", "covariate-shift")


class RecordingContext(Context):
    """Runs every unit like the lab does, and keeps every config it was given."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen = []

    def map(self, configs, *, alone=False):
        self.seen += list(configs)
        out = []
        for c in configs:
            r = train(c, progress="none", threads=1)
            r.model = None
            out.append(r)
        return out


@pytest.mark.parametrize("claim_id", TUNED)
def test_tuning_units_use_no_verdict_seed_and_no_verdict_validation_split(claim_id, tmp_path):
    claim = get_claim(claim_id)
    ctx = RecordingContext(claim, "tiny", [0, 1], tmp_path)
    out = claim.run(ctx)
    tuning = [c for c in ctx.seen if "tuning_fraction" in c.data_args]
    verdict = [c for c in ctx.seen if "tuning_fraction" not in c.data_args]
    assert tuning and verdict
    assert all(c.seed >= TUNING_SEED_BASE for c in tuning)
    assert {c.seed for c in verdict} == {0, 1}
    # the tuning view drops the validation split of its split_seed: the verdict must evaluate on that same split
    assert {c.split_seed for c in verdict} == {c.split_seed for c in tuning}
    # each verdict unit runs at the rate its arm's search chose, recorded for results.json's arms[]
    assert out.arms and all(set(a) >= {"lr", "tuning", "init"} for a in out.arms.values())
    chosen = {a["lr"] for a in out.arms.values()}
    assert {c.lr for c in verdict} - {0.0} <= chosen  # (bn-only-training's frozen reference trains at lr 0)
    for a in out.arms.values():
        assert a["lr"] in a["tuning"]["evaluated"] and all(s >= TUNING_SEED_BASE for s in a["tuning"]["seeds"])
    json.dumps(out.arms, allow_nan=False)


def test_standard_init_per_activation():
    for claim_id in TUNED:
        claim = get_claim(claim_id)
        ctx = RecordingContext(claim, "tiny", [0], Path("/nonexistent"))
        ctx.map = lambda configs, alone=False, _ctx=ctx: (_ctx.seen.extend(configs), [_fake(c) for c in configs])[1]
        claim.run(ctx)
        for c in ctx.seen:
            default = "sigmoid" if c.model == "ioffe_mlp" else "relu"
            if c.model == "rnn" and c.model_args.get("cell", "tanh") == "tanh":
                default = "tanh"  # the tanh RNN cell (batch-layer-norm's RNN family)
            act = c.model_args.get("activation", default)
            assert c.model_args["init"] == {"relu": "he", "tanh": "xavier", "sigmoid": "xavier"}[act], (claim_id, c)


def _fake(c):
    """A RunResult stand-in with every field the tuned claims read."""
    steps = list(range(0, c.steps + 1, max(1, c.eval_every or c.steps)))
    evals = [{"step": s, "val_acc": 0.5, "val_loss": 1.0, "train_loss": 1.0} for s in steps]
    probes = {}
    if "grads" in c.probes:
        probes["grads"] = {"steps": [0, c.steps], "weight_grad_norm": [[1.0] * (c.model_args["depth"] + 1)] * 2}
    if "shift" in c.probes:
        probes["shift"] = {"steps": [c.steps], "variance_shift": [[0.0] * len(c.model_args["widths"])]}
    if "train_eval" in c.probes:
        probes["train_eval"] = {"steps": steps, "loss": [1.0] * len(steps), "acc": [0.5] * len(steps)}
    if "percentiles" in c.probes:
        probes["percentiles"] = {"steps": [0, c.steps], "unit_percentiles": [[[[0.0, 0.5, 1.0]]]] * 2}
        probes["landscape"] = {"steps": [0, c.steps], "loss_range": [0.1, 0.1], "grad_change": [0.1, 0.1]}
    if "dead" in c.probes:
        probes["dead"] = {"steps": [0, c.steps], "dead_fraction": [[0.0] * 4] * 2}
    if "population" in c.probes:
        probes["population"] = {"steps": [c.steps], "val_loss": [1.0], "val_acc": [0.5]}
    if "ics" in c.probes:
        probes["ics"] = {"layers": ["1", "2", "3"], "steps": [0, c.steps], "ics_l2": [[0.0, 0.1, 0.1]] * 2,
                         "ics_cos": [[1.0, 0.9, 0.9]] * 2}
    rows = [(s, 0, 1.0, 0.5, 1.0 + 0.1 * s, c.lr, 0.0) for s in range(1, c.steps + 1)]
    return RunResult(c, rows, evals, {}, probes=probes)


def test_every_tuned_claim_runs_at_tiny_and_carries_its_arms():
    results, _, _, _ = tiny_report()
    by_id = {r.claim.id: r for r in results}
    for claim_id in (*TUNED, "higher-learning-rates"):
        r = by_id[claim_id]
        assert not r.error, r.error
        arms = r.outcome.arms
        assert arms and all(math.isfinite(a["lr"]) and a["lr"] > 0 and a["tuning"] for a in arms.values())
        json.dumps(arms, allow_nan=False)


# ----------------------------------------------------------------------------------------------- margins


def test_every_rule_of_every_claim_declares_a_nonzero_margin():
    for c in all_claims():
        for r in (c.rule, *c.secondary):
            assert r.margin > 0, (c.id, r.metric, r.treatment, r.control)


def test_not_problematic_and_removes_the_cost_are_equivalence_rules():
    small = get_claim("small-batches")
    eq = [r for r in small.secondary if r.kind == "equivalence"]
    assert {r.treatment for r in eq} == {"brn", "mabn", "bln", "gn", "ln"}
    assert all(r.control == "none" and r.direction == "within" and r.confirmatory for r in eq)
    over = get_claim("inference-overhead")
    (fold,) = [r for r in over.secondary if r.kind == "equivalence"]
    assert (fold.treatment, fold.control, fold.confirmatory) == ("folded", "none", True)
    assert fold.margin == pytest.approx(math.log(1.03))


# ------------------------------------------------------------------------------------------ measurements


def test_steps_to_target_is_interpolated_between_evaluations():
    from normlab.lab.claims.faster_convergence import steps_to_reach

    assert steps_to_reach([0, 25, 50], [0.1, 0.8, 1.0], 0.9, 1200) == pytest.approx(37.5)
    assert steps_to_reach([0, 25, 50], [0.95, 0.96, 0.97], 0.9, 1200) == 0.0
    assert steps_to_reach([0, 25, 50], [0.1, 0.5, 0.6], 0.9, 1200) == 1200.0  # censored at the budget
    assert steps_to_reach([0, 25, 50], [0.1, math.nan, 0.95], 0.9, 1200) == 50.0  # no line through a NaN


def test_vanishing_and_exploding_measures():
    from normlab.lab.claims import vanishing_gradients as V

    assert V._vanishing([0.01, 1.0, 1.0]) == pytest.approx(2.0)  # first layer 100x smaller: 2 decades
    assert V._vanishing([10.0, 1.0]) == pytest.approx(-1.0)
    c = get_claim("vanishing-gradients").configs["tiny"]
    cfg = V._config("relu", 3, "none", 0, c)
    steady = RunResult(cfg, [(s, 0, 1.0, 0.5, 2.0, 0.1, 0.0) for s in range(1, 6)], [], {})
    spike = RunResult(cfg, [(s, 0, 1.0, 0.5, 200.0 if s == 3 else 2.0, 0.1, 0.0) for s in range(1, 6)], [], {})
    assert V._exploding(steady) == 0.0 and V._exploding(spike) == pytest.approx(2.0)
    diverged = RunResult(cfg, [], [], {}, diverged=True, diverged_step=2)
    assert V._exploding(diverged) == 6.0


# ------------------------------------------------------------------------------- bn-only's random control


def test_trainable_random_trains_exactly_as_many_entries_as_the_norms_hold():
    import dataclasses

    import torch

    from normlab.lab.train import TrainConfig

    cfg = TrainConfig(data="gaussian_mixture", data_args={"n": 300, "dim": 6, "classes": 3}, model="mlp", norm="bn",
                      model_args={"widths": [8, 8]}, trainable="random", optimizer="adam", lr=0.05, batch_size=32,
                      steps=15, seed=4)
    torch.manual_seed(cfg.seed)
    from normlab.lab.models import build_model

    before = build_model("mlp", (6,), 3, norm="bn", widths=[8, 8])
    r = train(cfg, progress="none", threads=1)
    n_norm = 2 * (8 + 8)  # gamma and beta of two BN layers
    changed = sum(int((p0 != p1).sum()) for p0, p1 in zip(before.parameters(), r.model.parameters()))
    assert changed == n_norm
    # the norms themselves stay frozen; the same seed draws the same entries, another seed others
    norm_mods = [m for m in r.model.modules() if type(m).__name__.lower().startswith("batchnorm")]
    assert norm_mods and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norm_mods)
    again = train(cfg, progress="none", threads=1)
    assert all(torch.equal(a, b) for a, b in zip(r.model.parameters(), again.model.parameters()))
    other = train(dataclasses.replace(cfg, seed=5), progress="none", threads=1)
    torch.manual_seed(5)
    before5 = build_model("mlp", (6,), 3, norm="bn", widths=[8, 8])
    moved4 = [(p0 != p1) for p0, p1 in zip(before.parameters(), r.model.parameters())]
    moved5 = [(p0 != p1) for p0, p1 in zip(before5.parameters(), other.model.parameters())]
    assert any(not torch.equal(a, b) for a, b in zip(moved4, moved5))


def test_trainable_random_refuses_weight_decay():
    from normlab.lab.train import TrainConfig

    with pytest.raises(ValueError, match="weight_decay=.*trainable='random'"):
        TrainConfig(trainable="random", weight_decay=1e-4)
