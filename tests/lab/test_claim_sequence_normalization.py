"""sequence-normalization (seed 002: for variable-length sequences, batch renorm, weight norm and layer norm are the
remedies): the padded variable-length task of ``seq_rnn``, what each arm's statistics contain (checked in float64),
and the rules decided on a tiny run of three seeds."""

from __future__ import annotations

import pytest
import torch
from _claim_rules import check_rules, check_tuning, run_tiny

from normlab.lab.claims.sequence_normalization import ARMS, CLAIM, REMEDIES, VAL, _config
from normlab.lab.models import build_model, resample_rows, sequence_lengths

SEEDS = (0, 1, 2)

# the rules are checked against scipy's Student t (see check_rules); the skew-robust values: test_verdict_skew.py
pytestmark = pytest.mark.usefixtures("student_t")


def _model(arm: str, **over):
    args = {**_config(arm, 0, CLAIM.configs["quick"]).model_args, **over}
    return build_model("seq_rnn", (1, 28, 28), 10, norm=arm, **args)


def test_every_remedy_the_article_names_is_a_confirmatory_rule_against_naive_bn():
    family = [r for r in (CLAIM.rule, *CLAIM.secondary) if r is CLAIM.rule or r.confirmatory]
    assert {(r.treatment, r.control) for r in family} == {(a, "bn") for a in REMEDIES}
    assert CLAIM.rule.treatment == "brn" and all(r.margin == 0.01 for r in family)


def test_lengths_are_a_fixed_function_of_each_example_and_padding_is_zero():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 14, 14)
    lengths = sequence_lengths(x, 4, 14)
    assert lengths.min() >= 4 and lengths.max() <= 14
    assert torch.equal(sequence_lengths(x[3:4], 4, 14), lengths[3:4])  # independent of the batch's other examples
    assert len(set(lengths.tolist())) > 3
    rows = x[:, 0]
    seq, mask = resample_rows(rows, lengths)
    assert torch.equal(mask.sum(1), lengths)
    assert seq[~mask].abs().max() == 0  # zero-padded
    for i in range(16):
        L = int(lengths[i])
        # step t of L reads position t (T-1)/(L-1) of the rows, linearly interpolated (float64 reference)
        pos = torch.arange(L, dtype=torch.float64) * 13 / (L - 1)
        lo = pos.floor().long().clamp(max=13)
        hi = (lo + 1).clamp(max=13)
        w = (pos - lo)[:, None]
        ref = rows[i].double()[lo] * (1 - w) + rows[i].double()[hi] * w
        assert torch.allclose(seq[i, :L].double(), ref, atol=1e-6)
    full, mask_full = resample_rows(rows, torch.full((16,), 14))
    assert torch.allclose(full, rows) and bool(mask_full.all())


def _norm_input_and_mask(arm: str, x: torch.Tensor):
    model = _model(arm).train()
    net = model[-1]
    seen = {}
    net.norm.register_forward_hook(lambda m, i, o: seen.setdefault("z", i[0]))
    model(x)
    lengths = sequence_lengths(model[0](x), net.min_len, net.max_len)
    mask = torch.arange(net.max_len)[None, :] < lengths[:, None]
    return net, seen, mask.reshape(-1)


def test_naive_bn_pools_padded_positions_and_masked_bn_excludes_them():
    torch.manual_seed(1)
    x = torch.rand(32, 1, 28, 28)
    for arm in ("bn", "masked"):
        net, seen, mask = _norm_input_and_mask(arm, x)
        z = seen["z"].double()
        assert bool((z[~mask] == 0).all())  # W_x (no bias) of a zero-padded step
        pooled = z if arm == "bn" else z[mask]
        mean, var = pooled.mean(0), pooled.var(0, unbiased=True)
        # the running statistics moved from (0, 1) by momentum 0.1 towards exactly these moments
        assert torch.allclose(net.norm.running_mean.double(), 0.1 * mean, atol=1e-5)
        assert torch.allclose(net.norm.running_var.double(), 0.9 + 0.1 * var, atol=1e-5)
    # padding pulls the naive mean towards 0 by the share of padded positions
    assert 0 < (~mask).double().mean() < 0.8


def test_layer_norm_weight_norm_and_no_norm_make_each_example_independent_of_its_batch():
    torch.manual_seed(2)
    x = torch.rand(8, 1, 28, 28)
    for arm in ("ln", "wn", "none"):
        torch.manual_seed(3)
        model = _model(arm).train()
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5), arm
    torch.manual_seed(3)
    model = _model("bn").train()
    assert not torch.allclose(model(x)[:1], model(x[:1]), atol=1e-3)  # BN's output depends on the batch
    wn = _model("wn")[-1]
    assert hasattr(wn.w_x, "parametrizations") and hasattr(wn.w_h, "parametrizations")


def test_seq_rnn_rejects_bad_options():
    with pytest.raises(ValueError, match="seq_rnn: norm"):
        build_model("seq_rnn", (1, 28, 28), 10, norm="gn:4")
    with pytest.raises(ValueError, match="min_len"):
        build_model("seq_rnn", (1, 28, 28), 10, norm="bn", min_len=1)
    with pytest.raises(ValueError, match="pool"):
        build_model("seq_rnn", (1, 28, 28), 10, norm="bn", pool=0)
    with pytest.raises(ValueError, match="image input_shape"):
        build_model("seq_rnn", (28, 28), 10, norm="bn")


def test_tiny_run_decides_every_rule(tmp_path):
    ctx, out = run_tiny(CLAIM, tmp_path, SEEDS)
    check_tuning(ctx, out, SEEDS)
    check_rules(CLAIM, out, SEEDS)
    assert set(out.metrics[VAL]) == set(ARMS)
    verdict = [c for c in ctx.seen if "tuning_fraction" not in c.data_args]
    brn = [c for c in verdict if c.norm == "brn"]
    assert brn and all(c.model_args["norm_kw"]["warmup_steps"] == c.steps // 10 for c in brn)
    assert any("batch renorm's warm-up" in n for n in out.notes)
