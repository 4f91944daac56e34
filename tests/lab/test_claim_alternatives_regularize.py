"""alternatives-regularize (seed 000: layer, instance and group norm lack BN's regularizing effect): the
generalization gap of BN against LN, GN and IN (and no norm) in a small CNN where IN is defined; the rules decided
on a tiny run of three seeds."""

from __future__ import annotations

import pytest
import torch
from _claim_rules import check_rules, check_tuning, run_tiny

from normlab.lab.claims.alternatives_regularize import (
    ALTERNATIVES,
    ARMS,
    CLAIM,
    GAP,
    TRAIN_LOSS,
    VAL,
    VAL_LOSS,
    _config,
    _spec,
)
from normlab.lab.models import build_model

SEEDS = (0, 1, 2)

# the rules are checked against scipy's Student t (see check_rules); the skew-robust values: test_verdict_skew.py
pytestmark = pytest.mark.usefixtures("student_t")


def test_each_alternative_has_its_own_confirmatory_rule_against_bn():
    rules = (CLAIM.rule, *CLAIM.secondary)
    family = [r for r in rules if r is CLAIM.rule or r.confirmatory]
    assert {(r.metric, r.treatment, r.control, r.direction) for r in family} == {
        (GAP, a, "bn", "greater") for a in ALTERNATIVES}
    assert all(r.margin == 0.02 for r in family)


def test_instance_norm_is_defined_here_it_normalizes_each_channel_of_each_image_over_64_positions():
    cfg = CLAIM.configs["quick"]
    models = {a: build_model("cnn", (1, 8, 8), 10, norm=_spec(a), **_config(a, 0, cfg).model_args) for a in ARMS}
    names = {a: {type(m).__name__ for m in models[a].modules()} for a in ARMS}
    assert "InstanceNorm" in names["in"] and "GroupNorm" in names["gn"] and "LayerNorm" in names["ln"]
    assert not any("MaxPool" in n for n in names["in"])  # full 8x8 resolution in every conv
    m = models["in"].train()
    acts = {}
    layer = next(x for x in m.modules() if type(x).__name__ == "InstanceNorm")
    layer.register_forward_hook(lambda mod, i, o: acts.setdefault("out", o))
    with torch.no_grad():
        layer.weight.fill_(1.0), layer.bias.zero_()
        m(torch.rand(4, 1, 8, 8))
    y = acts["out"].double()
    assert y.shape[-2:] == (8, 8)
    assert y.mean(dim=(2, 3)).abs().max() < 1e-5 and (y.var(dim=(2, 3), unbiased=False) - 1).abs().max() < 1e-3


def test_tiny_run_decides_every_rule_and_the_gap_is_validation_minus_training_loss(tmp_path):
    ctx, out = run_tiny(CLAIM, tmp_path, SEEDS)
    check_tuning(ctx, out, SEEDS)
    check_rules(CLAIM, out, SEEDS)
    for arm in ARMS:
        for s in SEEDS:
            assert out.metrics[GAP][arm][s] == pytest.approx(out.metrics[VAL_LOSS][arm][s]
                                                             - out.metrics[TRAIN_LOSS][arm][s], abs=1e-12)
            assert 0.0 <= out.metrics[VAL][arm][s] <= 1.0 and out.metrics[TRAIN_LOSS][arm][s] > 0
    # the verdict units evaluate the training loss on the whole training split (eval mode) at every evaluation
    verdict = [c for c in ctx.seen if "tuning_fraction" not in c.data_args]
    assert all(c.probes["train_eval"] == {"kind": "eval_train", "n": None} for c in verdict)
