"""Issue 13's new claims: their measures (checked against independent formulas), their declarations (the article
quoted verbatim from its file, a rule with a declared non-zero margin, all three levels) and one tiny run each
(shared with test_claims.py through ``tiny_report``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from _claims_tiny import tiny_report

from normlab.lab.claims import claim_ids, get_claim
from normlab.lab.verdict import NOT_RUN

NEW_IDS = ["activation-placement", "lr-sensitivity", "sigmoid-saturation", "training-overhead",
           "running-average-normalization", "full-normalization", "alpha-dropout", "replaces-dropout"]
SEEDS = Path("/work/shared/seeds")


def test_new_claims_are_registered_after_the_existing_ones():
    ids = claim_ids()
    assert [i for i in ids if i in NEW_IDS] == NEW_IDS  # in their declared order
    assert ids.index(NEW_IDS[0]) > ids.index("bn-only-training")  # after the first wave's claims


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("cid", NEW_IDS)
def test_new_claim_declarations(cid):
    c = get_claim(cid)
    assert set(c.configs) >= {"tiny", "quick", "full"}
    for rule in (c.rule, *c.secondary):
        assert rule.margin > 0, (cid, rule)
    for q in c.articles:
        # every quote names its seed file and is verbatim there (when the seeds are on this machine)
        m = re.search(r"\d{3}_[0-9a-f]{16}\.txt", q.source)
        assert m, (cid, q.source)
        path = SEEDS / m.group(0)
        if path.exists():
            assert _normalize(q.text) in _normalize(path.read_text(encoding="utf-8")), (cid, q.text)


@pytest.mark.parametrize("cid", NEW_IDS)
def test_new_claim_runs_at_tiny(cid):
    results, _, _, _ = tiny_report()
    r = next(r for r in results if r.claim.id == cid)
    assert r.error == "", r.error
    assert r.outcome.figures and r.outcome.tables and r.outcome.measured
    assert r.verdict.verdict != NOT_RUN
    for rule in (r.claim.rule, *r.claim.secondary):
        assert {rule.treatment, rule.control} <= set(r.outcome.metrics[rule.metric]), rule


# ------------------------------------------------------------------------------------------- lr-sensitivity


def test_near_best_width_counts_grid_points_within_tolerance():
    from normlab.lab.claims.lr_sensitivity import near_best_width

    assert near_best_width([0.5, 0.89, 0.9, 0.875, None], 0.5, 0.02) == pytest.approx(1.0)  # 0.89 and 0.9 only
    assert near_best_width([0.5, 0.89, 0.9, 0.88, math.nan], 0.5, 0.02) == pytest.approx(1.5)  # 0.88 is in
    assert near_best_width([None, None], 0.5, 0.02) == 0.0
    assert near_best_width([0.1], 0.25, 0.02) == pytest.approx(0.25)


def test_lr_sensitivity_grid_spacing_is_the_declared_half_decade():
    from normlab.lab.claims.lr_sensitivity import CLAIM, _grid, _spacing

    cfg = CLAIM.configs["quick"]
    grid = _grid(cfg)
    assert len(grid) == cfg["points"] and _spacing(cfg) == pytest.approx(0.5, abs=1e-3)
    ratios = [math.log10(b / a) for a, b in zip(grid, grid[1:])]
    assert all(r == pytest.approx(0.5, abs=0.01) for r in ratios)
    assert CLAIM.rule.margin == pytest.approx(_spacing(cfg), abs=1e-3)  # margin = one grid step


# --------------------------------------------------------------------------------------- sigmoid-saturation


def test_saturated_fraction_matches_direct_count_on_sigmoid_outputs():
    import torch

    from normlab.lab.claims.sigmoid_saturation import EPS, saturated_fraction

    torch.manual_seed(0)
    # 6 units over 1,000 inputs: 2 stuck near 1, 1 stuck near 0, 3 spread out
    z = torch.randn(1000, 6, dtype=torch.float64)
    z[:, 0] += 8
    z[:, 1] += 6
    z[:, 2] -= 7
    q = torch.quantile(z, torch.tensor([0.15, 0.5, 0.85], dtype=torch.float64), dim=0).T.tolist()
    s = torch.sigmoid(z)
    # independent definition: saturated on >= 85% of inputs (within EPS of 0 or of 1)
    direct = (((s > 1 - EPS).double().mean(0) >= 0.85) | ((s < EPS).double().mean(0) >= 0.85)).double().mean()
    assert saturated_fraction(q) == pytest.approx(direct.item())
    assert saturated_fraction(q) == pytest.approx(0.5)
    assert math.isnan(saturated_fraction([]))


# ---------------------------------------------------------------------------------------- training-overhead


def test_step_time_is_the_median_step_difference_after_warmup():
    from normlab.lab.claims.training_overhead import step_time_ms

    times = [0.5, 0.51, 0.52, 0.54, 0.55, 0.65]  # differences 10, 10, 20, 10, 100 ms
    assert step_time_ms(times, 0) == pytest.approx(10.0)
    assert step_time_ms(times, 2) == pytest.approx(20.0)  # 20, 10, 100 -> 20
    assert math.isnan(step_time_ms(times[:2], 1))


def test_kernel_arm_sets_and_restores_the_backend_variable(monkeypatch):
    from normlab.kernels.dispatch import ENV_VAR
    from normlab.lab.claims.training_overhead import ARMS, CLAIM, KERNELS, _config, _kernels

    assert ENV_VAR == "NORMLAB_KERNELS"
    monkeypatch.setenv(ENV_VAR, "auto")
    with _kernels("native"):
        import os
        assert os.environ[ENV_VAR] == "native"
    assert os.environ[ENV_VAR] == "auto"
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(RuntimeError):
        with _kernels("fast"):
            raise RuntimeError("unit failed")
    assert ENV_VAR not in os.environ
    # arms never share a stored unit: distinct seeds per (arm, round)
    cfg = CLAIM.configs["quick"]
    seeds = {_config(a, s, r, cfg).seed for a in ARMS for s in range(5) for r in range(cfg["rounds"])}
    assert len(seeds) == len(ARMS) * 5 * cfg["rounds"]
    assert KERNELS["bn"] == "fast" and KERNELS["bn-native"] == "native"


# ---------------------------------------------------------------------------- running-average-normalization


def test_running_average_claim_compares_the_naive_scheme_bn_and_mabn_at_a_small_batch():
    from normlab.lab.claims.running_average_normalization import ARMS, CLAIM, _config
    from normlab.nn import make_norm

    assert set(ARMS) == {"ran", "bn", "mabn"}
    assert {type(make_norm(a, 4)).__name__ for a in ARMS} == {"RunningAverageNorm", "BatchNorm",
                                                              "MovingAverageBatchNorm"}
    for level in ("quick", "full"):
        cfg = CLAIM.configs[level]
        assert cfg["batch_size"] <= 4
        assert all(_config(a, 0, cfg).batch_size == cfg["batch_size"] for a in ARMS)
    assert (CLAIM.rule.treatment, CLAIM.rule.control) == ("ran", "bn")


# ------------------------------------------------------------------------------------------ full-normalization


def test_full_normalization_claim_uses_few_class_batches_except_the_reference():
    from normlab.lab.claims.full_normalization import ARMS, CLAIM, _config

    cfg = CLAIM.configs["quick"]
    cs = {a: _config(a, 0, cfg) for a in ARMS}
    assert cs["fn"].norm == "fn" and cs["bn"].norm == "bn" and cs["bn-uniform"].norm == "bn"
    assert cs["fn"].batch_classes == cs["bn"].batch_classes == cfg["batch_classes"] >= 1
    assert cs["bn-uniform"].batch_classes == 0
    assert cfg["batch_size"] % cfg["batch_classes"] == 0


# ----------------------------------------------------------------------------------------------- alpha-dropout


def test_alpha_dropout_claim_builds_alpha_and_standard_dropout_before_bn():
    import torch
    from torch import nn

    from normlab.lab.claims.alpha_dropout import ARMS, CLAIM, _config
    from normlab.lab.models import build_model

    cfg = CLAIM.configs["tiny"]
    for arm, cls in zip(ARMS, (nn.AlphaDropout, nn.Dropout)):
        c = _config(arm, 0, cfg)
        m = build_model(c.model, (1, 28, 28), 10, norm=c.norm, **c.model_args)
        kinds = [type(x) for x in m]
        i = kinds.index(cls)
        assert type(m[i - 1]) is nn.Linear and "BatchNorm" in type(m[i + 1]).__name__  # Linear -> drop -> BN
        assert m(torch.randn(4, 1, 28, 28)).shape == (4, 10)
