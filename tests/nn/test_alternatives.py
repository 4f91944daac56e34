import numpy as np
import pytest
import torch

from normlab import reference as ref
from normlab.nn import GroupNorm, InstanceNorm, LayerNorm, RMSNorm


def _randomize(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    return layer


def test_layernorm_torch_mode_matches_reference():
    x = torch.randn(4, 5, 6, dtype=torch.float64) * 3 + 1
    ln = _randomize(LayerNorm((5, 6), dtype=torch.float64))
    want, _ = ref.layer_norm_forward(x.numpy(), ln.weight.detach().numpy(), ln.bias.detach().numpy(), 1e-5, 2)
    np.testing.assert_allclose(ln(x).detach().numpy(), want, rtol=1e-10, atol=1e-10)


def test_layernorm_feature_map_mode_is_groupnorm_1_and_matches_formula():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 - 1
    ln = _randomize(LayerNorm(4, axis=1, dtype=torch.float64))
    gn = GroupNorm(1, 4, dtype=torch.float64)
    gn.load_state_dict(ln.state_dict())
    xn = x.numpy()
    mu = xn.mean(axis=(1, 2, 3), keepdims=True)
    var = xn.var(axis=(1, 2, 3), keepdims=True)
    want = (xn - mu) / np.sqrt(var + 1e-5) * ln.weight.detach().numpy().reshape(1, 4, 1, 1) + ln.bias.detach().numpy().reshape(1, 4, 1, 1)
    np.testing.assert_allclose(ln(x).detach().numpy(), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ln(x), gn(x))


def test_layernorm_feature_map_mode_channels_last():
    x = torch.randn(3, 5, 5, 4, dtype=torch.float64)
    a = _randomize(LayerNorm(4, axis=-1, dtype=torch.float64))
    b = LayerNorm(4, axis=1, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def test_groupnorm_matches_reference_and_channels_last():
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64) * 4
    gn = _randomize(GroupNorm(3, 6, dtype=torch.float64))
    want, _ = ref.group_norm_forward(x.numpy(), 3, gn.weight.detach().numpy(), gn.bias.detach().numpy(), 1e-5)
    np.testing.assert_allclose(gn(x).detach().numpy(), want, rtol=1e-10, atol=1e-10)
    last = GroupNorm(3, 6, axis=-1, dtype=torch.float64)
    last.load_state_dict(gn.state_dict())
    torch.testing.assert_close(last(x.permute(0, 2, 3, 1)), gn(x).permute(0, 2, 3, 1))


def test_instancenorm_is_groupnorm_c_and_matches_reference():
    x = torch.randn(2, 4, 7, dtype=torch.float64) + 3
    inorm = _randomize(InstanceNorm(4, affine=True, dtype=torch.float64))
    want, _ = ref.instance_norm_forward(x.numpy(), inorm.weight.detach().numpy(), inorm.bias.detach().numpy(), 1e-5)
    np.testing.assert_allclose(inorm(x).detach().numpy(), want, rtol=1e-10, atol=1e-10)
    gn = GroupNorm(4, 4, dtype=torch.float64)
    gn.load_state_dict(inorm.state_dict())
    torch.testing.assert_close(inorm(x), gn(x))


def test_instancenorm_running_stats_match_torch_over_steps_then_eval():
    ours = InstanceNorm(3, affine=True, track_running_stats=True, momentum=0.3)
    theirs = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True, momentum=0.3)
    for _ in range(4):
        x = torch.randn(5, 3, 4, 4) * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_rmsnorm_both_modes_match_formula():
    x = torch.randn(3, 4, 5, dtype=torch.float64) + 0.5
    xn = x.numpy()
    tok = _randomize(RMSNorm(5, eps=1e-6, dtype=torch.float64))
    want = xn / np.sqrt((xn**2).mean(axis=-1, keepdims=True) + 1e-6) * tok.weight.detach().numpy()
    np.testing.assert_allclose(tok(x).detach().numpy(), want, rtol=1e-10)
    fm = _randomize(RMSNorm(4, eps=1e-6, axis=1, dtype=torch.float64))
    want = xn / np.sqrt((xn**2).mean(axis=(1, 2), keepdims=True) + 1e-6) * fm.weight.detach().numpy().reshape(1, 4, 1)
    np.testing.assert_allclose(fm(x).detach().numpy(), want, rtol=1e-10)
    assert fm.bias is None


@pytest.mark.parametrize(
    "layer, shape",
    [
        (LayerNorm(3, axis=1), (2, 3, 4)),
        (LayerNorm((3, 4)), (2, 3, 4)),
        (GroupNorm(1, 3), (2, 3, 4)),
        (InstanceNorm(3, affine=True), (2, 3, 4)),
        (RMSNorm(3, axis=1, eps=1e-6), (2, 3, 4)),
    ],
)
def test_gradcheck_float64(layer, shape):
    layer = _randomize(layer.double())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))


def test_state_dict_round_trip():
    a = _randomize(GroupNorm(2, 4))
    b = GroupNorm(2, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(a(x), b(x))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"GroupNorm: num_channels \(6\) must be divisible by num_groups \(4\)"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm\(2, 4\): expected 4 channels on axis 1"):
        GroupNorm(2, 4)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"InstanceNorm\(3\): expected an input of rank >= 3"):
        InstanceNorm(3)(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"LayerNorm\(4\): expected an input whose trailing dims are \(4,\)"):
        LayerNorm(4)(torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"RMSNorm\(4\): expected a floating-point input"):
        RMSNorm(4, axis=1)(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"LayerNorm: eps must be positive"):
        LayerNorm(4, eps=0.0)


def test_instance_norm_momentum_none_is_the_cumulative_average():
    torch.manual_seed(0)
    layer = InstanceNorm(2, momentum=None, track_running_stats=True).double()
    xs = [torch.randn(3, 2, 5, dtype=torch.float64) * (k + 1) + k for k in range(3)]
    for x in xs:
        layer(x)
    # torch's running update per batch: mean over instances of the instance mean / unbiased variance
    means = [x.mean(dim=2).mean(dim=0) for x in xs]
    varis = [x.var(dim=2, unbiased=True).mean(dim=0) for x in xs]
    torch.testing.assert_close(layer.running_mean, torch.stack(means).mean(dim=0))
    torch.testing.assert_close(layer.running_var, torch.stack(varis).mean(dim=0))
    assert int(layer.num_batches_tracked) == 3


@pytest.mark.parametrize("build, what", [
    (lambda v: InstanceNorm(v), "num_features"),
    (lambda v: GroupNorm(v, 4), "num_groups"),
    (lambda v: GroupNorm(1, v), "num_channels"),
])
@pytest.mark.parametrize("bad", [0, -2, 2.0, True, None])
def test_positive_int_arguments_share_one_check(build, what, bad):
    with pytest.raises(ValueError, match=rf"{what} must be a positive int, got {bad!r}"):
        build(bad)
