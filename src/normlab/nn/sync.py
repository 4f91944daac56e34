"""Synchronized batch statistics over ``torch.distributed`` (any backend: gloo on CPU, NCCL on GPUs).

This module only *converts* (switches a model's layers on, replaces torch's BatchNorm layers); the collective itself
(:func:`normlab._stats.all_merge_moments`, :func:`normlab._stats.any_process`, ...) lives beside the exact merge
in :mod:`normlab._stats`, below every layer. Every batch-statistic layer computes its statistics through one
hook, :meth:`BatchNormBase.batch_moments`. When a layer is synchronized (``convert_sync_batchnorm(model)``) the
hook gathers each process's local ``Moments(mean, var, count)`` and pools them exactly with
``_stats.merge_moments``:

    N = sum_p n_p      mu = sum_p n_p mu_p / N      sigma2 = sum_p n_p (sigma2_p + (mu_p - mu)^2) / N

so processes may hold different batch sizes (or, for masked layers, different numbers of valid positions), and
the result equals one process on the concatenated batch: same outputs, input and parameter gradients (the gradient
of the pooled statistics is summed over processes in the backward pass) and running statistics (every process
updates its buffers with the pooled statistics, so they stay identical).

What is pooled, per layer: BatchNorm, BatchRenorm, MaskedBatchNorm, TimeStepBatchNorm, BatchLayerNorm (its batch
part) pool their batch statistics; GhostBatchNorm keeps its virtual batches local and pools only the running
statistics; a layer whose class declares ``syncable = False`` (MovingAverageBatchNorm: its moving averages are
per process) cannot be synchronized and raises.

A process may hold no sample (or a single one): its local statistics have count 0 and weigh nothing in the merge,
its output is empty and its gradients 0, and it still takes part in every collective (forward and backward). Every
data-dependent check of a synchronized layer is decided over the group, so all processes raise together and none is
left waiting: more than one value per channel is required of the *pooled* count
(:func:`normlab._stats.check_pooled_count`, as ``torch.nn.SyncBatchNorm``), and ``check_finite`` and
GhostBatchNorm's last-virtual-batch check go through :func:`normlab._stats.any_process`. No sample anywhere is an
empty batch: empty outputs, no running statistic or counter changes.

Every process must call the layer (and the backward) the same number of times, as with ``torch.nn.SyncBatchNorm``.
Parameter gradients are the per-process contributions; sum them (or let DDP average them) as usual.
"""

from __future__ import annotations

from torch import nn

from .batchnorm import BatchNorm, BatchNormBase

__all__ = ["convert_sync_batchnorm"]


def convert_sync_batchnorm(model: nn.Module, process_group=None, *, convert_torch: bool = True) -> nn.Module:
    """Synchronize every batch-statistic layer of ``model`` over ``process_group`` (default: the world), in place.

    normlab layers are switched on (their class, parameters and state_dict stay as they are). With
    ``convert_torch=True``, ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.SyncBatchNorm`` layers are replaced by
    normlab ``BatchNorm`` layers loaded from their state_dict (same keys), so the model's checkpoint is unchanged.
    Returns ``model`` (or the replacement, if ``model`` itself is a torch BatchNorm). A layer whose class declares
    ``syncable = False`` (MovingAverageBatchNorm) raises ``ValueError`` with the class's ``not_syncable_because``.
    """
    # Check everything before changing anything.
    for name, m in model.named_modules():
        if isinstance(m, BatchNormBase) and not m.syncable:
            raise ValueError(
                f"convert_sync_batchnorm: {name or 'model'} is a {type(m).__name__}, whose "
                f"{m.not_syncable_because} and cannot be synchronized"
            )

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, BatchNormBase):
            m.sync_statistics, m.process_group = True, process_group
            return m
        if convert_torch and isinstance(m, nn.modules.batchnorm._BatchNorm):
            p = m.weight if m.weight is not None else m.running_mean
            new = BatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                            device=p.device if p is not None else None, dtype=p.dtype if p is not None else None,
                            bias=m.bias is not None)
            new.load_state_dict(m.state_dict())
            for ours, theirs in ((new.weight, m.weight), (new.bias, m.bias)):
                if ours is not None and theirs is not None:
                    ours.requires_grad_(theirs.requires_grad)
            new.train(m.training)
            new.sync_statistics, new.process_group = True, process_group
            return new
        for child_name, child in m.named_children():
            new_child = convert(child)
            if new_child is not child:
                setattr(m, child_name, new_child)
        return m

    return convert(model)
