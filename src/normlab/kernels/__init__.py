"""Fast CPU kernels for the four steps every batch-statistic layer makes, behind a dispatch.

The steps (numba kernels in :mod:`._numba`, torch custom ops in :mod:`.ops`):

1. statistics  — per-channel mean and biased variance, exact-centred, optionally per virtual batch and under a mask;
2. apply       — ``y = act((x - mean) * scale + shift [+ residual])``, i.e. ``x * a + b`` per channel, optionally
   fused with ReLU or LeakyReLU (:data:`ACTIVATIONS`) and, in training, a residual add before the activation;
3. backward reductions — ``sum dy`` and ``sum dy * xhat`` per channel;
4. backward apply      — ``dx = k_dy * dy + k_x * (x - mean) + k_0`` per channel.

The functions below take the same arguments as :mod:`normlab._stats` (``moments``, ``normalize``) plus
``groups``/``act``/``negative_slope``, and choose the kernels or torch's native operators through :mod:`.dispatch`
(``NORMLAB_KERNELS=auto|fast|native``, :func:`set_backend`, :func:`backend`). Both paths return the same values
to rounding; the tests check that.

The per-sample norms (LayerNorm, RMSNorm, GroupNorm, InstanceNorm) take their step here too, :func:`sample_norm`
(:mod:`.sample`): torch's fused kernels or the composed steps, chosen here and nowhere else.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _stats, _validate
from . import native
from ._buffer_cache import ENV_VAR as BUFFER_CACHE_ENV_VAR
from ._buffer_cache import cache_info, empty_cache
from .dispatch import (
    AUTO_MIN_NUMEL,
    AUTO_TABLE,
    BACKENDS,
    backend,
    get_backend,
    layout_of,
    numba_available,
    set_backend,
    supported,
    use_fast,
    use_fast_train,
)
from .sample import SampleLayout, layer_norm, sample_norm, sample_steps

__all__ = [
    "AUTO_MIN_NUMEL",
    "AUTO_TABLE",
    "BUFFER_CACHE_ENV_VAR",
    "BACKENDS",
    "ACTIVATIONS",
    "SampleLayout",
    "backend",
    "batch_norm_train",
    "cache_info",
    "empty_cache",
    "get_backend",
    "layer_norm",
    "layout_of",
    "moments",
    "normalize",
    "numba_available",
    "sample_norm",
    "sample_steps",
    "set_backend",
    "supported",
    "use_fast",
]

#: Activations the apply step can fuse (name -> kernel flag): the one table of activation names for the kernels and
#: :class:`normlab.nn.NormAct` ("identity" as ``torch.nn.Identity``; ``leaky_relu`` takes ``negative_slope``).
ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2}


def _act(act: str, name: str, slope: float = 0.0) -> int:
    if act not in ACTIVATIONS:
        raise ValueError(f"{name}: act must be one of {', '.join(map(repr, ACTIVATIONS))}, got {act!r}")
    if act == "leaky_relu" and (isinstance(slope, bool) or not isinstance(slope, (int, float))):
        raise ValueError(f"{name}: negative_slope must be a number, got {slope!r}")
    return ACTIVATIONS[act]


def _check_groups(x: Tensor, groups: int, name: str) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or x.shape[0] % groups:
        raise ValueError(f"{name}: groups must be a positive int dividing the batch size {x.shape[0]}, got {groups!r}")


def _ops():
    from . import ops

    return ops


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
        m_flat = None if mask is None else (
            mask.expand(x.shape[:c] + (1,) + x.shape[c + 1 :]).reshape(flat.shape[: c - 1] + (1,) + flat.shape[c:])
        )
        mean, var, count = _ops().moments(flat, c - 1, G, m_flat)
    else:
        mean, var, count = _ops().moments(x, c, 1, mask)
        mean, var, count = mean[0], var[0], count[0]
    n: Tensor | int = count if mask is not None else x.numel() // (x.shape[c] * (x.shape[0] if grouped else 1))
    if keepdim:
        shape = [1] * x.ndim
        shape[c] = x.shape[c]
        if grouped:
            shape[0] = x.shape[0]
        mean, var = mean.reshape(shape), var.reshape(shape)
        if isinstance(n, Tensor):
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
    act: str = "identity",
    negative_slope: float = 0.01,
) -> Tensor:
    """:func:`normlab._stats.normalize` (then the activation) on the kernels when they apply.

    ``y = act((x - mean) * scale + shift)`` with ``scale = weight / sqrt(var + eps)`` and ``shift = bias``;
    gradients reach ``x``, ``mean``, ``var``, ``weight`` and ``bias``. ``act`` is a key of :data:`ACTIVATIONS`
    (``negative_slope`` for ``"leaky_relu"``); raises ``ValueError`` for another.
    """
    a = _act(act, "normlab.kernels.normalize", negative_slope)
    slope = float(negative_slope) if a == 2 else 0.0
    stats_grad = torch.is_grad_enabled() and (mean.requires_grad or var.requires_grad)
    # Fixed statistics (eval mode) are one pass that torch's fused operator already makes at copy speed: "auto"
    # keeps it there (measured: the apply kernel at 0.3-0.7x torch from 0.4 M to 6.4 M values); the kernel's
    # fused backward pays off only when the statistics carry a gradient (synchronized BN, MABN).
    wanted = stats_grad or get_backend() == "fast"
    if not wanted or not use_fast(x, axis % x.ndim if x.ndim else None) or mean.dtype != x.dtype:
        if (
            native.torch_kernel_ok(x) and mean.dtype == x.dtype and var.dtype == x.dtype
            and not stats_grad and not torch.jit.is_tracing()
        ):  # torch's fused operator: no gradient for the statistics; tracing (ONNX export) keeps the composite
            y = native.torch_eval(x, mean, var, weight, bias, eps, _stats.channel_axis(x.ndim, axis))
            return native.activate(y, a, slope)
        return native.activate(_stats.normalize(x, mean, var, weight, bias, eps, axis=axis), a, slope)
    c = _stats.channel_axis(x.ndim, axis)
    scale = _stats.scale(var, weight, eps)
    shift = bias.to(x.dtype) if bias is not None else torch.zeros_like(scale)
    return _ops().apply_affine(x, mean, scale, shift, c, 1, a, slope)


# ------------------------------------------------------------------------------------------- fused training
def batch_norm_train(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    axis: int = 1,
    groups: int = 1,
    act: str = "identity",
    negative_slope: float = 0.01,
    mask: Tensor | None = None,
    renorm: tuple[Tensor, Tensor, float, float] | None = None,
    residual: Tensor | None = None,
) -> tuple[Tensor, _stats.Moments]:
    """Training-mode batch norm: ``(y, Moments(mean, var, count))`` from the batch's own statistics.

    ``mask`` (bool, size 1 along the channel axis, broadcastable to ``x``) keeps only the valid positions in the
    statistics; padded outputs and their gradients are 0 (``count`` is then a tensor). ``renorm = (ref_mean,
    ref_std, r_max, d_max)`` makes it batch renormalization (Ioffe 2017): ``y = w (r xhat + d) + b`` with
    ``r = clip(sigma_B / ref_std, 1/r_max, r_max)``, ``d = clip((mu_B - ref_mean) / ref_std, -d_max, d_max)``
    held constant in the gradient.

    With ``groups = G`` the batch (dim 0) is split into G virtual batches normalized separately (ghost batch
    norm, Hoffer et al. 2017); ``mean``/``var`` then have shape ``(G, C)``, else ``(C,)``. ``act="relu"`` or
    ``"leaky_relu"`` (with ``negative_slope``) fuses the activation. ``residual`` (a tensor of x's shape and dtype,
    no mask) makes it the residual epilogue of a ResNet block, ``y = act(bn(x) + residual)`` in one pass, the
    backward reading act' from y and giving ``residual`` its gradient (needs ``negative_slope >= 0``: then y > 0
    exactly where the pre-activation is). The statistics are returned detached (for the running averages);
    gradients flow through ``y`` to ``x``, ``weight`` and ``bias`` (and ``residual``) as if the statistics were
    computed by differentiable ops.
    """
    name = "normlab.kernels.batch_norm_train"
    a = _act(act, name, negative_slope)
    slope = float(negative_slope) if a == 2 else 0.0
    _check_groups(x, groups, name)
    c = _stats.channel_axis(x.ndim, axis)
    # the kernels index these per channel without bounds checks: a wrong length must not reach them
    _validate.check_vector(weight, name, "weight", x.shape[c])
    _validate.check_vector(bias, name, "bias", x.shape[c])
    if renorm is not None:
        _validate.check_vector(renorm[0], name, "renorm's reference mean", x.shape[c])
        _validate.check_vector(renorm[1], name, "renorm's reference std", x.shape[c])
    C = x.shape[c]
    if residual is not None:
        if not isinstance(residual, Tensor) or residual.shape != x.shape or residual.dtype != x.dtype \
                or residual.device != x.device:
            got = (f"{type(residual).__name__} of shape {tuple(residual.shape)}, {residual.dtype} on {residual.device}"
                   if isinstance(residual, Tensor) else type(residual).__name__)
            raise ValueError(f"{name}: the residual must be a tensor of the input's shape {tuple(x.shape)}, "
                             f"{x.dtype} on {x.device}, got {got}")
        if mask is not None or renorm is not None or groups != 1:
            raise ValueError(f"{name}: a residual is supported for plain batch norm only (no mask, renorm or groups)")
        if slope < 0:
            raise ValueError(f"{name}: a residual needs negative_slope >= 0 (the backward reads the activation's "
                             f"derivative from the output's sign), got {negative_slope}")
    if mask is not None and (mask.dtype != torch.bool or mask.ndim != x.ndim or mask.shape[c] != 1
                             or any(m not in (1, n) for m, n in zip(mask.shape, x.shape))):
        raise ValueError(f"{name}: expected a bool mask of rank {x.ndim} with size 1 on the channel axis {c}, "
                         f"broadcastable to the input's shape {tuple(x.shape)}, got {mask.dtype} of shape "
                         f"{tuple(mask.shape)}")
    count: Tensor | None = None
    # a training forward no backward can follow decides from the forward-only table (channels-last: torch's),
    # except what only the kernels compute (virtual batches with a mask or renorm)
    fast = use_fast_train(x, c, weight, bias)
    if not fast and groups != 1 and (mask is not None or renorm is not None):
        fast = use_fast(x, c)
    if fast:
        w = weight.to(x.dtype) if weight is not None else x.new_ones(C)
        b = bias.to(x.dtype) if bias is not None else x.new_zeros(C)
        table = None
        if renorm is not None:  # rows: reference mean, reference std, r_max, d_max (per channel, for the kernel)
            ref_mean, ref_std, r_max, d_max = renorm
            table = torch.stack([ref_mean.detach().to(x.dtype), ref_std.detach().to(x.dtype),
                                 x.new_full((C,), float(r_max)), x.new_full((C,), float(d_max))])
        y, mean, var, count, _ = _ops().train(x, w, b, eps, c, groups, a, mask, table, slope, residual)
    elif mask is None and renorm is None:
        y, mean, var = native.train(x, weight, bias, eps, c, groups, a, slope, residual)
    elif groups != 1:
        raise ValueError(f"{name}: virtual batches (groups={groups}) with a mask or renorm need the kernels")
    else:
        y, mean, var, count = _native_variant_train(x, weight, bias, eps, c, a, slope, mask, renorm)
    if groups == 1:
        mean, var = mean.reshape(-1), var.reshape(-1)
        count = count.reshape(-1) if count is not None else None
    if mask is None or count is None:  # without a mask every (group, channel) counts all its values
        return y, _stats.Moments(mean, var, x.numel() // (C * groups))
    return y, _stats.Moments(mean, var, count)


def _native_variant_train(x: Tensor, weight, bias, eps: float, c: int, act: int, slope: float, mask, renorm):
    """A position mask and/or batch renormalization with _stats' steps (the kernels' native twin)."""
    x_in = torch.where(mask, x, x.new_zeros(())) if mask is not None else x  # padding out of the arithmetic
    stats = _stats.moments(x_in, _stats.reduce_dims(x.ndim, c), mask=mask)
    w, b = weight, bias
    if renorm is not None:
        ref_mean, ref_std, r_max, d_max = renorm
        r, d = _stats.renorm_correction(stats, ref_mean, ref_std, eps, r_max, d_max)
        w, b = _stats.renorm_affine(weight, bias, r, d)
    y = native.activate(_stats.normalize(x_in, stats.mean, stats.var, w, b, eps, axis=c), act, slope)
    if mask is not None:
        y = torch.where(mask, y, y.new_zeros(()))
    count = stats.count if isinstance(stats.count, Tensor) else torch.full_like(stats.mean, stats.count)
    return y, stats.mean.detach(), stats.var.detach(), count
