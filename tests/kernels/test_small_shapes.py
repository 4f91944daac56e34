"""The native path for small tensors: torch's fused batch_norm, kept accurate by a shift when |mean| / std is large.

Checked against the float64 formula (normlab.reference), with gradcheck on the shifted branch, the large-mean
case in every layout, the running buffers after the in-kernel update (and after a redo), and the lean checks:
the same errors as before, raised before any buffer changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normlab import functional as F
from normlab import kernels
from normlab import nn as nlnn
from normlab import reference as ref
from normlab.kernels import dispatch

LAYOUTS = [  # (shape, channel axis, channels_last memory format)
    ((256, 16), 1, False),
    ((6, 5, 4, 3), 1, False),
    ((6, 5, 4, 3), 1, True),
    ((4, 7, 5), -1, False),  # (N, L, C) sequences
]


@pytest.fixture(autouse=True)
def native_backend():
    with kernels.backend("native"):
        yield


def _input(shape, axis, channels_last, offset, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[axis]
    view = [1] * len(shape)
    view[axis] = C
    # per-channel offsets around `offset` and spreads around 1, so channels differ
    spread = 0.5 + torch.rand(view, dtype=torch.float64, generator=g)
    x64 = torch.randn(shape, dtype=torch.float64, generator=g) * spread
    x64 = x64 + offset * (1 + 0.1 * torch.rand(view, dtype=torch.float64, generator=g))
    x = x64.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _ulp32(v: float) -> float:
    return float(np.spacing(np.float32(abs(v)))) if v else 0.0


def _assert_within_mean_rounding(y, y_ref, mean, scale):
    """Per channel, |y - y_ref| <= 0.6 ulp(mean) * scale + 1e-5: x - mean with the mean rounded to float32 is off
    by up to half an ulp of the mean, the rest is ordinary float32 rounding. (torch's own float32 kernel, which
    folds the mean into a shift, is ~0.9 ulp off at mean 1e4: this bound catches it.)"""
    bound = 0.6 * np.spacing(np.abs(mean).astype(np.float32)).astype(np.float64) * np.abs(scale) + 1e-5
    err = np.abs(y.detach().double().numpy() - y_ref)
    assert (err <= bound).all(), f"max error {err.max():.2e}, max excess {(err - bound).max():.2e}"


@pytest.mark.parametrize("shape,axis,cl", LAYOUTS)
@pytest.mark.parametrize("offset", [0.0, 3.0, 100.0, 1e4])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])  # the check: torch ops / NumPy
def test_training_forward_and_running_stats_match_float64(shape, axis, cl, offset, grad):
    x = _input(shape, axis, cl, offset)
    C = shape[axis]
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    rm0, rv0 = torch.randn(C) + offset, torch.rand(C) + 0.5
    rm, rv = rm0.clone(), rv0.clone()
    with torch.set_grad_enabled(grad):
        y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, axis=axis)
    y_ref, cache = ref.batch_norm_forward(x.double().numpy(), w.double().numpy(), b.double().numpy(), axis=axis)
    assert y.dtype == torch.float32 and y.stride() == x.stride()
    _assert_within_mean_rounding(y, y_ref, cache.mean, cache.inv_std * cache.gamma)
    n = x.numel() // C
    mean_ref, var_ref = cache.mean.reshape(-1), cache.var.reshape(-1) * n / (n - 1)
    np.testing.assert_allclose(rm.double().numpy(), ref.running_update(rm0.numpy(), mean_ref, 0.3),
                               rtol=2e-7, atol=2 * _ulp32(offset) + 1e-7)
    np.testing.assert_allclose(rv.double().numpy(), ref.running_update(rv0.numpy(), var_ref, 0.3), rtol=2e-5)


@pytest.mark.parametrize("shape,axis,cl", LAYOUTS)
@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
def test_training_statistics_returned_by_batch_norm_train(shape, axis, cl, offset, grad):
    x = _input(shape, axis, cl, offset)
    with torch.set_grad_enabled(grad):
        y, stats = kernels.batch_norm_train(x, None, None, 1e-5, axis=axis)
        y2, stats2 = kernels.batch_norm_train(x * 2, None, None, 1e-5, axis=axis)  # reuses the NumPy vectors
    assert torch.equal(stats2.mean, kernels.batch_norm_train(x * 2, None, None, 1e-5, axis=axis)[1].mean)
    _, cache = ref.batch_norm_forward(x.double().numpy(), axis=axis)
    np.testing.assert_allclose(stats.mean.double().numpy(), cache.mean.reshape(-1), rtol=0,
                               atol=_ulp32(1.1 * offset) + 1e-6)
    np.testing.assert_allclose(stats.var.double().numpy(), cache.var.reshape(-1), rtol=2e-5)
    assert stats.count == x.numel() // x.shape[axis]


@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("cl", [False, True])
def test_float32_gradients_match_reference(offset, cl):
    x = _input((8, 6, 3, 3), 1, cl, offset).requires_grad_(True)
    w = (torch.rand(6) + 0.5).requires_grad_(True)
    b = torch.randn(6).requires_grad_(True)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    y = F.batch_norm(x, torch.zeros(6), torch.ones(6), w, b, training=True)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    _, cache = ref.batch_norm_forward(x.detach().double().numpy(), w.detach().double().numpy(),
                                      b.detach().double().numpy())
    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy.double().numpy(), cache)
    atol = 2e-5 + 4 * _ulp32(1.1 * offset)
    np.testing.assert_allclose(dx.double().numpy(), dx_ref, atol=atol)
    np.testing.assert_allclose(dw.double().numpy(), dw_ref, atol=atol * 30)
    np.testing.assert_allclose(db.double().numpy(), db_ref, atol=1e-4)


GRADCHECK_LAYOUTS = [((12, 4), 1, False), ((4, 3, 3, 2), 1, False), ((4, 3, 3, 2), 1, True), ((3, 4, 3), -1, False)]


@pytest.mark.parametrize("shape,axis,cl", GRADCHECK_LAYOUTS)
def test_gradcheck_of_the_shifted_branch(monkeypatch, shape, axis, cl):
    """Shift invariance: BN(x - k) with k detached has BN(x)'s gradient. Forced on in float64 for gradcheck."""
    monkeypatch.setattr(kernels.native, "_SHIFT_DTYPES", (torch.float32, torch.float64))
    monkeypatch.setattr(kernels.native, "SHIFT_RATIO", -1.0)  # every call takes the redo on x - mean
    x = _input(shape, axis, cl, 50.0, dtype=torch.float64).requires_grad_(True)
    C = shape[axis]
    w = (torch.rand(C, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(C, dtype=torch.float64).requires_grad_(True)
    calls = []
    real = torch.native_batch_norm

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(torch, "native_batch_norm", counting)

    def f(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True, axis=axis)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert len(calls) > 0 and len(calls) % 2 == 0  # the redo ran (two operator calls per forward)
    y_ref, _ = ref.batch_norm_forward(x.detach().numpy(), w.detach().numpy(), b.detach().numpy(), axis=axis)
    np.testing.assert_allclose(f(x, w, b).detach().numpy(), y_ref, atol=1e-9)


def test_redo_corrects_running_buffers_exactly_in_float64(monkeypatch):
    """After a redo the buffers hold (1 - m) * running + m * batch statistics, as if the first call never ran."""
    monkeypatch.setattr(kernels.native, "_SHIFT_DTYPES", (torch.float32, torch.float64))
    monkeypatch.setattr(kernels.native, "SHIFT_RATIO", -1.0)
    x = _input((16, 5, 3, 3), 1, True, 20.0, dtype=torch.float64)
    rm, rv = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    nbt = torch.tensor(3)
    F.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=nbt)  # cumulative: weight 1/4
    _, cache = ref.batch_norm_forward(x.numpy())
    n = x.numel() // 5
    np.testing.assert_allclose(rm.numpy(), ref.running_update(rm0.numpy(), cache.mean.reshape(-1), 0.25), rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), ref.running_update(rv0.numpy(), cache.var.reshape(-1) * n / (n - 1), 0.25),
                               rtol=1e-10)
    assert int(nbt) == 4


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("offset", [0.0, 3.0, 1e4])
def test_eval_forward_matches_float64(cl, offset):
    x = _input((6, 5, 4, 3), 1, cl, offset)
    x64 = x.double()
    rm = x64.mean((0, 2, 3)).float()
    rv = x64.var((0, 2, 3)).float()
    w, b = torch.rand(5) + 0.5, torch.randn(5)
    y = F.batch_norm(x, rm, rv, w, b, training=False)
    y_ref = ref.batch_norm_inference(x64.numpy(), rm.numpy(), rv.numpy(), w.numpy(), b.numpy())
    assert y.stride() == x.stride()
    # the running mean is given in float32, so x - mean is exact: only ordinary float32 rounding remains
    assert np.abs(y.double().numpy() - y_ref).max() <= 1e-5


def test_eval_gradients_reach_weight_bias_and_statistics():
    """With statistics that need a gradient, the composite path runs (torch's operator has none for them)."""
    x = _input((6, 5, 4), 1, False, 2.0).requires_grad_(True)
    rm = torch.randn(5, requires_grad=True)
    rv = (torch.rand(5) + 0.5).requires_grad_(True)
    w, b = (torch.rand(5) + 0.5).requires_grad_(True), torch.randn(5).requires_grad_(True)
    dy = torch.randn(x.shape)
    got = torch.autograd.grad(kernels.normalize(x, rm, rv, w, b, 1e-5), (x, rm, rv, w, b), dy)
    x64, rm64, rv64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, rm, rv, w, b))
    v = lambda t: t.reshape(1, -1, 1)  # noqa: E731
    want = torch.autograd.grad((x64 - v(rm64)) / torch.sqrt(v(rv64) + 1e-5) * v(w64) + v(b64),
                               (x64, rm64, rv64, w64, b64), dy.double())
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5)
    # and the lean path (statistics as constants) gives the same input, weight and bias gradients
    lean = torch.autograd.grad(kernels.normalize(x, rm.detach(), rv.detach(), w, b, 1e-5), (x, w, b), dy)
    for a, e in zip(lean, (want[0], want[3], want[4])):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5)


def test_module_matches_torch_module_on_small_shapes():
    torch.manual_seed(0)
    for shape, ours, theirs in [((32, 12), nlnn.BatchNorm1d(12), torch.nn.BatchNorm1d(12)),
                                ((8, 6, 7, 7), nlnn.BatchNorm2d(6), torch.nn.BatchNorm2d(6))]:
        for momentum in (0.1, None):
            ours.momentum = theirs.momentum = momentum
            for _ in range(3):
                x = torch.randn(shape) * 2 + 1
                torch.testing.assert_close(ours(x), theirs(x))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))
            ours.eval(), theirs.eval()
            torch.testing.assert_close(ours(x), theirs(x))
            ours.train(), theirs.train()


BAD_CALLS = [  # (kwargs over a valid call, error type, message)
    ({"momentum": 1.5}, ValueError, r"batch_norm: momentum must lie in \[0, 1\]"),
    ({"running_mean": torch.zeros(4)}, ValueError, r"expected running_mean of shape \(5,\), got \(4,\)"),
    ({"weight": torch.ones(5, 1)}, ValueError, r"expected weight of shape \(5,\), got \(5, 1\)"),
    ({"running_var": None}, ValueError, r"give both running_mean and running_var, or neither"),
    ({"input": torch.randn(1, 5)}, ValueError, r"more than 1 value per channel when training"),
    ({"input": torch.ones(4, 5, dtype=torch.int32)}, TypeError, r"expected a floating-point input"),
    ({"input": torch.randn(4, 5), "axis": 2}, ValueError, r"channel axis 2 does not exist in a 2D input"),
    ({"momentum": None}, ValueError, r"momentum=None \(cumulative average\) needs num_batches_tracked"),
    ({"input": torch.tensor([[1.0, float("nan")] * 2 + [0.0]] * 3), "check_finite": True}, ValueError,
     r"input holds NaN or Inf \(check_finite=True\); first bad channel is 1"),
]


@pytest.mark.parametrize("change,error,match", BAD_CALLS)
def test_bad_calls_raise_and_leave_buffers_unchanged(change, error, match):
    rm, rv = torch.randn(5), torch.rand(5) + 0.5
    call = {"input": torch.randn(4, 5), "running_mean": rm, "running_var": rv, "weight": None, "momentum": 0.1}
    call.update(change)
    before = [t.clone() for t in (rm, rv)]
    with pytest.raises(error, match=match):
        F.batch_norm(call.pop("input"), call.pop("running_mean"), call.pop("running_var"), training=True, **call)
    for t, b in zip((rm, rv), before):
        assert torch.equal(t, b)


def test_module_bad_momentum_set_later_leaves_state_unchanged():
    layer = nlnn.BatchNorm1d(5)
    layer(torch.randn(4, 5))
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.momentum = 2.0
    with pytest.raises(ValueError, match=r"BatchNorm1d\(5\): momentum must lie in \[0, 1\]"):
        layer(torch.randn(4, 5))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_environment_setting_is_read_at_each_call(monkeypatch):
    dispatch.set_backend(None)
    try:
        monkeypatch.setenv(dispatch.ENV_VAR, "native")
        assert kernels.get_backend() == "native"
        monkeypatch.setenv(dispatch.ENV_VAR, " FAST ")
        assert kernels.get_backend() == "fast"
        monkeypatch.setenv(dispatch.ENV_VAR, "quick")
        for _ in range(2):  # a bad value raises every time, not only when first seen
            with pytest.raises(ValueError, match=r"NORMLAB_KERNELS: expected one of auto, fast, native, got 'quick'"):
                kernels.get_backend()
        monkeypatch.delenv(dispatch.ENV_VAR)
        assert kernels.get_backend() == "auto"
    finally:
        dispatch.set_backend("native")


def test_eval_verdict_is_cached_until_the_statistics_change(monkeypatch):
    layer = nlnn.BatchNorm2d(3).eval()
    x = _input((4, 3, 2, 2), 1, False, 0.0)
    checks = []
    real = torch.addcmul

    def counting(*args, **kwargs):
        checks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "addcmul", counting)
    layer(x), layer(x)
    assert len(checks) == 1  # the second call reused the verdict
    x_big = x + 1e4
    with torch.no_grad():
        layer.running_mean.copy_(x_big.double().mean((0, 2, 3)).float())  # bumps the version: checked again
    y = layer(x_big)
    assert len(checks) == 2
    y_ref = ref.batch_norm_inference(x_big.double().numpy(), layer.running_mean.numpy(), layer.running_var.numpy(),
                                     layer.weight.detach().numpy(), layer.bias.detach().numpy())
    assert np.abs(y.detach().double().numpy() - y_ref).max() <= 1e-5  # the shift ran: exact x - mean
    layer.running_mean = torch.zeros(3)  # a new tensor: checked again
    layer(x)
    assert len(checks) == 3
