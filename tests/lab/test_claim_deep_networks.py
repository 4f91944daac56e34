"""deep-networks (seed 002: BN makes networks of over 100 layers trainable): plain MLPs of more than 100 hidden
layers with and without BN, each at its own tuned rate; the rules decided on a tiny run of three seeds."""

from __future__ import annotations

import pytest
from _claim_rules import check_rules, check_tuning, run_tiny
from torch import nn

from normlab.lab.claims.deep_networks import ARMS, CLAIM, TRAINS, TRAINS_AT, VAL, _cfg, _config
from normlab.lab.models import build_model
from normlab.lab.verdict import SUPPORTED

SEEDS = (0, 1, 2)

# the rules are checked against scipy's Student t (see check_rules); the skew-robust values: test_verdict_skew.py
pytestmark = pytest.mark.usefixtures("student_t")


def test_deep_arms_are_plain_stacks_of_more_than_100_layers_with_and_without_bn():
    for level in ("tiny", "quick", "full"):
        cfg = CLAIM.configs[level]
        assert cfg["deep"] > 100 and cfg["shallow"] < cfg["deep"]
        for arm in ARMS:
            c = _config(arm, 0, cfg)
            assert (c.model, c.model_args["activation"], c.model_args["init"]) == ("mlp", "relu", "he")
    cfg = CLAIM.configs["tiny"]
    bn = build_model("mlp", (1, 28, 28), 10, norm="bn", **_config("bn-deep", 0, cfg).model_args)
    none = build_model("mlp", (1, 28, 28), 10, norm="none", **_config("none-deep", 0, cfg).model_args)
    assert isinstance(bn, nn.Sequential)  # a chain of layers: no residual connection anywhere
    assert sum(isinstance(m, nn.Linear) for m in bn) == cfg["deep"] + 1
    assert sum("BatchNorm" in type(m).__name__ for m in bn) == cfg["deep"]
    assert not any("BatchNorm" in type(m).__name__ for m in none.modules())
    with pytest.raises(ValueError, match="over 100 layers"):
        _cfg(100, 10, 5, [1e-3], 5, 1)


def test_tiny_run_decides_every_rule_and_no_deep_network_trains_in_four_steps(tmp_path):
    ctx, out = run_tiny(CLAIM, tmp_path, SEEDS)
    check_tuning(ctx, out, SEEDS)
    verdicts = check_rules(CLAIM, out, SEEDS)
    for arm in ARMS:
        for s in SEEDS:
            assert out.metrics[TRAINS][arm][s] == float(out.metrics[VAL][arm][s] >= TRAINS_AT)
    # four Adam steps cannot take a 101-layer network from chance (10%) to the declared 50%: neither deep arm
    # "trains" here, so the headline (BN 10 points above no norm) cannot be supported on this run
    assert all(out.metrics[TRAINS][a][s] == 0.0 for a in ("bn-deep", "none-deep") for s in SEEDS)
    assert all(out.metrics[VAL][a][s] < 0.3 for a in ("bn-deep", "none-deep") for s in SEEDS)
    assert verdicts[(VAL, "bn-deep", "none-deep")].verdict != SUPPORTED
    assert out.figures and out.measured.startswith(f"final validation accuracy at {CLAIM.configs['tiny']['deep']}")
