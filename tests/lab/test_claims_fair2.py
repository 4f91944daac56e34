"""Fair baselines in the rest of the claims (issue 12, items 3-5): per-arm tuned rates in small-batches, recurrent
and careless-init (tuned at the standard init only: the claim is about the init), on tuning seeds and a tuning
split the verdict never sees."""

from __future__ import annotations

import json
import math

import pytest

from normlab.lab.claims import get_claim
from normlab.lab.tuning import TUNING_SEED_BASE
from test_claims_fair import RecordingContext

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
    for arm, a in out.arms.items():
        assert a["lr"] in a["tuning"]["grid"] and math.isfinite(a["lr"])
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
