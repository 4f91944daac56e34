"""normlab.tools.convert_norm: specs from make_norm, carried-over parameters and statistics, equal eval outputs
where the kinds agree, and errors that leave the model unchanged. Also folding and recalibrating the variants."""

import numpy as np
import pytest
import torch
from torch import nn

from normlab import nn as nlnn
from normlab import reference as ref
from normlab.tools import convert_norm, fold_batchnorm, plan_fold, recalibrate


def trained_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3, momentum=0.05), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nlnn.BatchNorm2d(8),
    ).to(dtype)
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 6, 6, dtype=dtype) * 2 + 1)
    return model.eval()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("spec", ["bn", "brn", "gbn:4", "mabn"])
def test_batch_norm_kinds_carry_statistics_affine_and_options(spec):
    model = trained_model()
    converted = convert_norm(model, spec)
    assert isinstance(model[1], nn.BatchNorm2d)  # the original is untouched
    for i in (1, 4):
        old, new = model[i], converted[i]
        assert isinstance(new, nlnn.BatchNormBase) and not new.training
        assert torch.equal(new.weight, old.weight) and torch.equal(new.bias, old.bias)
        if i == 1:  # eps and momentum set by the user: carried over
            assert new.eps == old.eps and new.momentum == old.momentum
        else:  # left at BatchNorm's defaults: the new kind's own defaults (test_kind_convert_carried_options.py)
            default = nlnn.make_norm(spec, 8)
            assert new.eps == default.eps and new.momentum == default.momentum
        if spec != "mabn":
            assert torch.equal(new.running_var, old.running_var)
        else:  # MABN keeps the uncentred second moment E[x^2] = var + mean^2 and a zero mean
            torch.testing.assert_close(new.running_var, old.running_var + old.running_mean**2)
            assert torch.equal(new.running_mean, torch.zeros_like(old.running_mean))
    assert converted[1].eps == 1e-3 and converted[1].momentum == 0.05
    if spec != "mabn":  # in eval mode BN, batch renorm and ghost BN are the same running-statistics map
        x = torch.randn(4, 3, 6, 6)
        with torch.no_grad():
            torch.testing.assert_close(converted(x), model(x))


def test_bn_to_group_norm_keeps_affine_and_matches_reference():
    model = trained_model(torch.float64)
    converted = convert_norm(model, "gn:4")
    gn = converted[4]
    assert isinstance(gn, nlnn.GroupNorm) and gn.num_groups == 4 and gn.weight.dtype == torch.float64
    assert torch.equal(gn.weight, model[4].weight) and torch.equal(gn.bias, model[4].bias)
    assert gn.eps == model[4].eps
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        z = converted[3](converted[2](converted[1](converted[0](x))))
        got = converted[4](z).numpy()
    want, _ = ref.group_norm_forward(z.numpy(), 4, gn.weight.detach().numpy(), gn.bias.detach().numpy(), eps=gn.eps)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_other_specs_kw_override_where_and_identity():
    model = trained_model()
    assert all(isinstance(converted[i], nn.Identity) for converted in [convert_norm(model, "none")] for i in (1, 4))
    converted = convert_norm(model, "bn", eps=1e-2)
    assert converted[1].eps == 1e-2 and converted[4].eps == 1e-2
    seq = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 6), nlnn.BatchNorm(6, axis=-1))
    with torch.no_grad():
        seq[1].weight.uniform_(0.5, 2)
    rms = convert_norm(seq, "rms", where=lambda name, m: isinstance(m, nn.LayerNorm))
    assert isinstance(rms[1], nlnn.RMSNorm) and isinstance(rms[3], nlnn.BatchNorm)
    assert torch.equal(rms[1].weight, seq[1].weight)
    ln = convert_norm(seq, "ln")
    assert isinstance(ln[3], nlnn.LayerNorm) and ln[3].axis == -1  # the channel axis is carried over


def test_shared_layer_becomes_one_shared_layer():
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(3, 3), bn, nn.Linear(3, 3), bn)
    converted = convert_norm(model, "brn")
    assert converted[1] is converted[3] and isinstance(converted[1], nlnn.BatchRenorm)
    assert isinstance(convert_norm(nn.BatchNorm1d(3), "gn:1"), nlnn.GroupNorm)  # a bare norm layer


def test_errors_leave_the_model_unchanged():
    model = trained_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"make_norm: unknown spec 'group'; valid specs: bn, brn"):
        convert_norm(model, "group", inplace=True)
    with pytest.raises(ValueError, match="GroupNorm"):  # 8 channels do not split into 3 groups
        convert_norm(model, "gn:3", inplace=True)
    after = snapshot(model)
    assert isinstance(model[1], nn.BatchNorm2d) and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="convert_norm: no normalization layer of the model matched"):
        convert_norm(nn.Sequential(nn.Linear(2, 2)), "gn:1")
    with pytest.raises(ValueError, match="cannot tell the channel count"):
        convert_norm(nn.Sequential(nn.LayerNorm((4, 4))), "bn", where=lambda n, m: True)


def test_variants_fold_or_are_refused():
    model = convert_norm(trained_model(), "brn")
    model.train()
    for _ in range(2):
        model(torch.randn(8, 3, 6, 6))
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    reasons = dict(plan_fold(convert_norm(trained_model(), "bln")).skipped)
    assert "not the running-statistics affine map (BatchLayerNorm)" in reasons["1"]


def test_recalibrate_mabn_sets_the_second_moment():
    norm = nlnn.MovingAverageBatchNorm(3)
    data = torch.randn(40, 3, dtype=torch.float64) * 2 + 1.5
    norm = norm.double()
    recalibrate(norm, data.split(10), progress=False)
    torch.testing.assert_close(norm.running_var, (data**2).mean(0))
    assert torch.equal(norm.running_mean, torch.zeros(3, dtype=torch.float64))
    assert int(norm.num_batches_tracked) == 0 and torch.equal(norm.x2_history, torch.zeros_like(norm.x2_history))


def test_sync_conversion_keeps_state_and_refuses_mabn():
    model = trained_model()
    converted = convert_norm(model, "sync")
    for i in (1, 4):
        assert isinstance(converted[i], nlnn.BatchNormBase) and converted[i].sync_statistics
        for k, v in model[i].state_dict().items():
            assert torch.equal(converted[i].state_dict()[k], v), k
    assert isinstance(model[1], nn.BatchNorm2d) and not model[4].sync_statistics  # original untouched
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():  # eval mode needs no process group
        torch.testing.assert_close(converted(x), model(x))
    with pytest.raises(ValueError, match="MovingAverageBatchNorm.*cannot be synchronized"):
        convert_norm(convert_norm(model, "mabn"), "sync", inplace=True)
    with pytest.raises(ValueError, match=r"spec 'sync' takes only process_group=, got \['eps'\]"):
        convert_norm(model, "sync", eps=1e-3)


@pytest.mark.parametrize("unbiased", [True, False])
def test_bn_to_mabn_carries_second_moment_not_mean_and_var(unbiased):
    torch.manual_seed(2)
    bn = nlnn.BatchNorm1d(3, momentum=None, running_var_unbiased=unbiased).double()
    batches = [torch.randn(6, 3, dtype=torch.float64) * 2 + 3 for _ in range(4)]
    for b in batches:
        bn(b)
    mabn = convert_norm(bn.eval(), "mabn")
    assert isinstance(mabn, nlnn.MovingAverageBatchNorm) and not mabn.training
    # momentum=None: the running statistics are the average of the batch statistics, in float64 from scratch
    x = np.stack([b.numpy() for b in batches])
    mean = x.mean(axis=1).mean(axis=0)
    var = x.var(axis=1, ddof=1 if unbiased else 0).mean(axis=0)
    np.testing.assert_allclose(mabn.running_var.numpy(), var + mean**2, rtol=1e-12)
    np.testing.assert_allclose(mabn.running_mean.numpy(), 0.0)
    assert int(mabn.num_batches_tracked) == 0  # its moving-average histories are empty: warm-up runs again
    # eval: MABN divides by sqrt(E[x^2] + eps) without centring
    z = torch.randn(5, 3, dtype=torch.float64)
    want = z.numpy() / np.sqrt(var + mean**2 + mabn.eps) * bn.weight.detach().numpy() + bn.bias.detach().numpy()
    np.testing.assert_allclose(mabn(z).detach().numpy(), want, rtol=1e-12)


# -- kind: a tool's error names the module path and the cause, and the model is unchanged ---------------------------
def ten_channel_model():
    return nn.Sequential(
        nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16),
        nn.Sequential(nn.Conv2d(16, 10, 1), nn.BatchNorm2d(10)),
        nlnn.MovingAverageBatchNorm(10),
    )


@pytest.mark.parametrize("spec,kw,error,message", [
    ("gn:32", {}, ValueError, r"convert_norm: cannot convert '1' \(BatchNorm2d, 16 channels\) to 'gn:32': GroupNorm: "
                              r"num_channels \(16\) must be divisible by num_groups \(32\)"),
    ("gn:8", {}, ValueError, r"convert_norm: cannot convert '2.1' \(BatchNorm2d, 10 channels\) to 'gn:8': .*divisible"),
    ("bn", {"bogus": 1}, TypeError, r"convert_norm: cannot convert '1' \(BatchNorm2d, 16 channels\) to 'bn': .*'bogus'"),
    ("tbn", {}, ValueError, r"convert_norm: cannot convert '1' \(BatchNorm2d, 16 channels\) to 'tbn': .*T_max"),
    ("sync", {}, ValueError, r"convert_norm: cannot synchronize '3' \(MovingAverageBatchNorm\): .*per process"),
])
def test_kind_tool_error_names_module(spec, kw, error, message):
    model = ten_channel_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message + ".*model unchanged"):
        convert_norm(model, spec, inplace=True, **kw)
    assert [type(m).__name__ for m in model] == ["Conv2d", "BatchNorm2d", "Sequential", "MovingAverageBatchNorm"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_kind_tool_error_names_module_when_the_model_is_the_norm():
    with pytest.raises(ValueError, match=r"convert_norm: cannot convert '<model>' \(BatchNorm1d, 10 channels\) to 'gn:32'"):
        convert_norm(nn.BatchNorm1d(10), "gn:32")
