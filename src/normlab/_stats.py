"""The one statistics path and the one normalization path that every normlab layer uses.

Three pure functions on tensors (no modules, keyword-only flags):

* :func:`moments` -> ``Moments(mean, var, count)`` over chosen dims, optionally under a mask. The variance is
  the *biased* one (divide by ``count``), computed from centred values, never as E[x^2] - E[x]^2: that
  difference cancels catastrophically in float32 when |mean| >> std. Half types accumulate in float32.
  Returning ``count`` makes merges exact (ghost batches, masks, several processes): see :func:`merge_moments`.
* :func:`normalize` -> ``(x - mean) * rsqrt(var + eps) * weight + bias`` along one channel axis.
* :func:`track` -> the in-place running-average step of the buffers (count the batch, weigh it by momentum or
  the cumulative average's 1 / counter, :func:`update_running`), in torch's convention
  ``running <- (1 - momentum) * running + momentum * batch`` with the unbiased (torch) or biased (Keras/ONNX)
  variance estimator.

The variance convention, once for the whole package: batch statistics used to *normalize* are always biased;
the *running* variance is unbiased (``count / (count - 1)``) by default, as in torch, or biased when asked
(Keras, ONNX, ``running_var_unbiased=False``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class Moments(NamedTuple):
    """Per-channel statistics: mean, biased variance and the number of values they were taken over.

    ``count`` is a Python int when every channel saw the same number of values, else a tensor like ``mean``.
    """

    mean: Tensor
    var: Tensor
    # shadows tuple.count (the field's name is the statistic's; nobody counts items of a Moments)
    count: int | Tensor  # type: ignore[assignment]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float32 for half types, the input's own otherwise."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def channel_axis(ndim: int, axis: int) -> int:
    """``axis`` as a non-negative index into a tensor of rank ``ndim``."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"channel axis {axis} is out of range for a {ndim}D input")
    return axis % ndim


def reduce_dims(ndim: int, axis: int) -> tuple[int, ...]:
    """All dims except the channel axis: the dims BatchNorm takes its statistics over."""
    c = channel_axis(ndim, axis)
    return tuple(d for d in range(ndim) if d != c)


def channel_view(t: Tensor, ndim: int, axis: int) -> Tensor:
    """View a per-channel vector ``(C,)`` so that it broadcasts along ``axis`` of a rank-``ndim`` tensor."""
    shape = [1] * ndim
    shape[channel_axis(ndim, axis)] = -1
    return t.reshape(shape)


def moments(
    x: Tensor, dims: tuple[int, ...], *, mask: Tensor | None = None, keepdim: bool = False, centred: bool = True
) -> Moments:
    """Mean and biased variance of ``x`` over ``dims`` (float32 accumulation for half types).

    With ``mask`` (bool, broadcastable to ``x``), only positions where it is True count; masked-out values never
    enter the arithmetic (they may be NaN). Channels with no valid position get mean 0 and variance 0.
    ``centred=False`` (RMSNorm, Zhang & Sennrich 2019): ``mean`` is 0 and ``var`` the uncentred second moment
    ``mean(x^2)``, so that :func:`standardize` divides by the root mean square.
    """
    xc = x.to(compute_dtype(x.dtype))
    if not centred:
        if mask is not None:
            xc = torch.where(mask.expand_as(x), xc, xc.new_zeros(()))
        square = moments(xc * xc, dims, mask=mask, keepdim=keepdim)
        return Moments(torch.zeros_like(square.mean), square.mean, square.count)
    if mask is None and x.numel() == 0:
        # no value: mean and variance 0 with count 0 (var_mean would give NaN, which a merge would spread), still
        # computed from x so that a synchronized layer's pooled statistics keep x in their graph on every process
        mean = xc.sum(dim=dims, keepdim=keepdim)
        count = 1
        for d in dims:
            count *= x.shape[d]
        return Moments(mean, mean * mean, count)
    if mask is None:
        var, mean = torch.var_mean(xc, dim=dims, correction=0, keepdim=keepdim)
        count = 1
        for d in dims:
            count *= x.shape[d]
        return Moments(mean, var, count)
    mask = mask.expand_as(x)
    zero = xc.new_zeros(())
    valid = mask.sum(dim=dims, keepdim=True).to(xc.dtype)
    safe = valid.clamp_min(1)
    mean = torch.where(mask, xc, zero).sum(dim=dims, keepdim=True) / safe
    dev = torch.where(mask, xc - mean, zero)
    var = (dev * dev).sum(dim=dims, keepdim=True) / safe
    if not keepdim and dims:
        mean, var, valid = mean.squeeze(dims), var.squeeze(dims), valid.squeeze(dims)
    return Moments(mean, var, valid)


def merge_moments(means: Tensor, vars_: Tensor, counts: Tensor, dim: int = 0) -> Moments:
    """Exact pooled statistics of several groups stacked along ``dim`` (ghost batches, ranks, ...).

    pooled mean = sum(n_i m_i) / N;  pooled var = sum(n_i (v_i + (m_i - mean)^2)) / N   (biased, like the parts).
    """
    counts = counts.to(means.dtype)
    total = counts.sum(dim=dim)
    safe = total.clamp_min(1)
    mean = (counts * means).sum(dim=dim) / safe
    var = (counts * (vars_ + (means - mean.unsqueeze(dim)) ** 2)).sum(dim=dim) / safe
    return Moments(mean, var, total)


# -- pooling across processes (torch.distributed): the collective beside the exact merge ------------------------
def _active(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def all_reduce_sum(t: Tensor, group=None) -> Tensor:
    """Sum of ``t`` over the processes of ``group`` (a new tensor; no autograd)."""
    out = t.detach().clone()
    if _active(group):
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


class _AllGather(torch.autograd.Function):
    """Stack every process's ``t`` into ``(world, *t.shape)``, differentiably.

    Written as a sum of one-hot placements so a single all_reduce does it on every backend; the backward of a sum
    over processes is the sum over processes of the gradients, taken at this process's row.
    """

    @staticmethod
    def forward(ctx, t, group):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        out = t.new_zeros((world, *t.shape))
        out[rank] = t
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        ctx.group, ctx.rank = group, rank
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


def all_merge_moments(stats: Moments, group=None) -> Moments:
    """Exact pooled statistics of every process in ``group`` (unchanged when not distributed)."""
    if not _active(group):
        return stats
    count = stats.count
    if not isinstance(count, Tensor):
        count = torch.full_like(stats.mean, float(count))
    packed = torch.stack([stats.mean, stats.var, count.to(stats.mean.dtype).detach()])
    gathered = _AllGather.apply(packed, group)  # (world, 3, C)
    return merge_moments(gathered[:, 0], gathered[:, 1], gathered[:, 2], dim=0)


def check_pooled_count(pooled: Moments, local: Moments, name: str) -> None:
    """Training needs more than one value per channel over the whole group (the pooled count, the same on every
    process, so every process raises together). A count of 0 everywhere is an empty batch, which is allowed."""
    count = pooled.count
    if isinstance(count, Tensor):
        bad = bool((count.detach() == 1).any())
        total = int(count.detach().reshape(-1).max()) if count.numel() else 0
    else:
        bad, total = count == 1, int(count)
    if bad:
        here = local.count if not isinstance(local.count, Tensor) else int(local.count.detach().reshape(-1).max())
        raise ValueError(
            f"{name}: expected more than 1 value per channel when training, got {total} over every process of the "
            f"group ({here} on this process); use a larger batch, or eval mode"
        )


def any_process(flag: bool, group=None) -> bool:
    """Whether ``flag`` is True on any process of ``group`` (one all_reduce; ``flag`` itself when not distributed).
    A data-dependent check of a synchronized layer goes through this, so that every process raises together
    instead of one raising while the others wait in the next collective."""
    if not _active(group):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return bool(t.item() > 0)


def renorm_correction(
    stats: Moments, ref_mean: Tensor, ref_std: Tensor, eps: float, r_max: float, d_max: float
) -> tuple[Tensor, Tensor]:
    """Batch renormalization's ``r = clip(sigma_B / ref_std, 1/r_max, r_max)`` and
    ``d = clip((mu_B - ref_mean) / ref_std, -d_max, d_max)`` (Ioffe 2017), detached: constants for the gradient."""
    with torch.no_grad():
        ref_mean, ref_std = ref_mean.to(stats.var.dtype), ref_std.to(stats.var.dtype)
        r = (torch.sqrt(stats.var + eps) / ref_std).clamp(1.0 / r_max, r_max)
        d = ((stats.mean - ref_mean) / ref_std).clamp(-d_max, d_max)
    return r, d


def normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    axis: int = 1,
) -> Tensor:
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` with per-channel vectors along ``axis``.

    Computed in the promoted dtype of x and the statistics, never below float32 and returned in ``x``'s dtype. The
    mean is subtracted before scaling (not folded into a shift) so that a large common offset cancels exactly.
    """
    nd = x.ndim
    # Half buffers (e.g. after module.to(torch.bfloat16)) must not pull the arithmetic down to half precision.
    ct = compute_dtype(torch.promote_types(x.dtype, mean.dtype))
    mean, var = mean.to(ct), var.to(ct)
    y = (x.to(ct) - channel_view(mean, nd, axis)) * channel_view(scale(var, weight, eps), nd, axis)
    if bias is not None:
        y = y + channel_view(bias.to(y.dtype), nd, axis)
    return y.to(x.dtype)


def standardize(x: Tensor, stats: Moments, eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with ``stats`` broadcastable to ``x`` (taken with ``keepdim=True``), in the
    statistics' dtype (never below float32) and returned in ``x``'s dtype: the normalize step of the per-sample
    norms, whose statistics are not per-channel vectors (LayerNorm, GroupNorm, InstanceNorm, RMSNorm)."""
    ct = compute_dtype(torch.promote_types(x.dtype, stats.mean.dtype))
    y = (x.to(ct) - stats.mean.to(ct)) * torch.rsqrt(stats.var.to(ct) + eps)
    return y.to(x.dtype)


def affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, *, axis: int = 1) -> Tensor:
    """``y * weight + bias`` with per-channel vectors along ``axis``, returned in ``y``'s dtype (layers whose
    normalization is not :func:`normalize`'s, e.g. mixed or uncentred, apply their affine with this)."""
    nd = y.ndim
    if weight is not None:
        y = y * channel_view(weight.to(y.dtype), nd, axis)
    if bias is not None:
        y = y + channel_view(bias.to(y.dtype), nd, axis)
    return y


def is_empty(stats: Moments, read_tensor: bool = False) -> bool:
    """Whether ``stats`` were taken over no value at all. An int count is read directly; a tensor count (masks,
    pooled statistics) only when ``read_tensor`` (reading it synchronizes with the data)."""
    if not isinstance(stats.count, Tensor):
        return stats.count == 0
    return read_tensor and not bool(stats.count.detach().any())


def unbiased(var: Tensor, count: int | Tensor) -> Tensor:
    """Bessel's correction ``var * n / (n - 1)``; a channel with a single value keeps its (zero) variance."""
    if isinstance(count, Tensor):
        return var * count / (count - 1).clamp_min(1)
    return var * (count / max(count - 1, 1))


def check_momentum(momentum: float | None, name: str, *, allow_none: bool = True) -> None:
    """``momentum`` lies in [0, 1] (torch's convention, the weight of the new value), or is ``None`` (the cumulative
    average) when ``allow_none``; raises ``ValueError`` naming the layer."""
    if momentum is None and allow_none:
        return
    if momentum is None or not 0.0 <= float(momentum) <= 1.0:
        tail = " or be None (cumulative average)" if allow_none else " (torch convention: weight of the new value)"
        raise ValueError(f"{name}: momentum must lie in [0, 1]{tail}, got {momentum}")


def momentum_factor(
    momentum: float | None, num_batches_tracked: Tensor | int | None, name: str = "batch_norm"
) -> float | Tensor:
    """The weight of the new batch statistic in the running average.

    ``momentum=None`` means the cumulative (equal-weight) average, as in torch: the n-th batch gets weight 1/n,
    which needs the count of batches seen so far (``num_batches_tracked``, *after* counting this batch). Given the
    counter as a tensor, the weight is a 0-dim float64 tensor computed by tensor operations (no Python number is
    read from the counter, so torch.compile keeps it in the graph); given an int, a float.
    """
    if momentum is not None:
        check_momentum(momentum, name, allow_none=False)
        return float(momentum)
    if num_batches_tracked is None:
        raise ValueError(
            f"{name}: momentum=None (cumulative average) needs num_batches_tracked to count the batches seen"
        )
    if isinstance(num_batches_tracked, Tensor):
        return torch.reciprocal(num_batches_tracked.detach().clamp_min(1).to(torch.float64))
    return 1.0 / max(int(num_batches_tracked), 1)


@torch.no_grad()
def update_running(
    running_mean: Tensor,
    running_var: Tensor,
    stats: Moments,
    *,
    momentum: float | Tensor,
    running_var_unbiased: bool = True,
    merge: bool = False,
) -> None:
    """In place: ``running <- (1 - momentum) * running + momentum * batch`` for mean and variance.

    ``momentum`` is a number or a 0-dim tensor (the cumulative average's 1 / counter, kept in the graph under
    torch.compile). ``merge``: the variance is the exact pooled variance of the running population and the batch
    weighed ``1 - momentum, momentum`` (:func:`merge_moments`), i.e. the moving average of the raw moments: the lerp
    plus ``momentum (1 - momentum) (batch_mean - running_mean)^2``. A channel whose (tensor) count is 0 keeps its
    running values.
    """
    if isinstance(momentum, Tensor):
        momentum = momentum.to(running_mean.dtype)
    var = unbiased(stats.var, stats.count) if running_var_unbiased else stats.var
    mean = stats.mean.detach().to(running_mean.dtype)
    var = var.detach().to(running_var.dtype)
    if isinstance(stats.count, Tensor):  # masked or pooled: a channel no value reached keeps its running values
        seen = stats.count.detach() > 0
        mean, var = torch.where(seen, mean, running_mean), torch.where(seen, var, running_var)
    if merge:
        shift = (mean - running_mean).to(running_var.dtype)
        var = var + (1 - momentum) * shift * shift  # lerp adds momentum times this: the exact merge
    running_mean.lerp_(mean, momentum)
    running_var.lerp_(var, momentum)


@torch.no_grad()
def track(
    running_mean: Tensor,
    running_var: Tensor,
    counter: Tensor | None,
    stats: Moments,
    *,
    momentum: float | None,
    running_var_unbiased: bool = True,
    name: str = "batch_norm",
    read_count: bool = False,
    weight: float | None = None,
    merge: bool = False,
) -> None:
    """The one running-average step: count the batch in ``counter`` (in place, if given), then fold ``stats`` into
    the running buffers with ``momentum`` (torch's convention) or, for ``momentum=None``, the cumulative average's
    weight 1 / counter (a tensor operation, so torch.compile keeps it in the graph). ``weight``: the batch's weight
    when the layer has its own schedule (FullNormalization's step size), instead of ``momentum``'s; ``merge``: the
    exact merge of :func:`update_running`.

    Statistics over no value at all change nothing and count no batch (``read_count``: also read a tensor count,
    see :func:`is_empty`). Raises ``ValueError`` for ``momentum=None`` without a counter.
    """
    check_momentum(momentum, name)  # before anything changes
    if momentum is None and counter is None and weight is None:
        momentum_factor(None, None, name)  # raises: the cumulative average needs a counter
    if is_empty(stats, read_count):
        return
    if counter is not None:
        counter.add_(1)
    factor = weight if weight is not None else momentum_factor(momentum, counter if momentum is None else None, name)
    update_running(running_mean, running_var, stats, momentum=factor, running_var_unbiased=running_var_unbiased,
                   merge=merge)


def scale(var: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """Normalize's per-channel multiplier ``weight / sqrt(var + eps)`` (``1 / sqrt(var + eps)`` without a weight),
    in ``var``'s dtype: ``y = (x - mean) * scale + bias``."""
    s = torch.rsqrt(var + eps)
    return s * weight.to(s.dtype) if weight is not None else s


def renorm_affine(
    weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """Batch renormalization's correction folded into the affine: ``gamma * (x_hat * r + d) + beta =
    x_hat * (gamma r) + (gamma d + beta)``, so that BatchNorm's normalize computes it with a new weight and bias."""
    w = r if weight is None else weight * r
    b = d if weight is None else weight * d
    return w, (b + bias if bias is not None else b)
