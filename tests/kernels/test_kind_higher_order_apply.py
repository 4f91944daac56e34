"""Kind: derivatives of order >= 2 through the kernels' apply and fused-training ops when their inputs depend on
each other (statistics computed from ``x``, a residual that is ``x``).

The ops' backward, asked for a graph (``create_graph=True``), recomputes the function from differentiable torch
operators and differentiates it. It used to ask ``autograd.grad`` for the gradient with respect to the saved
inputs themselves: when ``mean``/``var`` are functions of ``x``, that gradient already follows the path through
the statistics, and the outer backward added it again, so the first derivative under ``create_graph=True`` (and
every higher one) came out wrong on the fast path, silently. gradgradcheck cannot see that (it differentiates the
wrong first derivative consistently), so every test here compares derivatives of order 1 to 3 against the same
function written with plain torch operators, in float64.
"""

import pytest
import torch

from normlab import kernels

BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])
ACTS = ["identity", "relu", "leaky_relu"]
EPS = 1e-3
SLOPE = 0.2


def _act(z, act):
    if act == "relu":
        return torch.relu(z)
    if act == "leaky_relu":
        return torch.nn.functional.leaky_relu(z, SLOPE)
    return z


def _derivatives(f, inputs, seed=3):
    """First, second and third directional derivatives of the scalar ``f(*inputs)`` with respect to every input,
    by repeated backward with graphs (concatenated, float64)."""
    g = torch.Generator().manual_seed(seed)
    ins = [t.detach().clone().requires_grad_() for t in inputs]
    u = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ins]
    v = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ins]
    d1 = torch.autograd.grad(f(*ins), ins, create_graph=True)
    d2 = torch.autograd.grad(sum((a * b).sum() for a, b in zip(d1, u)), ins, create_graph=True)
    d3 = torch.autograd.grad(sum((a * b).sum() for a, b in zip(d2, v)), ins)
    return [torch.cat([t.detach().reshape(-1) for t in d]) for d in (d1, d2, d3)]


def _assert_orders_match(f, ref, inputs):
    got, want = _derivatives(f, inputs), _derivatives(ref, inputs)
    for order, (a, b) in enumerate(zip(got, want), 1):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, o=order: f"order {o}: {m}")


def _data(seed=0, shape=(6, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1
    c = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(shape[1], generator=g, dtype=torch.float64)
    return x, c, w, b


def _view(t, ndim):
    return t.reshape([1, -1] + [1] * (ndim - 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
def test_kind_higher_order_apply_statistics_from_x(backend, act):
    """kernels.normalize fed statistics computed from x (BatchLayerNorm, TimeStepBatchNorm, masked BN do this)."""
    x, c, w, b = _data()

    def f(t, w_, b_):
        st = kernels.moments(t, (0, 2))
        return (kernels.normalize(t, st.mean, st.var, w_, b_, EPS, act=act, negative_slope=SLOPE) ** 3 * c).sum()

    def ref(t, w_, b_):
        m = t.mean((0, 2), keepdim=True)
        var = ((t - m) ** 2).mean((0, 2), keepdim=True)
        return (_act((t - m) / torch.sqrt(var + EPS) * _view(w_, 3) + _view(b_, 3), act) ** 3 * c).sum()

    with kernels.backend(backend):
        _assert_orders_match(f, ref, (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
def test_kind_higher_order_apply_independent_inputs(backend, act):
    """Every argument of kernels.normalize a leaf of its own: gradcheck, gradgradcheck and orders 1-3."""
    x, c, w, b = _data(1, (4, 3, 2))
    g = torch.Generator().manual_seed(7)
    mean = torch.randn(3, generator=g, dtype=torch.float64)
    var = torch.rand(3, generator=g, dtype=torch.float64) + 0.5

    def y(t, m, v, w_, b_):
        return kernels.normalize(t, m, v, w_, b_, EPS, act=act, negative_slope=SLOPE)

    def ref(t, m, v, w_, b_):
        return (_act((t - _view(m, 3)) / torch.sqrt(_view(v, 3) + EPS) * _view(w_, 3) + _view(b_, 3), act) ** 3
                * c).sum()

    ins = tuple(t.clone().requires_grad_() for t in (x, mean, var, w, b))
    with kernels.backend(backend):
        assert torch.autograd.gradcheck(y, ins)
        assert torch.autograd.gradgradcheck(y, ins)
        _assert_orders_match(lambda *a: (y(*a) ** 3 * c).sum(), ref, (x, mean, var, w, b))


def _bn_ref(t, w_, b_, act, mask=None, residual=None):
    dims = (0, 2)
    if mask is None:
        m = t.mean(dims, keepdim=True)
        var = ((t - m) ** 2).mean(dims, keepdim=True)
    else:
        k = mask.unsqueeze(1).to(t.dtype)
        n = k.sum(dims, keepdim=True)
        m = (t * k).sum(dims, keepdim=True) / n
        var = (((t - m) * k) ** 2).sum(dims, keepdim=True) / n
    z = (t - m) / torch.sqrt(var + EPS) * _view(w_, 3) + _view(b_, 3)
    if residual is not None:
        z = z + residual
    y = _act(z, act)
    return y if mask is None else y * mask.unsqueeze(1).to(t.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ["identity", "relu"])
def test_kind_higher_order_apply_residual_is_the_input(backend, act):
    """The fused training op's residual epilogue with residual = x (``act(bn(x) + x)``): both inputs are x."""
    x, c, w, b = _data(2)

    def f(t, w_, b_):
        y, _ = kernels.batch_norm_train(t, w_, b_, EPS, act=act, residual=t)
        return (y ** 3 * c).sum()

    with kernels.backend(backend):
        _assert_orders_match(f, lambda t, w_, b_: (_bn_ref(t, w_, b_, act, residual=t) ** 3 * c).sum(), (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
def test_kind_higher_order_apply_masked_training(backend, act):
    x, c, w, b = _data(3)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[4:, 3:] = False

    def f(t, w_, b_):
        y, _ = kernels.batch_norm_train(t, w_, b_, EPS, act=act, negative_slope=SLOPE, mask=mask.unsqueeze(1))
        return (y ** 3 * c).sum()

    with kernels.backend(backend):
        _assert_orders_match(f, lambda t, w_, b_: (_bn_ref(t, w_, b_, act, mask=mask) ** 3 * c).sum(), (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_higher_order_apply_renorm_matches_clipped_constants(backend):
    """Batch renormalization with r, d clipped (far reference statistics): r and d are then constants of the
    function itself, so the plain formula with those constants is the reference at every order."""
    x, c, w, b = _data(4)
    ref_mean = torch.full((3,), 100.0, dtype=torch.float64)
    ref_std = torch.full((3,), 100.0, dtype=torch.float64)
    r_max, d_max = 1.5, 0.5

    def f(t, w_, b_):
        y, _ = kernels.batch_norm_train(t, w_, b_, EPS, renorm=(ref_mean, ref_std, r_max, d_max))
        return (y ** 3 * c).sum()

    def ref(t, w_, b_):
        xhat = _bn_ref(t, torch.ones_like(w_), torch.zeros_like(b_), "identity")
        return (((xhat * (1 / r_max) - d_max) * _view(w_, 3) + _view(b_, 3)) ** 3 * c).sum()

    with kernels.backend(backend):
        _assert_orders_match(f, ref, (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_higher_order_apply_first_order_same_with_and_without_graph(backend):
    """The first derivative must not depend on whether a graph of it is requested (the symptom of the fault)."""
    x, c, w, b = _data(5)

    def f(t):
        st = kernels.moments(t, (0, 2))
        return (kernels.normalize(t, st.mean, st.var, w, b, EPS) ** 3 * c).sum()

    with kernels.backend(backend):
        grads = []
        for graph in (False, True):
            t = x.clone().requires_grad_()
            grads.append(torch.autograd.grad(f(t), t, create_graph=graph)[0].detach())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
