"""Kind: the training backward reads weight and bias as they arrive (its coefficients and parameter gradients are
numba kernels taking the tensors' own NumPy views since #16): strided, expanded (stride 0) or of another dtype
than x, they must give the gradients of the float64 composite, with ghost batches and a fully masked group
(count 0) too, on the channel-first and the channel-innermost kernels."""

from __future__ import annotations

import pytest
import torch

from normlab import kernels
from normlab.kernels import ops

pytestmark = pytest.mark.skipif(not kernels.numba_available(), reason="numba (the kernels extra) is not installed")

C = 3
TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 2e-3}


def _weight_bias(kind: str, dtype: torch.dtype):
    """Leaves (what gets the gradient) and the weight/bias built from them as the op receives them."""
    g = torch.Generator().manual_seed(1)
    if kind == "expanded":  # stride 0
        w0 = (torch.rand(1, generator=g, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
        b0 = torch.randn(1, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        return (w0, b0), (w0.expand(C), b0.expand(C))
    other = {"strided": dtype, "float64": torch.float64, "float32": torch.float32, "float16": torch.float16}[kind]
    w0 = (torch.rand(2 * C, generator=g, dtype=torch.float64) + 0.5).to(other).requires_grad_()
    b0 = torch.randn(C, 2, generator=g, dtype=torch.float64).to(other).requires_grad_()
    if kind == "strided":
        return (w0, b0), (w0[::2], b0[:, 1])
    return (w0, b0), (w0[:C], b0[:, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["strided", "expanded", "float64", "float32", "float16"])
@pytest.mark.parametrize("shape,axis,channels_last", [((8, C, 4, 5), 1, False), ((8, C, 4, 5), 1, True),
                                                       ((8, 7, C), -1, False)])
@pytest.mark.parametrize("groups,masked", [(1, False), (2, True)])
def test_backward_takes_parameters_of_any_layout_and_dtype(dtype, kind, shape, axis, channels_last, groups, masked):
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 1.7 + 0.6
    x = x64.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x64 = x.double()  # the input exactly, so only the computation's error is measured
    mask = None
    if masked:
        ms = list(shape)
        ms[axis] = 1
        mask = torch.rand(ms, generator=g) > 0.3
        mask[: shape[0] // groups] = False  # the first virtual batch fully masked: count 0 in every channel
    dy = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(shape)
    leaves, (w, b) = _weight_bias(kind, dtype)
    xg = x.detach().requires_grad_()
    y, _, _, count, rd = ops.train(xg, w, b, 1e-5, axis % x.ndim, groups, 1, mask)
    if masked:
        assert (count[0] == 0).all() and (count[1] > 0).all()
    got = torch.autograd.grad(y, (xg, *leaves), dy.to(dtype))

    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    xr = x64.detach().requires_grad_()
    wr, br = (r.expand(C) if kind == "expanded" else (r[::2] if i == 0 else r[:, 1]) if kind == "strided"
              else (r[:C] if i == 0 else r[:, 0]) for i, r in enumerate(ref_leaves))
    yr = ops._composite_train(xr, wr, br, 1e-5, axis % x.ndim, groups, 1, mask, rd.double())
    want = torch.autograd.grad(yr, (xr, *ref_leaves), dy)
    for name, a, e, leaf in zip(("dx", "dweight", "dbias"), got, want, (xg, *leaves)):
        assert a.dtype == leaf.dtype and a.shape == leaf.shape, name
        tol = max(TOL[dtype], TOL[leaf.dtype])  # x's precision, or the gradient's rounding to the leaf's dtype
        torch.testing.assert_close(a.double(), e, rtol=tol, atol=tol * 10, msg=name)
