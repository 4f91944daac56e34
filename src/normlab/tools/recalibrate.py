"""Precise batch-norm statistics (PreciseBN; Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

Training leaves each batch norm with an exponential moving average of batch statistics, dominated by the last
few hundred batches and taken while the weights were still moving. PreciseBN replaces it, with the weights fixed,
by the population statistics of the layer's input over many batches B_1..B_K (n_k values per channel each):

    mu_pop      = sum_k n_k mu_k / N                                              (N = sum_k n_k)
    sigma2_pop  = sum_k n_k (sigma2_k + (mu_k - mu_pop)^2) / N                  (pooled moments, exact)

i.e. the mean of the batch means and the variance of all the values seen, with every value weighted equally (for
equal-sized batches: every batch weighted equally). For MABN, which normalizes by the second moment without
centring, the running variance becomes the population second moment sigma2_pop + mu_pop^2. The batch variance alone would miss the spread of the batch
means. The running variance then gets Bessel's correction N / (N - 1) when the layer keeps an unbiased running
variance (torch's convention, normlab's default) and stays biased otherwise (``running_var_unbiased=False``).

During the passes every batch norm normalizes with batch statistics, as in training, so that each layer sees the
inputs it saw during training. Accumulation is in float64 with Chan's pairwise update (no E[x^2] - E[x]^2).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .. import _stats
from ._common import channel_axis, has_running_stats, is_batch_norm

__all__ = ["recalibrate"]


class _PooledMoments:
    """Running per-channel count, mean and sum of squared deviations (float64), merged batch by batch."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor, axis: int) -> None:
        x = x.detach().to(torch.float64)
        batch = _stats.moments(x, _stats.reduce_dims(x.ndim, axis))
        n_b = batch.count
        if n_b == 0:
            return
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, batch.mean.clone(), batch.var * n_b
            return
        total = self.count + n_b
        delta = batch.mean - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + batch.var * n_b + delta * delta * (self.count * n_b / total)
        self.count = total

    def variance(self, unbiased: bool) -> Tensor:
        return self.m2 / (self.count - 1 if unbiased and self.count > 1 else self.count)


def _uncentred(norm: nn.Module) -> bool:
    """Layers that normalize by the second moment without centring (MABN, Yan et al. 2020)."""
    from .. import nn as nlnn

    mabn = getattr(nlnn, "MovingAverageBatchNorm", None)
    return mabn is not None and isinstance(norm, mabn)


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])  # (input, target) as a DataLoader yields
    if isinstance(batch, Mapping):
        return model(**batch)
    raise TypeError(
        f"recalibrate: cannot feed a batch of type {type(batch).__name__} to the model; expected a Tensor, an "
        f"(input, target) tuple/list or a dict of keyword arguments, or pass forward=lambda model, batch: ..."
    )


def _progress(iterable: Iterable, total: int | None, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is part of the lab extra; without it there is simply no bar
        return iterable
    return tqdm(iterable, total=total, desc="recalibrate", unit="batch", leave=False)


def recalibrate(
    model: nn.Module,
    batches: Iterable,
    num_batches: int | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Set the running statistics of every batch norm in ``model`` to its exact population statistics over
    ``batches`` (PreciseBN). Changes ``model`` in place and returns it.

    ``batches`` yields inputs (a Tensor, an ``(input, target)`` pair, or a dict of keyword arguments; any other
    form with ``forward(model, batch)``); ``num_batches`` stops after that many (``None``: all of them) and must
    not exceed what ``batches`` holds. Handles torch's ``BatchNorm*d``/``SyncBatchNorm`` and every
    ``normlab.nn.BatchNormBase`` layer that keeps running statistics. Runs under ``torch.no_grad()``.

    Only the running mean and variance change: the layers' ``training`` flags, ``momentum`` and their other
    buffers (``num_batches_tracked``, MABN's histories, ...) are restored afterwards, and on any error (a bad batch, too few batches) the running
    statistics are left as they were. A layer that no batch reached keeps its statistics, with a warning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate: expected a torch.nn.Module, got {type(model).__name__}")
    if num_batches is not None and (not isinstance(num_batches, int) or isinstance(num_batches, bool) or num_batches < 1):
        raise ValueError(f"recalibrate: num_batches must be a positive int or None (all batches), got {num_batches!r}")
    norms = [(name, m) for name, m in model.named_modules() if is_batch_norm(m) and has_running_stats(m)]
    if not norms:
        raise ValueError(
            "recalibrate: the model has no batch norm with running statistics (torch.nn.BatchNorm*d, SyncBatchNorm "
            "or normlab.nn.BatchNormBase with track_running_stats=True)"
        )
    forward = forward or _default_forward
    total = num_batches
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)

    # Everything a training-mode pass may touch besides the two statistics (num_batches_tracked, the moving-average
    # histories of MABN, ...) is put back afterwards.
    saved = [
        (m, m.training, m.momentum,
         {n: b.clone() for n, b in m.named_buffers(recurse=False) if n not in ("running_mean", "running_var")})
        for _, m in norms
    ]
    pooled = {id(m): _PooledMoments() for _, m in norms}
    handles = []

    def record(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            pooled[id(module)].add(args[0], channel_axis(module))

    try:
        for _, m in norms:
            # Batch statistics normalize, as in training; momentum 0 keeps the buffers untouched until the end.
            m.train()
            m.momentum = 0.0
            handles.append(m.register_forward_pre_hook(record))
        seen = 0
        with torch.no_grad():
            for batch in _progress(batches, total, progress):
                if num_batches is not None and seen >= num_batches:
                    break
                forward(model, batch)
                seen += 1
        if seen == 0:
            raise ValueError("recalibrate: batches yielded no batch; running statistics unchanged")
        if num_batches is not None and seen < num_batches:
            raise ValueError(
                f"recalibrate: asked for num_batches={num_batches} but batches held only {seen}; "
                f"running statistics unchanged"
            )
        missed = [name for name, m in norms if pooled[id(m)].mean is None]
        with torch.no_grad():
            for _, m in norms:
                acc = pooled[id(m)]
                if acc.mean is None:
                    continue
                if _uncentred(m):  # MABN: running_var is the second moment E[x^2], running_mean stays 0
                    m.running_var.copy_((acc.variance(False) + acc.mean**2).to(m.running_var.dtype))
                    continue
                unbiased = getattr(m, "running_var_unbiased", True)  # torch's layers keep the unbiased variance
                m.running_mean.copy_(acc.mean.to(m.running_mean.dtype))
                m.running_var.copy_(acc.variance(unbiased).to(m.running_var.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for m, training, momentum, buffers in saved:
            m.train(training)
            m.momentum = momentum
            with torch.no_grad():
                for n, b in buffers.items():
                    getattr(m, n).copy_(b)
    if missed:
        warnings.warn(f"recalibrate: no batch reached {', '.join(missed)}; their statistics are unchanged", stacklevel=2)
    return model
