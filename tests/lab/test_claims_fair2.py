"""Fair baselines in the rest of the claims (issue 12, items 3-5): per-arm tuned rates in small-batches, recurrent
and careless-init (tuned at the standard init only: the claim is about the init), on tuning seeds and a tuning
split the verdict never sees."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_claims_fair import RecordingContext

from normlab.lab.claims import get_claim
from normlab.lab.tuning import TUNING_SEED_BASE

TUNED2 = ("small-batches", "recurrent", "careless-init")


@pytest.mark.parametrize("claim_id", TUNED2)
def test_tuning_units_of_the_remaining_claims_use_no_verdict_seed_and_no_verdict_validation_split(claim_id, tmp_path):
    claim = get_claim(claim_id)
    ctx = RecordingContext(claim, "tiny", [0, 1], tmp_path)
    out = claim.run(ctx)
    tuning = [c for c in ctx.seen if "tuning_fraction" in c.data_args]
    verdict = [c for c in ctx.seen if "tuning_fraction" not in c.data_args]
    assert tuning and verdict
    assert all(c.seed >= TUNING_SEED_BASE for c in tuning)
    assert {c.seed for c in verdict} == {0, 1}
    assert {c.split_seed for c in verdict} == {c.split_seed for c in tuning}
    assert out.arms and all(set(a) >= {"lr", "tuning", "init"} for a in out.arms.values())
    for a in out.arms.values():
        assert a["lr"] in a["tuning"]["evaluated"] and math.isfinite(a["lr"])
        assert all(s >= TUNING_SEED_BASE for s in a["tuning"]["seeds"])
    # every verdict unit of an arm runs at that arm's chosen rate
    chosen = {a["lr"] for a in out.arms.values()}
    assert {c.lr for c in verdict} <= chosen
    json.dumps(out.arms, allow_nan=False)


def test_careless_init_tunes_at_the_standard_init_and_sweeps_the_scale_at_that_rate(tmp_path):
    claim = get_claim("careless-init")
    ctx = RecordingContext(claim, "tiny", [0], tmp_path)
    out = claim.run(ctx)
    tuning = [c for c in ctx.seen if "tuning_fraction" in c.data_args]
    verdict = [c for c in ctx.seen if "tuning_fraction" not in c.data_args]
    assert {c.model_args["init"] for c in tuning} == {"he"}
    assert {c.model_args["init"] for c in verdict} == {"normal"}
    assert {c.model_args["init_std"] for c in verdict} == set(claim.configs["tiny"]["init_stds"])
    for c in verdict:
        assert c.lr == out.arms[c.norm]["lr"]


def test_small_batches_tunes_each_arm_at_the_largest_batch_size(tmp_path):
    claim = get_claim("small-batches")
    ctx = RecordingContext(claim, "tiny", [0], tmp_path)
    claim.run(ctx)
    tuning = [c for c in ctx.seen if "tuning_fraction" in c.data_args]
    assert {c.batch_size for c in tuning} == {max(claim.configs["tiny"]["batch_sizes"])}


# ------------------------------------------------------------------------------------ the seed article's Keras run


def test_keras_seed_experiment_uses_keras_defaults(tmp_path):
    from normlab.lab.models import build_model
    from normlab.nn import BatchNorm

    claim = get_claim("keras-seed-experiment")
    ctx = RecordingContext(claim, "tiny", [0, 1], tmp_path)
    out = claim.run(ctx)
    assert len(ctx.seen) == 4 and {c.seed for c in ctx.seen} == {0, 1}
    for c in ctx.seen:
        assert (c.model, c.optimizer, c.lr, c.adam_eps, c.batch_size) == ("seed_mlp", "adam", 1e-3, 1e-7, 32)
        assert c.data_args["val_fraction"] == 0.2 and c.eval_every == 0  # Keras evaluates at every epoch's end
        assert c.model_args["init"] == "glorot_uniform"
    bn = next(c for c in ctx.seen if c.norm == "bn")
    net = build_model(bn.model, (1, 28, 28), 10, norm=bn.norm, **bn.model_args)
    norm = net[3]
    keras = BatchNorm.keras(128)
    assert isinstance(norm, BatchNorm) and norm.eps == keras.eps == 1e-3 and norm.momentum == keras.momentum
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in (net[1], net[4]))  # zero biases
    bound = (6 / (784 + 128)) ** 0.5  # Glorot uniform: U(-b, b)
    assert float(net[1].weight.detach().abs().max()) <= bound and float(net[1].weight.detach().abs().max()) > 0.9 * bound
    assert out.figures and set(out.metrics) >= {"final validation loss (Keras' val_loss, last epoch)"}
    assert claim.configs["full"]["epochs"] == 10


def test_adam_eps_reaches_the_optimizer():
    from normlab.lab.train import TrainConfig, make_optimizer

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert make_optimizer(TrainConfig(adam_eps=1e-7), p).defaults["eps"] == 1e-7
    assert make_optimizer(TrainConfig(), p).defaults["eps"] == 1e-8  # torch's default unchanged
    with pytest.raises(ValueError, match="adam_eps"):
        TrainConfig(adam_eps=0.0)
