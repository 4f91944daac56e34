"""Fast CPU kernels for the four steps every batch-statistic layer makes, behind a dispatch.

The steps (numba kernels in :mod:`._numba`, torch custom ops in :mod:`.ops`):

1. statistics  — per-channel mean and biased variance, exact-centred, optionally per virtual batch and under a mask;
2. apply       — ``y = act((x - mean) * scale + shift)``, i.e. ``x * a + b`` per channel, optionally fused with ReLU;
3. backward reductions — ``sum dy`` and ``sum dy * xhat`` per channel;
4. backward apply      — ``dx = k_dy * dy + k_x * (x - mean) + k_0`` per channel.

The functions below take the same arguments as :mod:`normlab._stats` (``moments``, ``normalize``) plus
``groups``/``act``, and choose the kernels or torch's native operators through :mod:`.dispatch`
(``NORMLAB_KERNELS=auto|fast|native``, :func:`set_backend`, :func:`backend`). Both paths return the same values
to rounding; the tests check that.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch
from torch import Tensor

from .. import _stats, _validate
from ._pool import cache_info, empty_cache
from .dispatch import AUTO_MIN_NUMEL, BACKENDS, backend, get_backend, numba_available, set_backend, supported, use_fast

__all__ = [
    "AUTO_MIN_NUMEL",
    "BACKENDS",
    "ACTIVATIONS",
    "backend",
    "batch_norm_train",
    "cache_info",
    "empty_cache",
    "get_backend",
    "moments",
    "normalize",
    "numba_available",
    "set_backend",
    "supported",
    "use_fast",
]

#: Activations the apply step can fuse (name -> kernel flag).
ACTIVATIONS = {"none": 0, "relu": 1}


def _act(act: str, name: str) -> int:
    if act not in ACTIVATIONS:
        raise ValueError(f"{name}: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    return ACTIVATIONS[act]


def _check_groups(x: Tensor, groups: int, name: str) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or x.shape[0] % groups:
        raise ValueError(f"{name}: groups must be a positive int dividing the batch size {x.shape[0]}, got {groups!r}")


def _ops():
    from . import ops

    return ops


def _activate(y: Tensor, act: int) -> Tensor:
    return torch.relu(y) if act else y


# --------------------------------------------------------------------------------------------------- moments
def _channel_of(ndim: int, dims: tuple[int, ...]) -> tuple[int, int] | None:
    """(channel axis, groups-from-dim-0 flag) when ``dims`` are all dims but the channel (or but dim 0 and it)."""
    kept = [d for d in range(ndim) if d not in {d % ndim for d in dims}]
    if len(kept) == 1:
        return kept[0], 0
    if len(kept) == 2 and kept[0] == 0:
        return kept[1], 1
    return None


def moments(x: Tensor, dims: tuple[int, ...], *, mask: Tensor | None = None, keepdim: bool = False) -> _stats.Moments:
    """:func:`normlab._stats.moments` on the kernels when they apply.

    The kernels cover per-channel statistics (``dims`` = every dim but one channel axis) and per-(dim-0, channel)
    statistics (every dim but 0 and the channel axis: ghost batches laid out as ``(G, N/G, C, ...)``), with an
    optional position mask (size 1 along the channel axis). Other reductions take the native path.
    """
    where = _channel_of(x.ndim, tuple(dims)) if x.ndim >= 2 else None
    if where is None or not use_fast(x, where[0]):
        return _stats.moments(x, dims, mask=mask, keepdim=keepdim)
    c, grouped = where
    if mask is not None:
        if mask.ndim > x.ndim or (mask.ndim == x.ndim and mask.shape[c] != 1):
            return _stats.moments(x, dims, mask=mask, keepdim=keepdim)
        mask = mask.to(torch.bool)
    if grouped:
        G = x.shape[0]
        flat = x.reshape((-1,) + tuple(x.shape[2:])) if c > 1 else None
        if flat is None:  # channel at dim 1 right after the group dim: not a ghost layout the kernel can read
            return _stats.moments(x, dims, mask=mask, keepdim=keepdim)
        m_flat = None if mask is None else mask.expand(x.shape[:c] + (1,) + x.shape[c + 1 :]).reshape(flat.shape[: c - 1] + (1,) + flat.shape[c:])
        mean, var, count = _ops().moments(flat, c - 1, G, m_flat)
    else:
        mean, var, count = _ops().moments(x, c, 1, mask)
        mean, var, count = mean[0], var[0], count[0]
    n = count if mask is not None else x.numel() // (x.shape[c] * (x.shape[0] if grouped else 1))
    if keepdim:
        shape = [1] * x.ndim
        shape[c] = x.shape[c]
        if grouped:
            shape[0] = x.shape[0]
        mean, var = mean.reshape(shape), var.reshape(shape)
        if mask is not None:
            n = n.reshape(shape)
    return _stats.Moments(mean, var, n)


# ------------------------------------------------------------------------------------------------- normalize
def normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    axis: int = 1,
    act: str = "none",
) -> Tensor:
    """:func:`normlab._stats.normalize` (then the activation) on the kernels when they apply.

    ``y = act((x - mean) * scale + shift)`` with ``scale = weight / sqrt(var + eps)`` and ``shift = bias``;
    gradients reach ``x``, ``mean``, ``var``, ``weight`` and ``bias``.
    """
    a = _act(act, "normlab.kernels.normalize")
    if not use_fast(x, axis % x.ndim if x.ndim else None) or mean.dtype != x.dtype:
        if (
            _torch_kernel_ok(x) and mean.dtype == x.dtype and var.dtype == x.dtype
            and not (torch.is_grad_enabled() and (mean.requires_grad or var.requires_grad))
            and not torch.jit.is_tracing()
        ):  # torch's fused operator: no gradient for the statistics; tracing (ONNX export) keeps the composite
            return _activate(_torch_eval(x, mean, var, weight, bias, eps, _stats.channel_axis(x.ndim, axis)), a)
        return _activate(_stats.normalize(x, mean, var, weight, bias, eps, axis=axis), a)
    c = _stats.channel_axis(x.ndim, axis)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(scale.dtype)
    shift = bias.to(x.dtype) if bias is not None else torch.zeros_like(scale)
    return _ops().apply_affine(x, mean, scale, shift, c, 1, a)


# ------------------------------------------------------------------------------------------- fused training
def batch_norm_train(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    axis: int = 1,
    groups: int = 1,
    act: str = "none",
    mask: Tensor | None = None,
    renorm: tuple[Tensor, Tensor, float, float] | None = None,
) -> tuple[Tensor, _stats.Moments]:
    """Training-mode batch norm: ``(y, Moments(mean, var, count))`` from the batch's own statistics.

    ``mask`` (bool, size 1 along the channel axis, broadcastable to ``x``) keeps only the valid positions in the
    statistics; padded outputs and their gradients are 0 (``count`` is then a tensor). ``renorm = (ref_mean,
    ref_std, r_max, d_max)`` makes it batch renormalization (Ioffe 2017): ``y = w (r xhat + d) + b`` with
    ``r = clip(sigma_B / ref_std, 1/r_max, r_max)``, ``d = clip((mu_B - ref_mean) / ref_std, -d_max, d_max)``
    held constant in the gradient.

    With ``groups = G`` the batch (dim 0) is split into G virtual batches normalized separately (ghost batch
    norm, Hoffer et al. 2017); ``mean``/``var`` then have shape ``(G, C)``, else ``(C,)``. ``act="relu"`` fuses
    the activation. The statistics are returned detached (for the running averages); gradients flow through
    ``y`` to ``x``, ``weight`` and ``bias`` as if the statistics were computed by differentiable ops.
    """
    name = "normlab.kernels.batch_norm_train"
    a = _act(act, name)
    _check_groups(x, groups, name)
    c = _stats.channel_axis(x.ndim, axis)
    # the kernels index these per channel without bounds checks: a wrong length must not reach them
    _validate.check_vector(weight, name, "weight", x.shape[c])
    _validate.check_vector(bias, name, "bias", x.shape[c])
    if renorm is not None:
        _validate.check_vector(renorm[0], name, "renorm's reference mean", x.shape[c])
        _validate.check_vector(renorm[1], name, "renorm's reference std", x.shape[c])
    if mask is not None or renorm is not None:
        return _variant_train(x, weight, bias, eps, c, groups, a, mask, renorm, name)
    count = x.numel() // (x.shape[c] * groups)
    if not use_fast(x, c):
        y, mean, var = _native_train(x, weight, bias, eps, c, groups, a)
    else:
        C = x.shape[c]
        w = weight.to(x.dtype) if weight is not None else x.new_ones(C)
        b = bias.to(x.dtype) if bias is not None else x.new_zeros(C)
        y, mean, var, _, _ = _ops().train(x, w, b, eps, c, groups, a)
    if groups == 1:
        mean, var = mean.reshape(-1), var.reshape(-1)
    return y, _stats.Moments(mean, var, count)


#: Largest |batch mean| / batch std (over channels) at which torch's float32 CPU batch_norm is used on the input as
#: it is. torch folds the mean into a shift (y = x * a + (b - mean * a)) and accumulates the channels-last / 2-D
#: statistics sequentially, so its error grows with that ratio (at mean 1e4, std 1: 9e-4 on y for NCHW, 4.4 for a
#: 32x4x64x64 channels-last input); above it, the call is redone on the input minus that mean (see _torch_train).
SHIFT_RATIO = 8.0
#: The dtypes that need the check (float64's error at ratio R is ~R * 1e-16); tests add float64 to gradcheck the shift.
_SHIFT_DTYPES = (torch.float32,)
_INF = float("inf")


def _torch_kernel_ok(x: Tensor) -> bool:
    """Whether torch's fused CPU batch_norm serves the native path for ``x`` (float32/64, CPU, rank >= 2, not empty)."""
    return (x.dtype is torch.float32 or x.dtype is torch.float64) and x.is_cpu and x.ndim >= 2 and x.numel() > 0


def _channel_second(x: Tensor, c: int) -> Tensor:
    """``x`` with its channels on dim 1, as torch's operator wants: a contiguous channels-last-dim input (N, L, C)
    is viewed as (N * L, C), the operator's 2-D fast path; other axes are moved (a strided view)."""
    if c == 1:
        return x
    if c == x.ndim - 1 and x.is_contiguous():
        return x.reshape(-1, x.shape[c])
    return x.movedim(c, 1)


def _channel_back(y: Tensor, x: Tensor, c: int) -> Tensor:
    if c == 1:
        return y
    if c == x.ndim - 1 and x.is_contiguous():  # the (N * L, C) view of _channel_second
        return y.reshape(x.shape)
    return y.movedim(1, c)


_scratch = threading.local()


def _exceeds(mean: np.ndarray, invstd: np.ndarray, work: np.ndarray | None) -> bool:
    """max |mean * invstd| > SHIFT_RATIO: one numba call (~1 us) when the kernels are installed, else NumPy."""
    if numba_available():
        return bool(_ops()._k().exceeds_ratio(mean, invstd, SHIFT_RATIO))
    prod = np.multiply(mean, invstd, out=work)
    return bool(np.abs(prod, out=prod).max() > SHIFT_RATIO)


def _stat_vectors(C: int, dtype: torch.dtype) -> tuple:
    """This thread's reusable (mean, invstd) tensors of C values on NumPy arrays, plus a NumPy work vector (only
    for calls without autograd, which keeps no reference to them)."""
    cache = getattr(_scratch, "vectors", None)
    if cache is None:
        cache = _scratch.vectors = {}
    hit = cache.get((C, dtype))
    if hit is None:
        if len(cache) >= 64:
            cache.clear()
        arrays = [np.empty(C, dtype=np.float32 if dtype is torch.float32 else np.float64) for _ in range(3)]
        hit = cache[(C, dtype)] = (torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]), *arrays)
    return hit


def _torch_train(x: Tensor, weight, bias, eps: float, c: int, running: tuple | None):
    """Training-mode batch norm on torch's fused CPU operator, kept accurate in float32 by shift invariance.

    Batch norm in training mode is invariant to a per-channel shift: BN(x - k) = BN(x) for any constant k, with
    the same Jacobian, so the gradient of BN(x - k) with k detached is the gradient of BN(x). torch's float32
    kernel is accurate when |mean| / std is small; when the first call shows a larger ratio (> SHIFT_RATIO), it
    is redone on x - k with k = that call's (detached) mean, whose own mean is then small, and the statistics are
    k + the shifted call's. ``running = (running_mean, running_var, momentum)`` (the input's dtype, unbiased
    running variance) are updated in place by the kernel itself (and corrected after a redo); else the
    statistics come back through zero buffers updated with momentum 1 (exact copies, the variance unbiased and
    computed by the kernel from centred values, not recovered from 1/sqrt(var + eps)).
    Returns ``(y, mean, biased var)``, or ``(y, None, None)`` when ``running`` was updated.
    """
    xm = _channel_second(x, c)
    C = xm.shape[1]
    n = xm.numel() // C
    w = weight.to(x.dtype) if weight is not None and weight.dtype != x.dtype else weight
    b = bias.to(x.dtype) if bias is not None and bias.dtype != x.dtype else bias
    if running is None:
        rm, rv, f = x.new_zeros(C), x.new_zeros(C), 1.0
    else:
        rm, rv, f = running
    shift = False
    if x.dtype not in _SHIFT_DTYPES:
        y, mean1, invstd1 = torch.native_batch_norm(xm, w, b, rm, rv, True, f, eps)
    elif torch.jit.is_tracing() or torch.compiler.is_compiling():  # no data-dependent branch in a graph
        y, mean1, invstd1 = torch.native_batch_norm(xm, w, b, rm, rv, True, f, eps)
        shift = True
    elif not torch.is_grad_enabled():
        # forward only: the statistics go to this thread's NumPy-backed vectors (out=), so the check is three
        # NumPy calls (~2 us) instead of two operators and a sync (~8 us, a third of torch's call at 32x128)
        mean1, invstd1, mean_np, invstd_np, work = _stat_vectors(C, x.dtype)
        y = torch.empty_like(xm)
        torch.native_batch_norm(xm, w, b, rm, rv, True, f, eps, out=(y, mean1, invstd1))
        shift = _exceeds(mean_np, invstd_np, work)
    else:
        y, mean1, invstd1 = torch.native_batch_norm(xm, w, b, rm, rv, True, f, eps)
        # the statistics outputs carry no gradient, so NumPy can read them (two NumPy calls, no torch operator)
        m_np, i_np = mean1.detach().numpy(), invstd1.detach().numpy()
        shift = _exceeds(m_np, i_np, None)
    if shift:
        k = mean1  # the operator's statistics are outputs without gradient (nothing to detach)
        shape = [1] * xm.ndim
        shape[1] = C
        rm2, rv2 = x.new_zeros(C), x.new_zeros(C)
        y = torch.native_batch_norm(xm - k.reshape(shape), w, b, rm2, rv2, True, 1.0, eps)[0]
        with torch.no_grad():
            if running is None:
                rm, rv = rm + rm2, rv2  # mean = k + the shifted mean; the variance is the shifted call's
            else:
                # the first call put momentum * (mean1, var1) into the buffers: move them to the shifted call's
                # k + rm2 and rv2 (var1, unbiased, recovered from invstd1 as the kernel computed it, to
                # ~1e-7 * (var1 + eps): a negligible error even where var << eps)
                var1 = (invstd1.double().pow(-2) - eps).mul_(n / max(n - 1, 1)).to(x.dtype)
                rm.add_(rm2, alpha=f)
                rv.add_(rv2 - var1, alpha=f)  # not in place: rv2 is saved for backward
    y = _channel_back(y, x, c)
    if running is not None:
        return y, None, None
    return y, rm, rv * ((n - 1) / n)  # not in place: the operator saved rv for its backward


# Eval-mode verdicts of _eval_needs_shift, per statistics tensor: a layer's running buffers do not change between
# eval calls, so the check (two operators and a sync, ~25% of torch's whole call on a small tensor) runs once per
# change. Keyed by identity (a weak reference), storage and autograd version counter, which every in-place change
# through the tensor bumps. In-place edits through ``.data`` (its own counter) are not seen: a stale verdict then
# costs either one unneeded subtraction or the shift's extra accuracy (torch's kernel alone: ~0.9 ulp of the mean
# instead of 0.5), nothing more.
_EVAL_VERDICTS: dict[int, tuple] = {}
_EVAL_VERDICTS_MAX = 1024


def _eval_needs_shift(mean: Tensor, var: Tensor, eps: float) -> bool:
    """Whether mean^2 / (var + eps) > SHIFT_RATIO^2 for some channel (cached while the statistics are unchanged)."""
    key = (mean._version, mean.data_ptr(), var._version, var.data_ptr(), eps, SHIFT_RATIO)
    hit = _EVAL_VERDICTS.get(id(mean))
    if hit is not None and hit[0]() is mean and hit[1]() is var and hit[2] == key:
        return hit[3]
    shift = float(torch.addcmul(var, mean, mean, value=-1.0 / SHIFT_RATIO**2).amin()) < -eps
    if len(_EVAL_VERDICTS) >= _EVAL_VERDICTS_MAX:  # statistics that are temporaries: start over, stay small
        _EVAL_VERDICTS.clear()
    _EVAL_VERDICTS[id(mean)] = (weakref.ref(mean), weakref.ref(var), key, shift)
    return shift


def _torch_eval(x: Tensor, mean: Tensor, var: Tensor, weight, bias, eps: float, c: int) -> Tensor:
    """Normalization with given statistics on torch's fused CPU operator (one operator for small tensors).

    torch computes ``x * a + (bias - mean * a)`` with ``a = weight / sqrt(var + eps)``: in float32 that loses
    about |mean| * a ulps, so above SHIFT_RATIO the mean is subtracted first (exactly, as x and mean are close)
    and the operator gets a zero mean.
    """
    xm = _channel_second(x, c)
    w = weight.to(x.dtype) if weight is not None and weight.dtype != x.dtype else weight
    b = bias.to(x.dtype) if bias is not None and bias.dtype != x.dtype else bias
    if x.dtype in _SHIFT_DTYPES and (
        torch.compiler.is_compiling() or _eval_needs_shift(mean, var, eps)  # no data-dependent branch in a graph
    ):
        shape = [1] * xm.ndim
        shape[1] = -1
        y = torch.native_batch_norm(xm - mean.reshape(shape), w, b, torch.zeros_like(mean), var, False, 0.0, eps)[0]
    else:
        y = torch.native_batch_norm(xm, w, b, mean, var, False, 0.0, eps)[0]
    return _channel_back(y, x, c)


def _native_train(x: Tensor, weight, bias, eps: float, c: int, groups: int, act: int):
    """The same computation with torch's operators, for the native path."""
    if groups == 1 and _torch_kernel_ok(x) and x.numel() > x.shape[c]:
        y, mean, var = _torch_train(x, weight, bias, eps, c, None)
        return _activate(y, act), mean, var
    if groups == 1:
        stats = _stats.moments(x, _stats.reduce_dims(x.ndim, c))
        y = _stats.normalize(x, stats.mean, stats.var, weight, bias, eps, axis=c)
        return _activate(y, act), stats.mean.detach(), stats.var.detach()
    xg = x.reshape((groups, x.shape[0] // groups) + tuple(x.shape[1:]))
    stats = _stats.moments(xg, tuple(d for d in range(xg.ndim) if d not in (0, c + 1)), keepdim=True)
    scale = torch.rsqrt(stats.var + eps)
    if weight is not None:
        scale = scale * _stats.channel_view(weight.to(scale.dtype), xg.ndim, c + 1)
    y = (xg.to(stats.mean.dtype) - stats.mean) * scale
    if bias is not None:
        y = y + _stats.channel_view(bias.to(y.dtype), xg.ndim, c + 1)
    y = _activate(y.reshape(x.shape).to(x.dtype), act)
    C = x.shape[c]
    return y, stats.mean.detach().reshape(groups, C), stats.var.detach().reshape(groups, C)


def _variant_train(x: Tensor, weight, bias, eps: float, c: int, groups: int, act: int, mask, renorm, name: str):
    """batch_norm_train with a position mask and/or batch renormalization: the fused kernel, or _stats' steps."""
    C = x.shape[c]
    if mask is not None:
        if (mask.dtype != torch.bool or mask.ndim != x.ndim or mask.shape[c] != 1
                or any(m not in (1, n) for m, n in zip(mask.shape, x.shape))):
            raise ValueError(f"{name}: expected a bool mask of rank {x.ndim} with size 1 on the channel axis {c}, "
                             f"broadcastable to the input's shape {tuple(x.shape)}, got {mask.dtype} of shape "
                             f"{tuple(mask.shape)}")
    if renorm is not None:
        ref_mean, ref_std, r_max, d_max = renorm
        limits = torch.tensor([float(r_max), float(d_max)], dtype=torch.float64)
        table = torch.cat([ref_mean.detach().double().reshape(1, C), ref_std.detach().double().reshape(1, C),
                           limits.reshape(2, 1).expand(2, C)])
    if use_fast(x, c):
        w = weight.to(x.dtype) if weight is not None else x.new_ones(C)
        b = bias.to(x.dtype) if bias is not None else x.new_zeros(C)
        m = mask.expand(x.shape[:c] + (1,) + x.shape[c + 1:]).contiguous() if mask is not None else None
        y, mean, var, count, _ = _ops().train(
            x, w, b, eps, c, groups, act, m, table.to(x.dtype) if renorm is not None else None)
    else:
        if groups != 1:
            raise ValueError(f"{name}: virtual batches (groups={groups}) with a mask or renorm need the kernels")
        dims = _stats.reduce_dims(x.ndim, c)
        x_in = torch.where(mask, x, x.new_zeros(())) if mask is not None else x
        stats = _stats.moments(x_in, dims, mask=mask)
        w, b = weight, bias
        if renorm is not None:
            r, d = _stats.renorm_correction(stats, table[0], table[1], eps, table[2, 0].item(), table[3, 0].item())
            w = r if weight is None else weight * r
            b = d if weight is None else weight * d
            if bias is not None:
                b = b + bias
        y = _activate(_stats.normalize(x_in, stats.mean, stats.var, w, b, eps, axis=c), act)
        if mask is not None:
            y = torch.where(mask, y, y.new_zeros(()))
        mean, var = stats.mean.detach().reshape(1, C), stats.var.detach().reshape(1, C)
        count = stats.count if isinstance(stats.count, Tensor) else torch.full_like(mean, stats.count)
        count = count.reshape(1, C)
    if groups == 1:
        mean, var, count = mean.reshape(-1), var.reshape(-1), count.reshape(-1)
    if mask is None:
        count = x.numel() // (C * groups)
    return y, _stats.Moments(mean, var, count)
