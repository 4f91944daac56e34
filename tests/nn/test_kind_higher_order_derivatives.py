"""Issue 14, item 5 (kind: derivatives of order > 2). torch's native batch_norm (and instance_norm, layer_norm,
which run on the same kind of kernel) treat their saved statistics as constants in the double backward, so the
third derivative of a training-mode output is wrong. normlab differentiates a composite of differentiable
operators whenever a graph of the backward is requested (create_graph=True), on both kernel paths, so every order
is exact: checked against central finite differences of the (exact) second derivative, in float64."""

import pytest
import torch

from normlab import kernels
from normlab.nn import BatchNorm1d, BatchNorm2d, GroupNorm, InstanceNorm1d, LayerNorm, NormAct, make_norm

BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])


def _directions(shape, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4)]


def _second(f, x, u, v, create_graph):
    """D^2 f(x)[u, v] by double backward."""
    x = x if x.requires_grad else x.clone().requires_grad_()
    g1, = torch.autograd.grad(f(x), x, create_graph=True)
    g2, = torch.autograd.grad((g1 * u).sum(), x, create_graph=create_graph)
    return (g2 * v).sum(), x


def _third_by_autograd(f, x, u, v, w):
    d2, xx = _second(f, x.clone().requires_grad_(), u, v, create_graph=True)
    g3, = torch.autograd.grad(d2, xx)
    return float((g3 * w).sum())


def _third_by_differences(f, x, u, v, w, h=1e-4):
    up = float(_second(f, x + h * w, u, v, create_graph=False)[0])
    down = float(_second(f, x - h * w, u, v, create_graph=False)[0])
    return (up - down) / (2 * h)


def _check_third(layer_fn, x):
    c, u, v, w = _directions(x.shape)

    def f(t):
        return (layer_fn(t) ** 3 * c).sum()

    got = _third_by_autograd(f, x, u, v, w)
    want = _third_by_differences(f, x, u, v, w)
    assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)
    return got


def _bn_composite(x, w, b, eps=1e-5):
    dims = (0,) + tuple(range(2, x.ndim))
    shape = [1, -1] + [1] * (x.ndim - 2)
    m = x.mean(dims, keepdim=True)
    v = ((x - m) ** 2).mean(dims, keepdim=True)
    return (x - m) / torch.sqrt(v + eps) * w.reshape(shape) + b.reshape(shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (3, 3, 2, 2)])
def test_kind_higher_order_derivatives_training_bn_third_order_is_exact(backend, shape):
    layer = (BatchNorm1d(3) if len(shape) < 4 else BatchNorm2d(3)).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    x = torch.randn(*shape, dtype=torch.float64) * 2 + 1
    with kernels.backend(backend):
        got = _check_third(layer, x)
    # and the float64 formula written elementwise
    c, u, v, w = _directions(x.shape)
    formula = _third_by_autograd(lambda t: (_bn_composite(t, layer.weight, layer.bias) ** 3 * c).sum(), x, u, v, w)
    assert got == pytest.approx(formula, rel=1e-9, abs=1e-9)


def test_kind_higher_order_derivatives_torch_native_op_is_wrong_at_third_order():
    """Why normlab cannot route a create_graph backward through torch's op: its third derivative differs from
    finite differences (if torch fixes it, this documents that the composite is no longer needed)."""
    x = torch.randn(4, 3, dtype=torch.float64) * 2 + 1
    w = torch.rand(3, dtype=torch.float64) + 0.5
    c, u, v, d = _directions(x.shape)

    def f(t):
        return (torch.nn.functional.batch_norm(t, None, None, w, None, True) ** 3 * c).sum()

    got, want = _third_by_autograd(f, x, u, v, d), _third_by_differences(f, x, u, v, d)
    assert abs(got - want) > 1e-3 * max(1.0, abs(want))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("spec, kw", [
    ("bn", {}), ("bn", {"track_running_stats": False}), ("bn", {"axis": -1}), ("brn", {"r_max": 1.5, "d_max": 0.5,
     "warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0}), ("gbn:2", {}), ("gbn:3", {}), ("bln", {}),
    ("masked", {}), ("tbn:5", {"axis": 1, "time_axis": 2}), ("gn:3", {}), ("ln", {}), ("in", {}),
    ("in", {"track_running_stats": True}), ("rms", {}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}" for k in v) or "default")
def test_kind_higher_order_derivatives_every_layer(spec, kw, training, backend):
    torch.manual_seed(2)
    layer = make_norm(spec, 3, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
        if getattr(layer, "running_var", None) is not None:
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
        if spec == "brn":
            # r and d are constants of BRN's gradient by definition (Ioffe 2017): far running statistics keep them
            # clipped at r_max, d_max, where the function itself holds them constant and differences agree
            layer.running_mean.fill_(100.0)
            layer.running_var.fill_(1e4)
    layer.train(training)
    x = torch.randn(6, 3, 5, dtype=torch.float64) * 2 + 1
    if kw.get("axis") == -1:
        x = x.transpose(1, 2).contiguous()
    with kernels.backend(backend):
        if spec == "masked":
            mask = torch.ones(6, 5, dtype=torch.bool)
            mask[4:, 3:] = False
            _check_third(lambda t: layer(t, mask=mask), x)
        else:
            _check_third(layer, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, shape", [
    (lambda: GroupNorm(3, 6), (2, 6, 4)),
    (lambda: LayerNorm(5), (2, 3, 5)),
    (lambda: InstanceNorm1d(3, affine=True), (2, 3, 5)),
    (lambda: NormAct(BatchNorm1d(3), activation="leaky_relu"), (6, 3, 5)),
])
def test_kind_higher_order_derivatives_torch_named_layers(build, shape, backend):
    layer = build().double()
    x = torch.randn(*shape, dtype=torch.float64) + 0.5
    with kernels.backend(backend):
        _check_third(layer, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_higher_order_derivatives_gradgradcheck_fast_and_native(backend):
    layer = BatchNorm1d(3).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    with kernels.backend(backend):
        assert torch.autograd.gradgradcheck(lambda t, w, b: torch.nn.functional.gelu(layer(t)), (x, layer.weight, layer.bias))


@pytest.mark.parametrize("build, match", [
    (lambda: make_norm("mabn", 3), r"MovingAverageBatchNorm: .*double backward \(create_graph=True\) is not supported"),
    (lambda: NormAct(BatchNorm1d(3), activation="leaky_relu", inplace_abn=True),
     r"NormAct\(inplace_abn=True\): .*double backward \(create_graph=True\) is not supported"),
])
def test_kind_higher_order_derivatives_layers_without_them_raise_clearly(build, match):
    layer = build().double()
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    y = layer(x * 1.0)
    with pytest.raises(RuntimeError, match=match):
        torch.autograd.grad((y ** 3).sum(), x, create_graph=True)
