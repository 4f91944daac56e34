"""The kernels against the float64 NumPy reference and torch: values, gradients, layouts, dtypes, hard cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normlab import _stats, kernels, reference
from normlab.kernels import ops

pytestmark = pytest.mark.skipif(not kernels.numba_available(), reason="numba (the kernels extra) is not installed")

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _input(shape, dtype, layout="contiguous", seed=0):
    """A non-trivial input: per-channel offsets and scales, in the requested memory layout."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 1.7 + 0.6
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    elif layout == "transposed":  # non-contiguous: same logical tensor, swapped memory order of the last two dims
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "sliced":  # non-contiguous: every other sample of a larger batch
        x = torch.cat([x, x], dim=0).reshape((2,) + tuple(shape)).transpose(0, 1).reshape((-1,) + tuple(shape[1:]))[::2]
    return x.to(dtype)


def _params(C, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    return w, b


CASES = [
    ((5, 3, 7, 9), 1, "contiguous"),  # odd sizes, NCHW
    ((4, 6, 5, 3), 1, "channels_last"),
    ((3, 4, 5, 6), 1, "transposed"),
    ((6, 3, 4, 5), 1, "sliced"),
    ((7, 5), 1, "contiguous"),  # (N, C)
    ((3, 5, 11), 1, "contiguous"),  # (N, C, L)
    ((3, 11, 5), -1, "contiguous"),  # (N, L, C), channel last
    ((2, 3, 3, 4, 5), 1, "channels_last"),  # NDHWC
    ((2, 3, 1, 1), 1, "contiguous"),  # trailing singleton dims
    ((2, 5000, 3), 1, "contiguous"),  # many channels
    ((2, 2, 9000), 1, "contiguous"),  # long rows: several chunks per row (statistics and backward sums)
    ((600, 3), 1, "contiguous"),  # (M, C) with few channels: several row blocks per channel
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,axis,layout", CASES)
def test_train_forward_backward_matches_reference(shape, axis, layout, dtype):
    x = _input(shape, dtype, layout).requires_grad_()
    C = shape[axis]
    w, b = (t.requires_grad_() for t in _params(C, dtype))
    with kernels.backend("fast"):
        y, stats = kernels.batch_norm_train(x, w, b, 1e-5, axis=axis)
    dy = torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(shape).to(dtype)
    y.backward(dy)

    y_ref, cache = reference.batch_norm_forward(x.detach().double().numpy(), w.detach().double().numpy(),
                                                b.detach().double().numpy(), 1e-5, axis=axis)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy.double().numpy(), cache)
    tol = TOL[dtype]
    np.testing.assert_allclose(y.detach().double().numpy(), y_ref, atol=tol * 10, rtol=tol)
    np.testing.assert_allclose(stats.mean.double().numpy(), cache.mean.reshape(-1), atol=tol, rtol=tol)
    np.testing.assert_allclose(stats.var.double().numpy(), cache.var.reshape(-1), atol=tol, rtol=tol)
    assert stats.count == x.numel() // C
    np.testing.assert_allclose(x.grad.double().numpy(), dx_ref, atol=tol * 10, rtol=tol * 10)
    np.testing.assert_allclose(w.grad.double().numpy(), dw_ref, atol=tol * 100, rtol=tol * 10)
    np.testing.assert_allclose(b.grad.double().numpy(), db_ref, atol=tol * 100, rtol=tol * 10)
    assert y.dtype == dtype and y.shape == x.shape


@pytest.mark.parametrize("shape,axis,layout", [CASES[0], CASES[1], CASES[6]])
def test_train_matches_torch_float32(shape, axis, layout):
    x = _input(shape, torch.float32, layout)
    xt = x.movedim(axis, 1) if axis != 1 else x
    w, b = _params(shape[axis], torch.float32)
    with kernels.backend("fast"):
        y, _ = kernels.batch_norm_train(x, w, b, 1e-3, axis=axis)
    y_torch = torch.nn.functional.batch_norm(xt, None, None, w, b, training=True, eps=1e-3)
    torch.testing.assert_close(y.movedim(axis, 1) if axis != 1 else y, y_torch, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_mean_is_exact_centred(layout):
    """mean 1e4, std 1 in float32: E[x^2] - E[x]^2 would lose every digit; centred statistics keep ~1e-4."""
    x64 = _input((8, 4, 6, 5), torch.float64, layout, seed=3) / 1.7 + 1e4
    x = x64.float()
    with kernels.backend("fast"):
        y, stats = kernels.batch_norm_train(x, None, None, 1e-5)
    y_ref, cache = reference.batch_norm_forward(x.double().numpy(), eps=1e-5)  # float64 of the same float32 input
    assert np.abs(y.double().numpy() - y_ref).max() < 1e-3
    np.testing.assert_allclose(stats.var.double().numpy(), cache.var.reshape(-1), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ghost_groups_match_reference_per_group(layout, dtype):
    x = _input((6, 3, 4, 5), dtype, layout).requires_grad_()
    w, b = (t.requires_grad_() for t in _params(3, dtype))
    with kernels.backend("fast"):
        y, stats = kernels.batch_norm_train(x, w, b, 1e-5, groups=3)
    dy = torch.sin(torch.arange(y.numel(), dtype=dtype)).reshape(y.shape)
    y.backward(dy)
    tol = TOL[dtype] * 10
    dw_sum = np.zeros(3)
    for g in range(3):
        sl = slice(2 * g, 2 * g + 2)
        y_ref, cache = reference.batch_norm_forward(x.detach()[sl].double().numpy(), w.detach().double().numpy(),
                                                    b.detach().double().numpy(), 1e-5)
        dx_ref, dw_ref, _ = reference.batch_norm_backward(dy[sl].double().numpy(), cache)
        np.testing.assert_allclose(y.detach()[sl].double().numpy(), y_ref, atol=tol, rtol=tol)
        np.testing.assert_allclose(stats.mean[g].double().numpy(), cache.mean.reshape(-1), atol=tol)
        np.testing.assert_allclose(x.grad[sl].double().numpy(), dx_ref, atol=tol, rtol=tol)
        dw_sum += dw_ref
    np.testing.assert_allclose(w.grad.double().numpy(), dw_sum, atol=tol * 10, rtol=tol)
    assert stats.count == 2 * 4 * 5


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", ["identity", "relu"])
def test_fast_and_native_paths_agree(layout, act):
    x = _input((4, 3, 5, 6), torch.float64, layout).requires_grad_()
    w, b = (t.requires_grad_() for t in _params(3, torch.float64))
    out = {}
    for name in ("fast", "native"):
        with kernels.backend(name):
            y, stats = kernels.batch_norm_train(x, w, b, 1e-5, groups=2, act=act)
        grads = torch.autograd.grad(y, (x, w, b), torch.cos(y))
        out[name] = (y, stats.mean, stats.var, *grads)
    for a, n in zip(out["fast"], out["native"]):
        torch.testing.assert_close(a, n, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_train_op(layout):
    x = _input((4, 3, 3, 2), torch.float64, layout).requires_grad_()
    w, b = (t.requires_grad_() for t in _params(3, torch.float64))
    with kernels.backend("fast"):
        for groups, act in ((1, "identity"), (2, "relu")):
            f = lambda x, w, b, groups=groups, act=act: kernels.batch_norm_train(  # noqa: E731
                x, w, b, 1e-3, groups=groups, act=act)[0]
            assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_normalize_op_all_inputs(layout):
    x = _input((3, 4, 3, 2), torch.float64, layout).requires_grad_()
    mean = torch.randn(4, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    w, b = (t.requires_grad_() for t in _params(4, torch.float64))
    with kernels.backend("fast"):
        for act in ("identity", "relu"):
            f = lambda *a, act=act: kernels.normalize(*a, 1e-3, act=act)  # noqa: E731
            assert torch.autograd.gradcheck(f, (x, mean, var, w, b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_normalize_matches_reference_inference(layout, dtype):
    x = _input((3, 4, 5, 6), dtype, layout)
    rm, rv = torch.randn(4, dtype=dtype), torch.rand(4, dtype=dtype) + 0.1
    w, b = _params(4, dtype)
    with kernels.backend("fast"):
        y = kernels.normalize(x, rm, rv, w, b, 1e-5)
    y_ref = reference.batch_norm_inference(x.double().numpy(), rm.double().numpy(), rv.double().numpy(),
                                           w.double().numpy(), b.double().numpy(), 1e-5)
    np.testing.assert_allclose(y.double().numpy(), y_ref, atol=TOL[dtype] * 10, rtol=TOL[dtype])


def _masked_reference(x: np.ndarray, mask: np.ndarray, c: int):
    """Mean and biased variance over the valid positions of each channel, straight from the definition."""
    xs = np.moveaxis(x, c, -1).reshape(-1, x.shape[c])
    ms = np.moveaxis(np.broadcast_to(mask, x.shape[:c] + (1,) + x.shape[c + 1 :]), c, -1).reshape(-1)
    valid = xs[ms]
    mean = valid.mean(axis=0)
    return mean, ((valid - mean) ** 2).mean(axis=0), int(ms.sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,c,mask_shape", [((4, 3, 9), 1, (4, 1, 9)), ((4, 9, 3), 2, (4, 9, 1))])
def test_masked_moments_ignore_nan_filled_positions(shape, c, mask_shape, dtype):
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(mask_shape, generator=g) > 0.4
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 5).to(dtype)
    x = torch.where(mask, x, torch.full((), float("nan"), dtype=dtype))  # any leak of a masked value shows as NaN
    dims = tuple(d for d in range(len(shape)) if d != c)
    with kernels.backend("fast"):
        st = kernels.moments(x, dims, mask=mask)
    mean, var, n = _masked_reference(x.double().numpy(), mask.numpy(), c)
    np.testing.assert_allclose(st.mean.double().numpy(), mean, rtol=TOL[dtype])
    np.testing.assert_allclose(st.var.double().numpy(), var, rtol=TOL[dtype] * 10)
    assert torch.equal(st.count, torch.full((shape[c],), float(n), dtype=dtype))
    with kernels.backend("native"):
        nat = _stats.moments(x, dims, mask=mask)
    torch.testing.assert_close(st.mean, nat.mean)
    torch.testing.assert_close(st.var, nat.var)


def test_masked_moments_gradcheck_and_ghost_layout():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    mask = torch.rand(4, 1, 5, generator=g) > 0.3
    with kernels.backend("fast"):
        f = lambda x: tuple(kernels.moments(x, (0, 2), mask=mask)[:2])  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        # ghost layout (G, N/G, C, L): statistics per (group, channel), equal to the unmasked native path
        xg = x.detach().reshape(2, 2, 3, 5)
        fast = kernels.moments(xg, (1, 3), keepdim=True)
    native = _stats.moments(xg, (1, 3), keepdim=True)
    torch.testing.assert_close(fast.mean, native.mean)
    torch.testing.assert_close(fast.var, native.var)
    assert fast.mean.shape == (2, 1, 3, 1) and fast.count == native.count


def test_opcheck_custom_ops():
    """torch.library's own consistency checks: schema, fake (shape) functions, autograd registration."""
    x = _input((3, 4, 5, 2), torch.float32)
    w, b = _params(4, torch.float32)
    mean, scale, shift = torch.randn(1, 4), torch.rand(1, 4) + 0.5, torch.randn(1, 4)
    dy = torch.randn(3, 4, 5, 2)
    samples = [
        (ops.batch_norm_train, (x.requires_grad_(), w.requires_grad_(), b, 1e-5, 1, 1, 1)),
        (ops.apply, (x, mean, scale.requires_grad_(), shift, 1, 1, 0)),
        (ops.moments, (x.detach(), 1, 1, None)),
        (ops.apply_backward, (dy, x.detach(), mean, scale.detach(), shift, 1, 1, 1)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_relu_fusion_matches_unfused():
    x = _input((4, 3, 6, 5), torch.float32)
    w, b = _params(3, torch.float32)
    with kernels.backend("fast"):
        fused, _ = kernels.batch_norm_train(x, w, b, 1e-5, act="relu")
        plain, _ = kernels.batch_norm_train(x, w, b, 1e-5)
    torch.testing.assert_close(fused, torch.relu(plain))
    assert (fused == 0).any() and (fused > 0).any()


def test_bad_arguments_raise_with_names():
    x = torch.randn(6, 3, 4)
    with pytest.raises(ValueError, match=r"batch_norm_train: groups must be a positive int dividing the batch size 6, "
                                         r"got 4"):
        kernels.batch_norm_train(x, None, None, 1e-5, groups=4)
    with pytest.raises(ValueError, match=r"act must be one of 'identity', 'relu', 'leaky_relu', got 'gelu'"):
        kernels.normalize(x, torch.zeros(3), torch.ones(3), None, None, 1e-5, act="gelu")


def _variant_reference(x, w, b, eps, axis, groups, mask, renorm):
    """Float64 formula for the fused op's variants: virtual batches, masked statistics, renorm's r and d."""
    c = axis % x.ndim
    m = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.expand(x.shape)
    x = torch.where(m, x.double(), 0)  # padding (maybe NaN) out of the arithmetic, and out of autograd's way
    xg = x.reshape((groups, -1) + tuple(x.shape[1:]))
    mg = m.reshape(xg.shape)
    dims = tuple(d for d in range(xg.ndim) if d not in (0, c + 1))
    n = mg.sum(dims, keepdim=True)
    mu = torch.where(mg, xg, 0).sum(dims, keepdim=True) / n
    var = torch.where(mg, (xg - mu) ** 2, 0).sum(dims, keepdim=True) / n
    shape = [1] * xg.ndim
    shape[c + 1] = -1
    xhat = (xg - mu) / torch.sqrt(var + eps)
    if renorm is not None:
        ref_mean, ref_std, r_max, d_max = renorm
        r = (torch.sqrt(var + eps) / ref_std.double().reshape(shape)).clamp(1 / r_max, r_max).detach()
        d = ((mu - ref_mean.double().reshape(shape)) / ref_std.double().reshape(shape)).clamp(-d_max, d_max).detach()
        xhat = xhat * r + d
    y = torch.where(mg, xhat * w.double().reshape(shape) + b.double().reshape(shape), 0)
    return y.reshape(x.shape)


VARIANTS = [  # shape, axis, layout, groups, masked, renorm
    ((6, 3, 5, 7), 1, "contiguous", 3, False, False),
    ((6, 3, 5, 7), 1, "channels_last", 2, False, False),
    ((4, 3, 9), 1, "contiguous", 1, True, False),
    ((4, 9, 3), -1, "contiguous", 2, True, False),
    ((5, 3, 4, 4), 1, "contiguous", 1, False, True),
    ((5, 3, 4, 4), 1, "channels_last", 1, True, True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,axis,layout,groups,masked,renorm", VARIANTS)
def test_fused_variants_match_float64_formula(shape, axis, layout, groups, masked, renorm, dtype):
    x = _input(shape, dtype, layout)
    c = axis % len(shape)
    C = shape[c]
    w, b = _params(C, dtype)
    g = torch.Generator().manual_seed(3)
    mask = None
    if masked:
        mshape = list(shape)
        mshape[c] = 1
        mask = torch.rand(mshape, generator=g) > 0.3
        x = torch.where(mask, x, torch.full((), float("nan"), dtype=dtype))  # padding must never matter
    ren = (torch.randn(C, generator=g, dtype=torch.float64).to(dtype),
           (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype), 1.3, 0.4) if renorm else None
    ref_y = _variant_reference(x, w, b, 1e-5, axis, groups, mask, ren)
    xr = x.clone().requires_grad_()
    with kernels.backend("fast"):
        y, stats = kernels.batch_norm_train(xr, w, b, 1e-5, axis=axis, groups=groups, mask=mask, renorm=ren)
    torch.testing.assert_close(y.double(), ref_y, atol=TOL[dtype] * 10, rtol=0)
    # gradients: the op's fused backward against autograd through the float64 formula
    dy = torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(shape)
    (dx,) = torch.autograd.grad(y, xr, dy.to(dtype))
    x64 = x.double().requires_grad_()
    (dx_ref,) = torch.autograd.grad(_variant_reference(x64, w, b, 1e-5, axis, groups, mask, ren), x64, dy)
    if mask is not None:
        dx_ref = torch.where(mask, dx_ref, 0)
    torch.testing.assert_close(dx.double(), dx_ref, atol=TOL[dtype] * 20, rtol=0)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()


def test_fused_variants_gradcheck():
    """gradcheck (float64) of the fused op's backward for x, weight and bias with groups, a mask and renorm."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    w = (torch.rand(3, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, generator=g).requires_grad_()
    mask = torch.rand(4, 1, 5, generator=g) > 0.3
    # r and d are constants of the gradient by definition; finite differences agree only where both are clipped
    # (reference std 10 >> batch std: r = 1/r_max; reference mean 5: d = -d_max)
    ren = (torch.full((3,), 5.0, dtype=torch.float64), torch.full((3,), 10.0, dtype=torch.float64), 1.5, 0.2)
    with kernels.backend("fast"):
        for kw in ({"groups": 2}, {"mask": mask}, {"renorm": ren}, {"mask": mask, "renorm": ren, "act": "relu"}):
            f = lambda x, w, b, kw=kw: kernels.batch_norm_train(x, w, b, 1e-5, **kw)[0]  # noqa: E731
            assert torch.autograd.gradcheck(f, (x, w, b)), kw


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_masked_large_mean_is_exact_centred(layout):
    x64 = _input((8, 2, 16, 16), torch.float64, layout) + 1e4
    x64 = x64.float().double()
    mask = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(5)) > 0.5
    with kernels.backend("fast"):
        y, stats = kernels.batch_norm_train(x64.float(), None, None, 1e-5, mask=mask)
    ref = _variant_reference(x64, torch.ones(2), torch.zeros(2), 1e-5, 1, 1, mask, None)
    assert (y.double() - ref).abs().max().item() < 6e-4


def test_variant_arguments_are_checked():
    x = torch.randn(4, 3, 5)
    with kernels.backend("fast"):  # the kernels index per channel without bounds checks: lengths are checked first
        with pytest.raises(ValueError, match=r"batch_norm_train: expected weight of shape \(3,\), got \(2,\)"):
            kernels.batch_norm_train(x, torch.ones(2), None, 1e-5)
        with pytest.raises(ValueError, match=r"expected renorm's reference std of shape \(3,\), got \(4,\)"):
            kernels.batch_norm_train(x, None, None, 1e-5, renorm=(torch.zeros(3), torch.ones(4), 3.0, 5.0))
    with pytest.raises(ValueError, match=r"batch_norm_train: expected a bool mask of rank 3 with size 1 on the channel "
                                         r"axis 1"):
        kernels.batch_norm_train(x, None, None, 1e-5, mask=torch.ones(4, 3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"broadcastable to the input's shape \(4, 3, 5\), got torch.bool of shape "
                                         r"\(4, 1, 3\)"):
        kernels.batch_norm_train(x, None, None, 1e-5, mask=torch.ones(4, 1, 3, dtype=torch.bool))
    with kernels.backend("native"), pytest.raises(ValueError,
                                                  match=r"virtual batches \(groups=2\) with a mask or renorm"):
        kernels.batch_norm_train(x, None, None, 1e-5, groups=2, mask=torch.ones(4, 1, 5, dtype=torch.bool))


# -- LeakyReLU and the residual epilogue (y = act(bn(x) + residual)) ---------------------------------------------
def _act_ref(z: np.ndarray, act: str, slope: float) -> tuple[np.ndarray, np.ndarray]:
    """(act(z), act'(z)) in float64."""
    if act == "identity":
        return z, np.ones_like(z)
    s = 0.0 if act == "relu" else slope
    return np.where(z > 0, z, s * z), np.where(z > 0, 1.0, s)


ACT_LAYOUTS = [((4, 3, 5, 6), 1, "contiguous"), ((4, 6, 5, 3), 1, "channels_last"), ((40, 5), 1, "contiguous"),
               ((3, 7, 5), -1, "contiguous")]


@pytest.mark.parametrize("backend", ["fast", "native"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act,slope", [("identity", 0.0), ("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", 0.0)])
@pytest.mark.parametrize("shape,axis,layout", ACT_LAYOUTS)
def test_activation_and_residual_match_float64_reference(shape, axis, layout, act, slope, residual, backend):
    dtype = torch.float64
    x = _input(shape, dtype, layout).requires_grad_()
    C = shape[axis]
    w, b = (t.requires_grad_() for t in _params(C, dtype))
    r = (_input(shape, dtype, layout, seed=5) * 0.7).requires_grad_() if residual else None
    with kernels.backend(backend):
        y, stats = kernels.batch_norm_train(x, w, b, 1e-5, axis=axis, act=act, negative_slope=slope, residual=r)
    dy = torch.cos(torch.arange(y.numel(), dtype=dtype)).reshape(y.shape)
    y.backward(dy)
    c = axis % len(shape)
    xn = np.moveaxis(x.detach().numpy(), c, 1)
    z, cache = reference.batch_norm_forward(xn, w.detach().numpy(), b.detach().numpy(), 1e-5)
    rn = np.moveaxis(r.detach().numpy(), c, 1) if residual else 0.0
    want, deriv = _act_ref(z + rn, act, slope)
    np.testing.assert_allclose(np.moveaxis(y.detach().numpy(), c, 1), want, rtol=1e-10, atol=1e-12)
    dz = np.moveaxis(dy.numpy(), c, 1) * deriv
    dx, dw, db = reference.batch_norm_backward(dz, cache)
    np.testing.assert_allclose(np.moveaxis(x.grad.numpy(), c, 1), dx, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(w.grad.numpy(), dw, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.grad.numpy(), db, rtol=1e-8, atol=1e-10)
    if residual:
        np.testing.assert_allclose(np.moveaxis(r.grad.numpy(), c, 1), dz, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.mean.numpy(), cache.mean.reshape(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_residual_epilogue_fast_equals_native_float32_and_float64(layout, dtype):
    x = _input((4, 5, 6, 7), dtype, layout).requires_grad_()
    r = _input((4, 5, 6, 7), dtype, layout, seed=9).requires_grad_()
    w, b = (t.requires_grad_() for t in _params(5, dtype))
    out = {}
    for name in ("fast", "native"):
        with kernels.backend(name):
            y, _ = kernels.batch_norm_train(x, w, b, 1e-5, act="relu", residual=r)
        out[name] = (y, *torch.autograd.grad(y, (x, w, b, r), torch.sin(y)))
    tol = 1e-10 if dtype == torch.float64 else 5e-5
    for a, n in zip(out["fast"], out["native"]):
        torch.testing.assert_close(a, n, atol=tol, rtol=tol)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,slope", [("relu", 0.0), ("leaky_relu", 0.3)])
def test_gradcheck_leaky_and_residual_train_op(layout, act, slope):
    x = _input((4, 3, 3, 2), torch.float64, layout).requires_grad_()
    r = _input((4, 3, 3, 2), torch.float64, layout, seed=3).requires_grad_()
    w, b = (t.requires_grad_() for t in _params(3, torch.float64))
    with kernels.backend("fast"):
        f = lambda x, w, b: kernels.batch_norm_train(x, w, b, 1e-3, act=act, negative_slope=slope)[0]  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w, b))
        g = lambda x, w, b, r: kernels.batch_norm_train(  # noqa: E731
            x, w, b, 1e-3, act=act, negative_slope=slope, residual=r)[0]
        assert torch.autograd.gradcheck(g, (x, w, b, r))
        assert torch.autograd.gradgradcheck(g, (x, w, b, r))  # double backward: the composite, exact
        h = lambda *a: kernels.normalize(*a, 1e-3, act=act, negative_slope=slope)  # noqa: E731
        mean = torch.randn(3, dtype=torch.float64, requires_grad=True)
        var = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
        assert torch.autograd.gradcheck(h, (x, mean, var, w, b))


def test_residual_bad_arguments_raise_with_names():
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match=r"batch_norm_train: the residual must be a tensor of the input's shape "
                                         r"\(4, 3, 5\), torch.float32 on cpu, got Tensor of shape \(4, 3, 1\)"):
        kernels.batch_norm_train(x, None, None, 1e-5, residual=torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match=r"residual is supported for plain batch norm only"):
        kernels.batch_norm_train(x, None, None, 1e-5, residual=torch.randn(4, 3, 5), groups=2)
    with pytest.raises(ValueError, match=r"a residual needs negative_slope >= 0 .*got -0.1"):
        kernels.batch_norm_train(x, None, None, 1e-5, act="leaky_relu", negative_slope=-0.1,
                                 residual=torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match=r"negative_slope must be a number, got 'a'"):
        kernels.batch_norm_train(x, None, None, 1e-5, act="leaky_relu", negative_slope="a")
