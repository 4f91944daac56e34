import numpy as np
import pytest
import torch

from normlab import reference as ref
from normlab.nn import BatchNorm, BatchNorm2d, GhostBatchNorm, MaskedBatchNorm, NormAct


def _pair(activation, **kw):
    torch.manual_seed(3)
    std = NormAct(BatchNorm2d(4, momentum=0.3), activation=activation, **kw)
    with torch.no_grad():
        std.norm.weight.copy_(torch.tensor([1.5, -0.7, 0.3, 2.0]))
        std.norm.bias.copy_(torch.tensor([0.1, -0.4, 0.5, 0.0]))
    inp = NormAct(BatchNorm2d(4, momentum=0.3), activation=activation, inplace_abn=True, **kw)
    inp.load_state_dict(std.state_dict())
    return std, inp


@pytest.mark.parametrize("activation, kw", [("leaky_relu", {"negative_slope": 0.1}), ("elu", {"alpha": 0.8}),
                                            ("identity", {})])
def test_inplace_matches_standard_mode_over_steps_and_eval(activation, kw):
    std, inp = _pair(activation, **kw)
    for step in range(3):
        x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 + step
        std, inp = std.double(), inp.double()
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        ya = std(xa)
        hb = xb * 1.0  # a non-leaf the in-place layer may overwrite
        yb = inp(hb)
        assert yb.data_ptr() == hb.data_ptr()  # the output lives in the input's storage
        torch.testing.assert_close(yb, ya)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xb.grad, xa.grad)
        torch.testing.assert_close(inp.norm.weight.grad, std.norm.weight.grad)
        torch.testing.assert_close(inp.norm.bias.grad, std.norm.bias.grad)
        std.zero_grad(), inp.zero_grad()
    torch.testing.assert_close(inp.norm.running_var, std.norm.running_var)
    std.eval(), inp.eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = std(xa), inp(xb * 1.0)
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad)


def test_standard_mode_matches_reference_then_activation():
    layer = NormAct("bn", 3, activation="leaky_relu", negative_slope=0.2)
    x = torch.randn(6, 3, dtype=torch.float64)
    layer = layer.double()
    want, _ = ref.batch_norm_forward(x.numpy())
    want = np.where(want < 0, 0.2 * want, want)
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-10)
    relu = NormAct("bn", 3)
    assert bool((relu(torch.randn(5, 3)) >= 0).all())


@pytest.mark.parametrize("activation", ["leaky_relu", "elu"])
def test_inplace_gradcheck_float64(activation):
    layer = NormAct(BatchNorm(3, dtype=torch.float64), activation=activation, inplace_abn=True)
    with torch.no_grad():
        layer.norm.weight.copy_(torch.tensor([1.3, -0.6, 0.8], dtype=torch.float64))
        layer.norm.bias.copy_(torch.tensor([0.2, 0.1, -0.3], dtype=torch.float64))
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    params = (layer.norm.weight, layer.norm.bias)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x.clone()), (x, *params))
    layer.eval()
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x.clone()), (x, *params))


def test_extra_forward_arguments_reach_the_norm():
    layer = NormAct(MaskedBatchNorm(2), activation="relu")
    x = torch.randn(3, 2, 4)
    mask = torch.rand(3, 4) > 0.2
    mask[:, 0] = True
    torch.testing.assert_close(layer(x, mask=mask), torch.relu(MaskedBatchNorm(2)(x, mask=mask)))


def test_rules_of_inplace_mode():
    with pytest.raises(ValueError, match=r"ReLU sends all negative values to 0 and cannot be inverted"):
        NormAct("bn", 4, activation="relu", inplace_abn=True)
    with pytest.raises(ValueError, match=r"needs negative_slope > 0, got 0.0"):
        NormAct("bn", 4, activation="leaky_relu", negative_slope=0.0, inplace_abn=True)
    with pytest.raises(ValueError, match=r"supports plain BatchNorm layers, got GhostBatchNorm"):
        NormAct(GhostBatchNorm(4, 2), activation="elu", inplace_abn=True)
    with pytest.raises(ValueError, match=r"activation must be one of"):
        NormAct("bn", 4, activation="gelu")
    with pytest.raises(ValueError, match=r"needs num_features"):
        NormAct("bn")


def test_inplace_tiny_gamma_is_floored_not_divided_by_zero():
    layer = NormAct(BatchNorm(2), activation="leaky_relu", inplace_abn=True)
    with torch.no_grad():
        layer.norm.weight.copy_(torch.tensor([0.0, 1.0]))
    x = torch.randn(5, 2, requires_grad=True)
    y = layer(x * 1.0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.norm.weight.grad).all()


@pytest.mark.parametrize("view", [False, True])
def test_inplace_leaf_input_raises_before_running_stats_move(view):
    layer = NormAct(BatchNorm(3), activation="leaky_relu", inplace_abn=True)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    leaf = torch.randn(4, 3, 2, requires_grad=True)
    x = leaf[:, :, :1] if view else leaf
    with pytest.raises(ValueError,
                       match=r"NormAct\(inplace_abn=True\): got a (view of a )?leaf tensor that requires grad"):
        layer(x)
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    with torch.no_grad():  # without autograd the leaf may be overwritten, as torch allows
        layer(leaf)
    assert int(layer.norm.num_batches_tracked) == 1
