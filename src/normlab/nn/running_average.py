"""Naive running-average normalization: BatchNorm that normalizes with its running averages in training too.

This is the method seed article 000 describes ("maintaining a running average of the mean and variance and using
this running average for normalization instead of the mini-batch statistics") and calls "Moving Average Batch
Normalization". It is not MABN (Yan et al. 2020, :class:`~normlab.nn.MovingAverageBatchNorm`), whose point is the
moving averages of the *backward* statistics; it is the naive alternative the BatchNorm papers discuss and reject:
Ioffe & Szegedy 2015 (arXiv:1502.03167), section 2, show that normalizing outside the gradient step lets a
parameter grow without bound while the loss stays the same, and Ioffe 2017 (Batch Renormalization,
arXiv:1702.03275), section 2, reports that normalizing with the moving averages in training makes the model blow
up, because gradient descent and the normalization counteract each other. It is here so that the lab can measure
that claim of article 000 against MABN and the rest of the family.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _stats, kernels
from .batchnorm import BatchNormBase

__all__ = ["RunningAverageNorm"]


class RunningAverageNorm(BatchNormBase):
    """Running-average normalization (``make_norm("ran")``): in training, update the running averages with the
    batch's statistics first, then normalize the batch with the running averages, with no gradient through them.

    For each channel, with the batch's mean ``mu_B`` and biased variance ``sigma2_B`` (over every axis but the
    channel axis; pooled over processes when synchronized):

        running_mean <- (1 - momentum) * running_mean + momentum * mu_B
        running_var  <- (1 - momentum) * running_var  + momentum * sigma2_B * m / (m - 1)   (unbiased, as torch)
        y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta        (running_* constants of the gradient)

    so ``dx = gamma * dL/dy / sqrt(running_var + eps)``: the batch reaches its own normalization only through the
    detached update. Inference is BatchNorm's (the same running averages), so eval mode equals training with frozen
    statistics (``momentum=0``). ``momentum=None`` is the cumulative average, ``running_var_unbiased=False`` the
    biased running variance, as in BatchNorm.

    **Why update first.** The batch then takes part in its own normalization with weight ``momentum`` (MABN's moving
    averages and FN's estimate include the current batch too), so ``momentum=1`` normalizes with the batch's own
    statistics (its unbiased variance) in value; updating after would normalize the first batch with the initial
    0/1 buffers, i.e. not at all.

    Name: there is no established name for this naive scheme (the papers above describe it only to reject it); it
    is not called MABN here because MABN is a different method. ``"ran"`` = running-average normalization, the
    name of the lab's claim that tests it.

    Shapes: any rank >= 2, channels on ``axis`` (1 by default, ``-1`` for channels-last / ``(N, L, C)``); output of
    the input's shape. Buffers and state_dict keys are BatchNorm's.

    Raises ``ValueError`` for ``track_running_stats=False`` at construction; at call time the family's errors
    (naming the layer): non-float input (``TypeError``), wrong rank or channels, a training batch with one value per
    channel.
    """

    requires_running_stats = True

    def _normalize(self, x: Tensor, axis: int) -> Tensor:
        if not self.updates_running_stats():  # eval: the running averages (or batch statistics, if asked)
            return super()._normalize(x, axis)
        with torch.no_grad():  # no gradient through the statistics, by definition
            stats = self.batch_moments(x, _stats.reduce_dims(x.ndim, axis))
        self.update_running(stats)
        # copies: the buffers change in place at the next call, and autograd may still need these values
        mean, var = self.running_mean.clone(), self.running_var.clone()
        return kernels.normalize(x, mean, var, self.weight, self.bias, self.eps, axis=axis)
