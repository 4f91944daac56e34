"""The kernels as torch custom operators (``torch.ops.normlab.*``), with shape functions and autograd.

Registered through :func:`torch.library.custom_op`, so fx tracing, ``torch.compile`` and ``torch.export`` see one
operator per step instead of an opaque Python call that breaks the graph. Every op takes the channel ``axis`` and
``groups`` (virtual batches along dim 0; per-(group, channel) statistics have shape ``(G, C)``) and ``act``
(0 = identity, 1 = ReLU fused into the apply and its backward).

* ``normlab::moments(x, axis, groups, mask)`` -> ``(mean, var, count)``: biased, exact-centred statistics.
* ``normlab::apply(x, mean, scale, shift, axis, groups, act)`` -> ``act((x - mean) * scale + shift)``.
  (Written with the mean subtracted first rather than as ``x * a + b``: with |mean| >> std, ``x * a`` and ``b``
  are both large and their sum cancels in float32; the subtraction is free in a memory-bound kernel.)
  Its backward is ``normlab::apply_backward`` -> ``(dx, sum dy', sum dy' * (x - mean))``.
* ``normlab::batch_norm_train(x, weight, bias, eps, axis, groups, act)`` -> ``(y, mean, var)``: statistics and
  apply fused; its backward is ``normlab::batch_norm_train_backward`` (the two per-channel reductions and the
  backward apply, fused).

First-order gradients only: the backward ops have no autograd of their own, so double backward raises.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _layout

_NUMBA = None


def _k():
    """The numba kernels, imported (and JIT-loaded from the on-disk cache) on first use only."""
    global _NUMBA
    if _NUMBA is None:
        from . import _numba

        _NUMBA = _numba
    return _NUMBA


def _gc(t: Tensor | np.ndarray, groups: int, c: int) -> np.ndarray:
    """A per-channel or per-(group, channel) parameter as a float64 (G, C) array."""
    a = t.detach().to(torch.float64).numpy() if isinstance(t, Tensor) else np.asarray(t, dtype=np.float64)
    return np.ascontiguousarray(np.broadcast_to(a.reshape(-1, c), (groups, c)))


def _bcast(t: Tensor, x: Tensor, axis: int, groups: int) -> Tensor:
    """A (G, C) tensor shaped to broadcast against ``x`` viewed as (G, N/G, ...)."""
    nd = x.ndim
    c = axis % nd
    shape = [1] * (nd + 1)
    shape[0] = groups
    shape[c + 1] = x.shape[c]
    return t.reshape(shape)


def _grouped(x: Tensor, groups: int) -> Tensor:
    return x.reshape((groups, x.shape[0] // groups) + tuple(x.shape[1:]))


def _kernel(p: _layout.Plan, name: str):
    return getattr(_k(), f"{p.kind}_{name}")


# ------------------------------------------------------------------------------------------------- moments
@torch.library.custom_op("normlab::moments", mutates_args=())
def moments(x: Tensor, axis: int, groups: int, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    xs, p = _layout.prepare(x, axis)
    m = _layout.mask_view(mask, xs, axis, p) if mask is not None else _layout.empty_mask(p)
    mean, var, count = (np.empty((groups, p.c)) for _ in range(3))
    _kernel(p, "moments")(_layout.view(xs, p), m, groups, mean, var, count)
    return tuple(torch.from_numpy(a).to(x.dtype) for a in (mean, var, count))


@moments.register_fake
def _(x, axis, groups, mask):
    C = x.shape[axis % x.ndim]
    return tuple(x.new_empty((groups, C)) for _ in range(3))


def _moments_setup(ctx, inputs, output):
    x, axis, groups, mask = inputs
    mean, _, count = output
    ctx.save_for_backward(x, mean, count, mask)
    ctx.axis, ctx.groups = axis, groups
    ctx.mark_non_differentiable(count)


def _moments_backward(ctx, d_mean, d_var, d_count):
    # d mean / dx = 1/n ; d var / dx = 2 (x - mean) / n, on the valid positions of each (group, channel).
    x, mean, count, mask = ctx.saved_tensors
    axis, groups = ctx.axis, ctx.groups
    xg = _grouped(x, groups)
    n = _bcast(count.clamp_min(1), x, axis, groups)
    dx = (_bcast(d_mean, x, axis, groups) + 2 * _bcast(d_var, x, axis, groups) * (xg - _bcast(mean, x, axis, groups))) / n
    if mask is not None:
        dx = torch.where(_grouped(mask.expand(x.shape), groups), dx, dx.new_zeros(()))
    return dx.reshape(x.shape), None, None, None


moments.register_autograd(_moments_backward, setup_context=_moments_setup)


# --------------------------------------------------------------------------------------------------- apply
@torch.library.custom_op("normlab::apply", mutates_args=())
def apply(x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int) -> Tensor:
    xs, p = _layout.prepare(x, axis)
    y = torch.empty_like(xs)
    _kernel(p, "apply")(_layout.view(xs, p), groups, _gc(mean, groups, p.c), _gc(scale, groups, p.c),
                        _gc(shift, groups, p.c), act, _layout.view(y, p))
    return y


@apply.register_fake
def _(x, mean, scale, shift, axis, groups, act):
    return torch.empty_like(x)


@torch.library.custom_op("normlab::apply_backward", mutates_args=())
def apply_backward(
    dy: Tensor, x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, sum dy', sum dy' * (x - mean))`` with dy' = dy * act'(z): one reduction pass, one apply pass."""
    xs, p = _layout.prepare(x, axis)
    dys = _layout.like(dy, xs)
    xv, dyv = _layout.view(xs, p), _layout.view(dys, p)
    mu, a, b = (_gc(t, groups, p.c) for t in (mean, scale, shift))
    s_dy, s_dyx = np.empty((groups, p.c)), np.empty((groups, p.c))
    dx = torch.empty_like(xs)
    dxv = _layout.view(dx, p)
    if p.kind == _layout.NCS:  # fused: the reductions, then dx while the channel is in L2
        _k().ncs_apply_backward(dyv, xv, groups, mu, a, b, act, dxv, s_dy, s_dyx)
    else:
        _k().mc_reduce(dyv, xv, groups, mu, a, b, act, s_dy, s_dyx)
        zero = np.zeros((groups, p.c))
        _k().mc_backward_apply(dyv, xv, groups, mu, a, b, a, zero, zero, act, dxv)
    return dx, torch.from_numpy(s_dy).to(x.dtype), torch.from_numpy(s_dyx).to(x.dtype)


@apply_backward.register_fake
def _(dy, x, mean, scale, shift, axis, groups, act):
    C = x.shape[axis % x.ndim]
    return torch.empty_like(x), x.new_empty((groups, C)), x.new_empty((groups, C))


def _apply_setup(ctx, inputs, output):
    x, mean, scale, shift, axis, groups, act = inputs
    ctx.save_for_backward(x, mean, scale, shift)
    ctx.axis, ctx.groups, ctx.act = axis, groups, act
    ctx.shapes = (mean.shape, scale.shape, shift.shape)


def _apply_backward(ctx, dy):
    # y = act(z), z = (x - mean) * scale + shift:  dx = dy' scale, dmean = -sum dy' scale,
    # dscale = sum dy' (x - mean), dshift = sum dy'  (sums per (group, channel), then to each input's shape).
    x, mean, scale, shift = ctx.saved_tensors
    dx, s_dy, s_dyx = apply_backward(dy, x, mean, scale, shift, ctx.axis, ctx.groups, ctx.act)
    C = s_dy.shape[1]
    s_scale = scale.detach().reshape(-1, C).expand(ctx.groups, C)

    def fit(g: Tensor, shape) -> Tensor:
        return g.sum(0).reshape(shape) if len(shape) < 2 else g.reshape(shape)

    d_mean = fit(-s_dy * s_scale, ctx.shapes[0])
    return dx, d_mean, fit(s_dyx, ctx.shapes[1]), fit(s_dy, ctx.shapes[2]), None, None, None


apply.register_autograd(_apply_backward, setup_context=_apply_setup)


# ------------------------------------------------------------------------------------------ fused training
@torch.library.custom_op("normlab::batch_norm_train", mutates_args=())
def batch_norm_train(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, axis: int, groups: int, act: int
) -> tuple[Tensor, Tensor, Tensor]:
    xs, p = _layout.prepare(x, axis)
    xv = _layout.view(xs, p)
    y = torch.empty_like(xs)
    yv = _layout.view(y, p)
    mean, var = np.empty((groups, p.c)), np.empty((groups, p.c))
    w, b = _gc(weight, 1, p.c)[0], _gc(bias, 1, p.c)[0]
    if p.kind == _layout.NCS:
        _k().ncs_train_forward(xv, groups, w, b, eps, act, yv, mean, var)
    else:
        count = np.empty((groups, p.c))
        _k().mc_moments(xv, _layout.empty_mask(p), groups, mean, var, count)
        scale = w / np.sqrt(var + eps)
        _k().mc_apply(xv, groups, mean, scale, np.broadcast_to(b, (groups, p.c)).copy(), act, yv)
    return y, torch.from_numpy(mean).to(x.dtype), torch.from_numpy(var).to(x.dtype)


@batch_norm_train.register_fake
def _(x, weight, bias, eps, axis, groups, act):
    C = x.shape[axis % x.ndim]
    return torch.empty_like(x), x.new_empty((groups, C)), x.new_empty((groups, C))


@torch.library.custom_op("normlab::batch_norm_train_backward", mutates_args=())
def batch_norm_train_backward(
    dy: Tensor, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor,
    eps: float, axis: int, groups: int, act: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of the fused training op.

    dx = weight * r * (dy' - sum(dy') / m - xhat * sum(dy' * xhat) / m),  r = 1/sqrt(var + eps), xhat = (x - mean) r,
    dweight = sum(dy' * xhat), dbias = sum(dy') over every (group, position) of the channel.
    """
    xs, p = _layout.prepare(x, axis)
    dys = _layout.like(dy, xs)
    xv, dyv = _layout.view(xs, p), _layout.view(dys, p)
    dx = torch.empty_like(xs)
    dxv = _layout.view(dx, p)
    mu, v = _gc(mean, groups, p.c), _gc(var, groups, p.c)
    w, b = _gc(weight, 1, p.c)[0], _gc(bias, 1, p.c)[0]
    s_dy, s_dyxhat = np.empty((groups, p.c)), np.empty((groups, p.c))
    if p.kind == _layout.NCS:
        _k().ncs_train_backward(dyv, xv, groups, mu, v, w, b, eps, act, dxv, s_dy, s_dyxhat)
    else:
        r = 1.0 / np.sqrt(v + eps)
        a = w * r
        shift = np.ascontiguousarray(np.broadcast_to(b, (groups, p.c)))
        s_dyx = np.empty((groups, p.c))
        _k().mc_reduce(dyv, xv, groups, mu, a, shift, act, s_dy, s_dyx)
        m = p.n // groups
        _k().mc_backward_apply(dyv, xv, groups, mu, a, shift, a, -a * r * r * s_dyx / m, -a * s_dy / m, act, dxv)
        s_dyxhat = s_dyx * r
    return dx, torch.from_numpy(s_dyxhat.sum(0)).to(x.dtype), torch.from_numpy(s_dy.sum(0)).to(x.dtype)


@batch_norm_train_backward.register_fake
def _(dy, x, mean, var, weight, bias, eps, axis, groups, act):
    C = x.shape[axis % x.ndim]
    return torch.empty_like(x), x.new_empty((C,)), x.new_empty((C,))


def _train_setup(ctx, inputs, output):
    x, weight, bias, eps, axis, groups, act = inputs
    _, mean, var = output
    ctx.save_for_backward(x, mean, var, weight, bias)
    ctx.eps, ctx.axis, ctx.groups, ctx.act = eps, axis, groups, act
    ctx.mark_non_differentiable(mean, var)


def _train_backward(ctx, dy, d_mean, d_var):
    x, mean, var, weight, bias = ctx.saved_tensors
    dx, dw, db = batch_norm_train_backward(dy, x, mean, var, weight, bias, ctx.eps, ctx.axis, ctx.groups, ctx.act)
    return dx, dw, db, None, None, None, None


batch_norm_train.register_autograd(_train_backward, setup_context=_train_setup)
