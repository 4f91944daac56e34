"""Synchronized batch statistics over ``torch.distributed`` (any backend: gloo on CPU, NCCL on GPUs).

Every batch-statistic layer computes its statistics through one hook, :meth:`BatchNormBase.batch_moments`. When a
layer is synchronized (``convert_sync_batchnorm(model)``) the hook gathers each process's local
``Moments(mean, var, count)`` and pools them exactly with ``_stats.merge_moments``:

    N = sum_p n_p      mu = sum_p n_p mu_p / N      sigma2 = sum_p n_p (sigma2_p + (mu_p - mu)^2) / N

so processes may hold different batch sizes (or, for masked layers, different numbers of valid positions), and
the result equals one process on the concatenated batch: same outputs, input and parameter gradients (the gradient
of the pooled statistics is summed over processes in the backward pass) and running statistics (every process
updates its buffers with the pooled statistics, so they stay identical).

What is pooled, per layer: BatchNorm, BatchRenorm, MaskedBatchNorm, TimeStepBatchNorm, BatchLayerNorm (its batch
part) pool their batch statistics; GhostBatchNorm keeps its virtual batches local and pools only the running
statistics; MovingAverageBatchNorm cannot be synchronized (its moving averages are per process) and raises.

A process may hold no sample (or a single one): its local statistics have count 0 and weigh nothing in the merge,
its output is empty and its gradients 0, and it still takes part in every collective (forward and backward). Every
data-dependent check of a synchronized layer is decided over the group, so all processes raise together and none is
left waiting: more than one value per channel is required of the *pooled* count (:func:`check_pooled_count`, as
``torch.nn.SyncBatchNorm``), and ``check_finite`` and GhostBatchNorm's last-virtual-batch check go through
:func:`any_process`. No sample anywhere is an empty batch: empty outputs, no running statistic or counter changes.

Every process must call the layer (and the backward) the same number of times, as with ``torch.nn.SyncBatchNorm``.
Parameter gradients are the per-process contributions; sum them (or let DDP average them) as usual.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import _stats
from .batchnorm import BatchNorm, BatchNormBase

__all__ = ["all_merge_moments", "all_reduce_sum", "any_process", "check_pooled_count", "convert_sync_batchnorm",
           "is_synchronized"]


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


def all_merge_moments(stats: _stats.Moments, group=None) -> _stats.Moments:
    """Exact pooled statistics of every process in ``group`` (unchanged when not distributed)."""
    if not _active(group):
        return stats
    count = stats.count
    if not isinstance(count, Tensor):
        count = torch.full_like(stats.mean, float(count))
    packed = torch.stack([stats.mean, stats.var, count.to(stats.mean.dtype).detach()])
    gathered = _AllGather.apply(packed, group)  # (world, 3, C)
    return _stats.merge_moments(gathered[:, 0], gathered[:, 1], gathered[:, 2], dim=0)


def is_synchronized(module: nn.Module) -> bool:
    return bool(getattr(module, "sync_statistics", False))


def convert_sync_batchnorm(model: nn.Module, process_group=None, *, convert_torch: bool = True) -> nn.Module:
    """Synchronize every batch-statistic layer of ``model`` over ``process_group`` (default: the world), in place.

    normlab layers are switched on (their class, parameters and state_dict stay as they are). With
    ``convert_torch=True``, ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.SyncBatchNorm`` layers are replaced by
    normlab ``BatchNorm`` layers loaded from their state_dict (same keys), so the model's checkpoint is unchanged.
    Returns ``model`` (or the replacement, if ``model`` itself is a torch BatchNorm). MovingAverageBatchNorm raises.
    """
    from .variants import MovingAverageBatchNorm

    # Check everything before changing anything.
    for name, m in model.named_modules():
        if isinstance(m, MovingAverageBatchNorm):
            raise ValueError(
                f"convert_sync_batchnorm: {name or 'model'} is a MovingAverageBatchNorm, whose moving averages are "
                f"per process and cannot be synchronized"
            )

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, BatchNormBase):
            m.sync_statistics, m.process_group = True, process_group
            return m
        if convert_torch and isinstance(m, nn.modules.batchnorm._BatchNorm):
            p = m.weight if m.weight is not None else m.running_mean
            new = BatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                            device=p.device if p is not None else None, dtype=p.dtype if p is not None else None)
            new.load_state_dict(m.state_dict())
            if new.weight is not None:
                new.weight.requires_grad_(m.weight.requires_grad)
                new.bias.requires_grad_(m.bias.requires_grad)
            new.train(m.training)
            new.sync_statistics, new.process_group = True, process_group
            return new
        for child_name, child in m.named_children():
            new_child = convert(child)
            if new_child is not child:
                setattr(m, child_name, new_child)
        return m

    return convert(model)


def check_pooled_count(pooled: _stats.Moments, local: _stats.Moments, name: str) -> None:
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
