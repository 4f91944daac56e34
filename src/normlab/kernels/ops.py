"""The kernels as torch custom operators (``torch.ops.normlab.*``), with shape functions and autograd.

Registered through :func:`torch.library.custom_op`, so fx tracing, ``torch.compile`` and ``torch.export`` see one
operator per step instead of an opaque Python call that breaks the graph. Every op takes the channel ``axis`` and
``groups`` (virtual batches along dim 0; per-(group, channel) statistics have shape ``(G, C)``); the apply and
training ops take ``act`` (0 = identity, 1 = ReLU fused into the apply and its backward); the statistics and
training ops take an optional position ``mask`` (bool, size 1 along the channel axis, broadcastable to ``x``;
masked positions are left out of the statistics and get output and gradient 0).

* ``normlab::moments(x, axis, groups, mask)`` -> ``(mean, var, count)``: biased, exact-centred statistics.
* ``normlab::apply(x, mean, scale, shift, axis, groups, act)`` -> ``act((x - mean) * scale + shift)``.
  (Written with the mean subtracted first rather than as ``x * a + b``: with |mean| >> std, ``x * a`` and ``b``
  are both large and their sum cancels in float32; the subtraction is free in a memory-bound kernel.)
  Its backward is ``normlab::apply_backward`` -> ``(dx, sum dy', sum dy' * (x - mean))``.
* ``normlab::batch_norm_train(x, weight, bias, eps, axis, groups, act, mask, renorm)`` ->
  ``(y, mean, var, count, rd)``: statistics and apply fused (batch norm, ghost batches, masked positions, and
  batch renormalization when ``renorm`` = rows (reference mean, reference std, r_max, d_max) is given; ``rd``
  holds its r and d, shape (2, G, C)). Its backward ``normlab::batch_norm_train_backward`` fuses the two
  per-channel reductions and dx.

In plain eager mode, :func:`train` and :func:`apply_affine` run the same implementations behind a
``torch.autograd.Function`` (the ops' Python dispatch costs ~0.1 ms a call); under ``torch.compile``,
``torch.export`` or ``make_fx`` they call the registered ops.

The backward ops compute first-order gradients. When a graph of the backward is requested (``create_graph=True``,
double backward), the backward instead recomputes the same function from differentiable torch operators
(:func:`_composite_train`, :func:`_composite_apply`) and differentiates that, so every order is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils import _python_dispatch

from . import _buffer_cache, _layout
from .native import activate

_NUMBA = None


def _k():
    """The numba kernels, imported (and JIT-loaded from the on-disk cache) on first use only."""
    global _NUMBA
    if _NUMBA is None:
        from . import _numba

        _NUMBA = _numba
    return _NUMBA


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _np64(t: Tensor) -> np.ndarray:
    """A CPU float tensor's values as float64 NumPy (NumPy's cast: a torch op costs several µs per call)."""
    t = t.detach()
    return t.numpy().astype(np.float64) if t.dtype in _NUMPY_DTYPE else t.to(torch.float64).numpy()


def _gc(t: Tensor | np.ndarray, groups: int, c: int) -> np.ndarray:
    """A per-channel or per-(group, channel) parameter as a float64 (G, C) array."""
    a = _np64(t) if isinstance(t, Tensor) else np.asarray(t, dtype=np.float64)
    if a.size == groups * c:
        return np.ascontiguousarray(a.reshape(groups, c))
    out = np.empty((groups, c))
    out[:] = a.reshape(-1, c)
    return out


def _vec(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(_np64(t).reshape(-1))


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


def _mask(mask: Tensor | None, xs: Tensor, axis: int, p: _layout.Plan) -> np.ndarray:
    return _layout.mask_view(mask, xs, axis, p) if mask is not None else _layout.empty_mask(p)


def _arr(t: Tensor, shape: tuple[int, ...], like: Tensor) -> np.ndarray:
    """A CPU tensor's values as a C-contiguous NumPy array of ``shape`` in ``like``'s dtype (float32/float64),
    without a copy when they already are: one array type per input dtype, so numba compiles one specialization
    of each kernel per dtype (a strided, expanded or other-dtype weight is copied, not compiled for)."""
    t = t.detach()
    if t.dtype != like.dtype:
        t = t.to(like.dtype)
    return np.ascontiguousarray(t.numpy().reshape(shape))


def _from(a: np.ndarray, like: Tensor) -> Tensor:
    """``a`` (already in ``like``'s dtype when it is float32/float64) as a tensor of ``like``'s dtype."""
    t = torch.from_numpy(a)
    return t if t.dtype == like.dtype else t.to(like.dtype)


def _to(a: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(a.astype(_NUMPY_DTYPE[like.dtype], copy=False))


def _backward_kernel(
    p: _layout.Plan, dyv: np.ndarray, xv: np.ndarray, m: np.ndarray, groups: int, mean: np.ndarray,
    scale: np.ndarray, shift: np.ndarray, coupling: np.ndarray, act: int, slope: float, dxv: np.ndarray,
    yv: np.ndarray | None = None, dresv: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the layout's backward kernel; ``yv``/``dresv`` (the output, the residual's gradient) for the residual
    epilogue."""
    s_dy, s_dyx = np.empty((groups, p.c)), np.empty((groups, p.c))
    none = _empty_like_view(xv)
    _kernel(p, "backward")(dyv, xv, m, groups, mean, scale, shift, coupling, act, slope,
                           none if yv is None else yv, none if dresv is None else dresv, dxv, s_dy, s_dyx)
    return s_dy, s_dyx


def _empty_like_view(v: np.ndarray) -> np.ndarray:
    """The kernels' "no residual" argument: an empty array of the view's rank and dtype."""
    return np.empty((0,) * v.ndim, dtype=v.dtype)


# ------------------------------------------------------------------------------------------------- moments
@torch.library.custom_op("normlab::moments", mutates_args=())
def moments(x: Tensor, axis: int, groups: int, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    xs, p = _layout.prepare(x, axis)
    mean, var, count = (np.empty((groups, p.c)) for _ in range(3))
    _kernel(p, "moments")(_layout.view(xs, p), _mask(mask, xs, axis, p), groups, mean, var, count)
    return _to(mean, x), _to(var, x), _to(count, x)


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
    centred = xg - _bcast(mean, x, axis, groups)
    dx = (_bcast(d_mean, x, axis, groups) + 2 * _bcast(d_var, x, axis, groups) * centred) / n
    if mask is not None:
        dx = torch.where(_grouped(mask.expand(x.shape), groups), dx, dx.new_zeros(()))
    return dx.reshape(x.shape), None, None, None


moments.register_autograd(_moments_backward, setup_context=_moments_setup)


# --------------------------------------------------------------------------------------------------- apply
def _apply_impl(
    x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int, slope: float = 0.0
) -> Tensor:
    xs, p = _layout.prepare(x, axis)
    y = _buffer_cache.empty_like(xs)
    xv = _layout.view(xs, p)
    _kernel(p, "apply")(xv, _layout.empty_mask(p), groups, _gc(mean, groups, p.c), _gc(scale, groups, p.c),
                        _gc(shift, groups, p.c), act, slope, _empty_like_view(xv), _layout.view(y, p))
    return y


@torch.library.custom_op("normlab::apply", mutates_args=())
def apply(
    x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int, slope: float = 0.0
) -> Tensor:
    return _apply_impl(x, mean, scale, shift, axis, groups, act, slope)


@apply.register_fake
def _(x, mean, scale, shift, axis, groups, act, slope=0.0):
    return torch.empty_like(x)


def _apply_backward_impl(
    dy: Tensor, x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int,
    slope: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, sum dy', sum dy' * (x - mean))`` with dy' = dy * act'(z): one reduction pass, one apply pass."""
    xs, p = _layout.prepare(x, axis)
    dys = _layout.like(dy, xs)
    dx = _buffer_cache.empty_like(xs)
    mean_, scale_, shift_ = (_gc(t, groups, p.c) for t in (mean, scale, shift))
    s_dy, s_dyx = _backward_kernel(
        p, _layout.view(dys, p), _layout.view(xs, p), _layout.empty_mask(p), groups, mean_, scale_, shift_,
        np.zeros((2, groups, p.c)), act, slope, _layout.view(dx, p))
    return dx, _to(s_dy, x), _to(s_dyx, x)


@torch.library.custom_op("normlab::apply_backward", mutates_args=())
def apply_backward(
    dy: Tensor, x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int,
    slope: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    return _apply_backward_impl(dy, x, mean, scale, shift, axis, groups, act, slope)


@apply_backward.register_fake
def _(dy, x, mean, scale, shift, axis, groups, act, slope=0.0):
    C = x.shape[axis % x.ndim]
    return torch.empty_like(x), x.new_empty((groups, C)), x.new_empty((groups, C))


def _apply_setup(ctx, inputs, output):
    x, mean, scale, shift, axis, groups, act, slope = inputs
    ctx.save_for_backward(x, mean, scale, shift)
    ctx.axis, ctx.groups, ctx.act, ctx.slope = axis, groups, act, slope
    ctx.shapes = (mean.shape, scale.shape, shift.shape)
    ctx.eager = False


def _per_group(t: Tensor, x: Tensor, axis: int, groups: int) -> Tensor:
    """A per-channel ``(C,)`` or per-(group, channel) ``(G, C)`` tensor shaped to broadcast against ``x`` viewed
    as (G, N/G, ...)."""
    C = x.shape[axis % x.ndim]
    return _bcast(t.reshape(-1, C).expand(groups, C), x, axis, groups)


def _composite_apply(x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int,
                     slope: float = 0.0) -> Tensor:
    """``normlab::apply`` from differentiable torch operators (for gradients of every order)."""
    z = (_grouped(x, groups) - _per_group(mean, x, axis, groups)) * _per_group(scale, x, axis, groups)
    z = z + _per_group(shift, x, axis, groups)
    return activate(z, act, slope).reshape(x.shape)


def _composite_train(x: Tensor, weight: Tensor, bias: Tensor, eps: float, axis: int, groups: int, act: int,
                     mask: Tensor | None, rd: Tensor, slope: float = 0.0, residual: Tensor | None = None) -> Tensor:
    """``normlab::batch_norm_train``'s output from differentiable torch operators (for gradients of every order),
    batch renormalization's r and d (``rd``) held constant as in the kernels' backward."""
    from .. import _stats

    c = axis % x.ndim
    xg = _grouped(x, groups)
    dims = tuple(d for d in range(xg.ndim) if d not in (0, c + 1))
    mg = None
    if mask is not None:
        shape = list(x.shape)
        shape[c] = 1
        mg = _grouped(mask.expand(shape), groups)
        xg = torch.where(mg, xg, xg.new_zeros(()))  # padding out of the arithmetic (it may hold NaN)
    st = _stats.moments(xg, dims, mask=mg, keepdim=True)
    z = (xg - st.mean) * torch.rsqrt(st.var + eps)
    z = z * _bcast(rd[0], x, axis, groups) + _bcast(rd[1], x, axis, groups)
    z = z * _per_group(weight, x, axis, groups) + _per_group(bias, x, axis, groups)
    if residual is not None:
        z = z + _grouped(residual, groups)
    y = activate(z, act, slope)
    if mg is not None:
        y = torch.where(mg, y, y.new_zeros(()))
    return y.reshape(x.shape)


def _apply_backward(ctx, dy):
    # y = act(z), z = (x - mean) * scale + shift:  dx = dy' scale, dmean = -sum dy' scale,
    # dscale = sum dy' (x - mean), dshift = sum dy'  (sums per (group, channel), then to each input's shape).
    x, mean, scale, shift = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiate the composite, exact at every order
        from .native import double_backward_grads

        axis, groups, act, slope = ctx.axis, ctx.groups, ctx.act, ctx.slope
        grads = double_backward_grads(lambda a, m, s, b: _composite_apply(a, m, s, b, axis, groups, act, slope),
                                      (x, mean, scale, shift), ctx.needs_input_grad[:4], dy)
        return (*grads, None, None, None, None)
    backward = _apply_backward_impl if ctx.eager else apply_backward
    dx, s_dy, s_dyx = backward(dy, x, mean, scale, shift, ctx.axis, ctx.groups, ctx.act, ctx.slope)
    C = s_dy.shape[1]
    s_scale = scale.detach().reshape(-1, C).expand(ctx.groups, C)

    def fit(g: Tensor, shape) -> Tensor:
        return g.sum(0).reshape(shape) if len(shape) < 2 else g.reshape(shape)

    d_mean = fit(-s_dy * s_scale, ctx.shapes[0])
    return dx, d_mean, fit(s_dyx, ctx.shapes[1]), fit(s_dy, ctx.shapes[2]), None, None, None, None


apply.register_autograd(_apply_backward, setup_context=_apply_setup)


# ------------------------------------------------------------------------------------------ fused training
def _train_impl(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, axis: int, groups: int, act: int,
    mask: Tensor | None = None, renorm: Tensor | None = None, slope: float = 0.0, residual: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    xs, p = _layout.prepare(x, axis)
    xv = _layout.view(xs, p)
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or mask is not None):
        raise ValueError(f"normlab::batch_norm_train: the residual must have the input's shape {tuple(x.shape)} "
                         f"and dtype {x.dtype} and no mask be given, got {tuple(residual.shape)} {residual.dtype}"
                         f"{' with a mask' if mask is not None else ''}")
    resv = _layout.view(_layout.like(residual, xs), p) if residual is not None else _empty_like_view(xv)
    y = _buffer_cache.empty_like(xs)
    yv = _layout.view(y, p)
    m = _mask(mask, xs, axis, p)
    mean, var, count = (np.empty((groups, p.c)) for _ in range(3))
    rd = np.empty((2, groups, p.c))
    w, b = _vec(weight), _vec(bias)
    if w.shape[0] != p.c or b.shape[0] != p.c:  # the kernels read them per channel, unchecked
        raise ValueError(f"normlab::batch_norm_train: expected weight and bias of {p.c} values (the channels), "
                         f"got {w.shape[0]} and {b.shape[0]}")
    ren = _gc(renorm, 4, p.c) if renorm is not None else np.empty((0, 0))
    if p.kind == _layout.NCS:
        _k().ncs_train_forward(xv, m, groups, w, b, eps, ren, act, slope, resv, yv, mean, var, count, rd)
    else:  # channel innermost: a statistics sweep, then the apply sweep
        _k().mc_moments(xv, m, groups, mean, var, count)
        scale, shift = _k().train_coefficients(mean, var, eps, w, b, ren, rd)
        _k().mc_apply(xv, m, groups, mean, scale, shift, act, slope, resv, yv)
    if renorm is None:
        rd[0], rd[1] = 1.0, 0.0
    return y, _to(mean, x), _to(var, x), _to(count, x), _to(rd, x)


@torch.library.custom_op("normlab::batch_norm_train", mutates_args=())
def batch_norm_train(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, axis: int, groups: int, act: int,
    mask: Tensor | None = None, renorm: Tensor | None = None, slope: float = 0.0, residual: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _train_impl(x, weight, bias, eps, axis, groups, act, mask, renorm, slope, residual)


@batch_norm_train.register_fake
def _(x, weight, bias, eps, axis, groups, act, mask=None, renorm=None, slope=0.0, residual=None):
    C = x.shape[axis % x.ndim]
    return (torch.empty_like(x), x.new_empty((groups, C)), x.new_empty((groups, C)), x.new_empty((groups, C)),
            x.new_empty((2, groups, C)))


def _train_backward_impl(
    dy: Tensor, x: Tensor, mean: Tensor, var: Tensor, count: Tensor, rd: Tensor, weight: Tensor, bias: Tensor,
    eps: float, axis: int, groups: int, act: int, mask: Tensor | None = None, slope: float = 0.0,
    y: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias, dresidual)`` of the fused training op, r and d held constant (as batch renorm
    prescribes); ``dresidual`` is empty unless ``y`` (the output of a residual epilogue) is given.

    With rs = 1/sqrt(var + eps), xhat = (x - mean) rs, m valid values per (group, channel) and y = w (r xhat + d) + b:
    dx = w r rs (dy' - sum(dy') / m - xhat sum(dy' xhat) / m), dweight = sum dy' (r xhat + d), dbias = sum dy';
    with a residual, act' is read from the output y and dresidual = dy'.
    """
    xs, p = _layout.prepare(x, axis)
    dys = _layout.like(dy, xs)
    dx = _buffer_cache.empty_like(xs)
    ys = _layout.like(y, xs) if y is not None else None
    dres = _buffer_cache.empty_like(xs) if y is not None else x.new_empty((0,))
    G, C = groups, p.c
    mu, scale, shift, rs = np.empty((G, C)), np.empty((G, C)), np.empty((G, C)), np.empty((G, C))
    coupling = np.empty((2, G, C))
    # the forward's outputs as they are (input dtype, (G, C)): one kernel call derives every coefficient
    _k().train_backward_coefficients(_arr(mean, (G, C), x), _arr(var, (G, C), x), _arr(count, (G, C), x),
                                     _arr(rd, (2, G, C), x), _arr(weight, (C,), x), _arr(bias, (C,), x), float(eps),
                                     mu, scale, shift, coupling, rs)
    s_dy, s_dyx = _backward_kernel(
        p, _layout.view(dys, p), _layout.view(xs, p), _mask(mask, xs, axis, p), groups, mu, scale, shift,
        coupling, act, slope, _layout.view(dx, p), None if ys is None else _layout.view(ys, p),
        None if ys is None else _layout.view(dres, p))
    dtype = _NUMPY_DTYPE.get(x.dtype, np.float64)
    dweight, dbias = np.empty(C, dtype), np.empty(C, dtype)
    _k().train_parameter_grads(_arr(rd, (2, G, C), x), rs, s_dy, s_dyx, dweight, dbias)
    return dx, _from(dweight, x), _from(dbias, x), dres


@torch.library.custom_op("normlab::batch_norm_train_backward", mutates_args=())
def batch_norm_train_backward(
    dy: Tensor, x: Tensor, mean: Tensor, var: Tensor, count: Tensor, rd: Tensor, weight: Tensor, bias: Tensor,
    eps: float, axis: int, groups: int, act: int, mask: Tensor | None = None, slope: float = 0.0,
    y: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _train_backward_impl(dy, x, mean, var, count, rd, weight, bias, eps, axis, groups, act, mask, slope, y)


@batch_norm_train_backward.register_fake
def _(dy, x, mean, var, count, rd, weight, bias, eps, axis, groups, act, mask=None, slope=0.0, y=None):
    C = x.shape[axis % x.ndim]
    return (torch.empty_like(x), x.new_empty((C,)), x.new_empty((C,)),
            torch.empty_like(x) if y is not None else x.new_empty((0,)))


def _train_setup(ctx, inputs, output):
    x, weight, bias, eps, axis, groups, act, mask, renorm, slope, residual = inputs
    y, mean, var, count, rd = output
    # the residual epilogue's backward reads act' from the output (x alone no longer gives the pre-activation)
    ctx.save_for_backward(x, mean, var, count, rd, weight, bias, mask, y if residual is not None else None,
                          residual)
    ctx.eps, ctx.axis, ctx.groups, ctx.act, ctx.slope = eps, axis, groups, act, slope
    ctx.mark_non_differentiable(mean, var, count, rd)
    ctx.eager = False


def _train_backward(ctx, dy, d_mean, d_var, d_count, d_rd):
    if dy is None:  # only the (non-differentiable) statistics were used; eager lane, grads not materialized
        return (None,) * 11
    x, mean, var, count, rd, weight, bias, mask, y, residual = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiate the composite, exact at every order
        from .native import double_backward_grads

        eps, axis, groups, act, slope = ctx.eps, ctx.axis, ctx.groups, ctx.act, ctx.slope
        needs = ctx.needs_input_grad
        if residual is None:
            grads = double_backward_grads(
                lambda a, w, b: _composite_train(a, w, b, eps, axis, groups, act, mask, rd, slope),
                (x, weight, bias), needs[:3], dy,
            )
            return (*grads, None, None, None, None, None, None, None, None)
        dx, dw, db, dr = double_backward_grads(
            lambda a, w, b, r: _composite_train(a, w, b, eps, axis, groups, act, mask, rd, slope, r),
            (x, weight, bias, residual), (*needs[:3], needs[10]), dy,
        )
        return dx, dw, db, None, None, None, None, None, None, None, dr
    backward = _train_backward_impl if ctx.eager else batch_norm_train_backward
    dx, dw, db, dr = backward(dy, x, mean, var, count, rd, weight, bias, ctx.eps, ctx.axis, ctx.groups, ctx.act,
                              mask, ctx.slope, y)
    return dx, dw, db, None, None, None, None, None, None, None, (dr if residual is not None else None)


batch_norm_train.register_autograd(_train_backward, setup_context=_train_setup)


# ------------------------------------------------------------------------------------- the eager fast lane
# A custom op costs ~0.1 ms of dispatch per call (its Python wrapper, dynamo's guard, the autograd shim) and its
# backward ~0.3 ms: as much as the whole kernel for a 1 M-value tensor. In plain eager mode the same
# implementation runs behind a torch.autograd.Function instead, with the same setup and backward functions as
# the registered ops; under torch.compile / export / make_fx (or any dispatch mode), the ops above are used, so
# graphs still see one operator.


def _is_eager() -> bool:
    return not torch.compiler.is_compiling() and _python_dispatch._get_current_dispatch_mode() is None


def _eager_lane(name: str, impl, setup, backward_, *, materialize_grads: bool = True) -> type[torch.autograd.Function]:
    """A ``torch.autograd.Function`` running ``impl`` with the registered op's ``setup`` and ``backward``: one
    definition for both ops' eager lanes. ``materialize_grads=False`` builds no zero gradients for outputs that
    received none (the training op's statistics outputs)."""

    class Lane(torch.autograd.Function):
        # old-style forward(ctx, ...): the setup_context style re-inspects signatures on every call (~50 us here)
        @staticmethod
        def forward(ctx, *inputs):
            output = impl(*inputs)
            setup(ctx, inputs, output)
            ctx.eager = True
            if not materialize_grads:
                ctx.set_materialize_grads(False)
            return output

        @staticmethod
        def backward(ctx, *grads):  # first order on the kernels; a graph of the backward through the composite
            return backward_(ctx, *grads)

    Lane.__name__ = Lane.__qualname__ = name
    return Lane


_EagerTrain = _eager_lane("_EagerTrain", _train_impl, _train_setup, _train_backward, materialize_grads=False)
_EagerApply = _eager_lane("_EagerApply", _apply_impl, _apply_setup, _apply_backward)


def train(x: Tensor, weight: Tensor, bias: Tensor, eps: float, axis: int, groups: int, act: int,
          mask: Tensor | None = None, renorm: Tensor | None = None, slope: float = 0.0,
          residual: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``normlab::batch_norm_train`` (the op when a graph is being captured, the eager lane otherwise)."""
    if _is_eager():
        return _EagerTrain.apply(x, weight, bias, eps, axis, groups, act, mask, renorm, slope, residual)
    return batch_norm_train(x, weight, bias, eps, axis, groups, act, mask, renorm, slope, residual)


def apply_affine(x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, axis: int, groups: int, act: int,
                 slope: float = 0.0) -> Tensor:
    """``normlab::apply`` (the op when a graph is being captured, the eager lane otherwise)."""
    if _is_eager():
        return _EagerApply.apply(x, mean, scale, shift, axis, groups, act, slope)
    return apply(x, mean, scale, shift, axis, groups, act, slope)
