"""BatchNorm variants for small, non-i.i.d. or virtual batches.

Every class here is a :class:`~normlab.nn.batchnorm.BatchNormBase` (torch's parameters, buffers and state_dict
keys, the same input checks, any rank with a channel ``axis``) that overrides ``_normalize`` in a few lines on top
of the shared path: :meth:`BatchNormBase.batch_moments` (local or synchronized statistics), ``kernels.normalize``,
``_stats.merge_moments`` and :meth:`BatchNormBase.update_running`.

* :class:`BatchRenorm` -- Ioffe 2017: batch statistics corrected towards the running ones by constants r, d.
* :class:`GhostBatchNorm` -- Hoffer et al. 2017: statistics per virtual ("ghost") batch.
* :class:`MovingAverageBatchNorm` -- Yan et al. 2020: moving-average statistics in the forward *and* backward pass.
* :class:`BatchLayerNorm` -- Ziaee & Cano 2022: batch and layer normalization mixed by the batch size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _stats, _validate, kernels
from .batchnorm import BatchNormBase, extends_constructor

__all__ = ["BatchRenorm", "GhostBatchNorm", "MovingAverageBatchNorm", "BatchLayerNorm"]


def _check_batch_axis(layer: BatchNormBase, axis: int) -> None:
    _validate.check_not_batch_axis(axis, layer.layer_name, layer.axis)


class BatchRenorm(BatchNormBase):
    """Batch Renormalization (Ioffe 2017, arXiv:1702.03275).

    In training, with batch statistics ``mu_B, sigma_B = sqrt(sigma2_B + eps)`` and running ones
    ``mu, sigma = sqrt(running_var + eps)`` (before this batch's update):

        r = clip(sigma_B / sigma, 1/r_max, r_max)         d = clip((mu_B - mu) / sigma, -d_max, d_max)
        y = gamma * ((x - mu_B) / sigma_B * r + d) + beta

    with r and d treated as constants in the gradient (``stop_gradient``). Then the running statistics are updated
    as BatchNorm's. Inference uses the running statistics, like BatchNorm. With ``r_max=1, d_max=0`` the layer *is*
    BatchNorm (r = 1, d = 0 exactly).

    Warm-up (the paper's ImageNet schedule, in training steps = ``num_batches_tracked``): ``r_max = 1`` and
    ``d_max = 0`` for the first ``warmup_steps`` (5000), then both relax linearly to their final values, reached
    at ``r_max_steps`` (40000) and ``d_max_steps`` (25000). ``warmup_steps=0, r_max_steps=0, d_max_steps=0``
    uses the final limits from the first step. :meth:`limits` gives the current ``(r_max, d_max)``.

    The running variance follows the package's convention (unbiased, as torch; ``running_var_unbiased=False`` for
    the biased one); ``sigma`` is its square root plus eps, as in the paper's inference equation.
    """

    requires_running_stats = True

    @extends_constructor
    def __init__(
        self,
        num_features: int,
        *args,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        r_max_steps: int = 40000,
        d_max_steps: int = 25000,
        **kwargs,
    ) -> None:
        name = type(self).__name__
        _validate.check_at_least(r_max, name, "r_max", 1)
        _validate.check_at_least(d_max, name, "d_max", 0)
        for what, v in (("warmup_steps", warmup_steps), ("r_max_steps", r_max_steps), ("d_max_steps", d_max_steps)):
            _validate.check_non_negative_int(v, name, what)
        super().__init__(num_features, *args, **kwargs)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.warmup_steps, self.r_max_steps, self.d_max_steps = warmup_steps, r_max_steps, d_max_steps

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", r_max={self.r_max}, d_max={self.d_max}, warmup_steps={self.warmup_steps}, "
            f"r_max_steps={self.r_max_steps}, d_max_steps={self.d_max_steps}"
        )

    def _ramp(self, step: int, start: float, end: float, end_step: int) -> float:
        if step < self.warmup_steps:
            return start
        if step >= end_step:
            return end
        return start + (end - start) * (step - self.warmup_steps) / (end_step - self.warmup_steps)

    def limits(self, step: int | None = None) -> tuple[float, float]:
        """``(r_max, d_max)`` at ``step`` (default: the number of training batches seen so far)."""
        if step is None:
            step = int(self.num_batches_tracked)
        return self._ramp(step, 1.0, self.r_max, self.r_max_steps), self._ramp(step, 0.0, self.d_max, self.d_max_steps)

    def _normalize(self, x: Tensor, axis: int) -> Tensor:
        if not self.updates_running_stats():  # eval: running statistics (or plain batch statistics if asked)
            return super()._normalize(x, axis)
        r_max, d_max = self.limits()
        ref_std = torch.sqrt(self.running_var + self.eps)
        if self._local_plain_moments():  # the fused kernel path (or its native twin)
            y, stats = kernels.batch_norm_train(x, self.weight, self.bias, self.eps, axis=axis,
                                                renorm=(self.running_mean, ref_std, r_max, d_max))
            self.update_running(stats)
            return y
        stats = self.batch_moments(x, _stats.reduce_dims(x.ndim, axis))
        r, d = _stats.renorm_correction(stats, self.running_mean, ref_std, self.eps, r_max, d_max)
        weight, bias = _stats.renorm_affine(self.weight, self.bias, r, d)
        self.update_running(stats)
        return kernels.normalize(x, stats.mean, stats.var, weight, bias, self.eps, axis=axis)


class GhostBatchNorm(BatchNormBase):
    """Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, arXiv:1705.08741; Keras' ``virtual_batch_size``).

    In training the batch (axis 0) is split into virtual batches of ``virtual_batch_size`` samples
    (``torch.split`` order; **the last virtual batch holds the remainder** when the batch is not a multiple), and
    each is normalized with its own statistics, exactly as BatchNorm would normalize it alone:

        y_i = gamma * (x_i - mu_{B_k}) / sqrt(sigma2_{B_k} + eps) + beta     for x_i in virtual batch B_k

    Every virtual batch must hold more than one value per channel. The running statistics are updated once per
    call with the exact pooled statistics of all virtual batches (``merge_moments``, i.e. the whole batch's mean
    and variance), so inference is BatchNorm's. With a virtual batch >= the batch the layer *is* BatchNorm.

    When synchronized over processes, each process's virtual batches stay local (they are the point of the layer),
    also when a process's whole batch fits in one virtual batch; only the running statistics pool every process's
    batch.
    """

    # plain_batch_moments stays True: the only calls handed to BatchNormBase's path (one virtual batch, or eval)
    # are plain BatchNorm; several virtual batches take this class's own path below

    @extends_constructor
    def __init__(self, num_features: int, virtual_batch_size: int, *args, **kwargs) -> None:
        _validate.check_positive_int(virtual_batch_size, type(self).__name__, "virtual_batch_size")
        super().__init__(num_features, *args, **kwargs)
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"

    def _normalize(self, x: Tensor, axis: int) -> Tensor:
        # One virtual batch is BatchNorm's path, but only locally: synchronized, that path would pool the batch
        # over processes, and virtual batches stay local.
        if not self.uses_batch_stats() or (x.shape[0] <= self.virtual_batch_size and not self.sync_statistics):
            return super()._normalize(x, axis)
        _check_batch_axis(self, axis)
        per_value = x[:1].numel() // x.shape[axis] if x.shape[0] else 0
        last = x.shape[0] % self.virtual_batch_size or self.virtual_batch_size
        short = x.shape[0] > 0 and last * per_value <= 1
        if self.sync_statistics and self.updates_running_stats():
            # the running statistics pool over processes: a process whose last virtual batch is too short must not
            # raise alone while the others wait in that pooling, so every process learns it and all raise
            if _stats.any_process(short, self.process_group) and not short:
                raise ValueError(
                    f"{self.layer_name}: another process of the group has a last virtual batch of 1 value per "
                    f"channel; every process stops here"
                )
        if x.shape[0] == 0:  # synchronized, no sample here: an empty output; the running statistics still pool
            out = self.empty_output(x, axis)
            if self.updates_running_stats():
                with torch.no_grad():
                    pooled = self._pool_over_processes(_stats.moments(x, _stats.reduce_dims(x.ndim, axis)))
                self.update_running(pooled)
            return out
        chunks = torch.split(x, self.virtual_batch_size, dim=0)
        if short:
            raise ValueError(
                f"{self.layer_name}: the last virtual batch of a batch of {x.shape[0]} with virtual_batch_size="
                f"{self.virtual_batch_size} holds {chunks[-1].shape[0]} sample(s), 1 value per channel; use a batch "
                f"size that leaves a remainder of 0 or >= 2 (e.g. DataLoader(drop_last=True))"
            )
        if x.shape[0] % self.virtual_batch_size == 0 and not self.sync_statistics:
            # equal virtual batches: one fused call over (G, N/G, ...) (kernels or native), statistics (G, C)
            out, st = kernels.batch_norm_train(x, self.weight, self.bias, self.eps, axis=axis, groups=len(chunks))
            if self.updates_running_stats():
                with torch.no_grad():
                    counts = torch.full_like(st.mean, float(st.count))
                    pooled = _stats.merge_moments(st.mean, st.var, counts)
                self.update_running(_stats.Moments(pooled.mean, pooled.var, st.count * len(chunks)))
            return out
        dims = _stats.reduce_dims(x.ndim, axis)
        parts = [_stats.moments(chunk, dims) for chunk in chunks]
        out = torch.cat(
            [
                kernels.normalize(ch, m.mean, m.var, self.weight, self.bias, self.eps, axis=axis)
                for ch, m in zip(chunks, parts)
            ],
            dim=0,
        )
        if self.updates_running_stats():
            with torch.no_grad():
                counts = torch.tensor([float(m.count) for m in parts], dtype=parts[0].mean.dtype, device=x.device)
                pooled = _stats.merge_moments(
                    torch.stack([m.mean for m in parts]), torch.stack([m.var for m in parts]), counts[:, None]
                )
                total = int(sum(m.count for m in parts))
                pooled = self._pool_over_processes(_stats.Moments(pooled.mean, pooled.var, total))
            self.update_running(pooled)
        return out


class _MovingAverageNormalize(torch.autograd.Function):
    """MABN's normalization with its own backward (Yan et al. 2020, Algorithm 1).

    forward:  z = x / sqrt(chi2 + eps),  out = r * z           (chi2: the moving-average second moment, r: constant)
    backward: g = r * dout,  psi = mean(g * z) over the batch axes (recorded in ``gz_history[slot]``),
              dx = (g - z * psi_bar) / sqrt(chi2 + eps)   with psi_bar the mean of ``gz_history`` once the moving
              average is on, else this batch's psi (then dx is the exact gradient with chi2 from this batch alone).
    """

    @staticmethod
    def forward(ctx, x, chi2, r, gz_history, slot, use_average, axis, eps):
        ctx.save_for_backward(x, chi2, r)
        ctx.gz_history, ctx.slot, ctx.use_average, ctx.axis, ctx.eps = gz_history, slot, use_average, axis, eps
        zeros = torch.zeros_like(chi2)
        return kernels.normalize(x, zeros, chi2, r, None, eps, axis=axis)

    @staticmethod
    def backward(ctx, dout):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "MovingAverageBatchNorm: its backward replaces the batch's statistics by moving averages (Yan et al. "
                "2020), which defines no derivative of higher order; double backward (create_graph=True) is not "
                "supported, use BatchNorm or another layer of the family for that"
            )
        x, chi2, r = ctx.saved_tensors
        nd, axis = x.ndim, ctx.axis
        inv = _stats.channel_view(torch.rsqrt(chi2 + ctx.eps), nd, axis)
        z = x.to(inv.dtype) * inv
        g = dout.to(inv.dtype) * _stats.channel_view(r, nd, axis)
        psi = (g * z).mean(dim=_stats.reduce_dims(nd, axis))
        with torch.no_grad():
            ctx.gz_history[ctx.slot].copy_(psi.detach().to(ctx.gz_history.dtype))
        psi_bar = ctx.gz_history.mean(dim=0).to(psi.dtype) if ctx.use_average else psi
        dx = (g - z * _stats.channel_view(psi_bar, nd, axis)) * inv
        return dx.to(x.dtype), None, None, None, None, None, None, None


class MovingAverageBatchNorm(BatchNormBase):
    """Moving Average Batch Normalization, MABN (Yan et al., ICLR 2020, "Towards Stabilizing Batch Statistics in
    Backward Propagation of Batch Normalization", openreview SkgGjRVKDS), for batch sizes of 1-4.

    MABN normalizes *without centring* (pair it with weight-centred convolutions, ``W - mean(W)`` per output
    channel, as the paper does) by a simple moving average (SMA) over the last ``buffer_size`` iterations:

        chi2_t = mean over the batch axes of x^2           chi2_bar = SMA of chi2 over the last m iterations
        z = x / sqrt(chi2_bar + eps)      r = clip(sqrt(chi2_bar + eps) / sqrt(running_var + eps), 1/r_max, r_max)
        y = gamma * r * z + beta

    and in the backward pass replaces the batch's ``psi = mean(g * z)`` (g = dL/dz) by its SMA over the same
    iterations: ``dx = (g - z * psi_bar) / sqrt(chi2_bar + eps)`` (r and chi2_bar are constants of the gradient).
    ``running_var`` is the exponential moving average of chi2_bar (momentum 0.02 = the paper's 0.98 decay, torch
    convention); inference is ``y = gamma * x / sqrt(running_var + eps) + beta``. ``running_mean`` is kept for
    state_dict compatibility and stays 0 (there is no centring).

    Warm-up, as the authors' code: while ``iteration <= buffer_size`` or ``iteration < warmup_iters`` the current
    batch's chi2 and psi are used (the exact gradient of ``x / sqrt(mean(x^2) + eps)``); r is fixed to 1 while
    ``iteration <= renorm_warmup_iters`` (1000). ``buffer_size`` is the paper's m = (batch size to simulate) /
    (real batch size), 16 by default (32 / 2). The moving averages are per process: MABN cannot be synchronized.
    """

    _needs_batch_variance = False  # a second moment exists for a single value per channel (batch size 1, 2D)
    x2_history: Tensor
    gz_history: Tensor
    syncable = False
    not_syncable_because = "moving averages are per process"
    centred = False  # running_var is the second moment E[x^2]; running_mean stays 0
    plain_batch_moments = False  # moving averages of E[x^2] over the last batches
    requires_running_stats = True

    @extends_constructor
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.02,
        *args,
        buffer_size: int = 16,
        warmup_iters: int = 100,
        renorm_warmup_iters: int = 1000,
        r_max: float = 5.0,
        **kwargs,
    ) -> None:
        name = type(self).__name__
        _validate.check_positive_int(buffer_size, name, "buffer_size")
        _validate.check_non_negative_int(warmup_iters, name, "warmup_iters")
        _validate.check_non_negative_int(renorm_warmup_iters, name, "renorm_warmup_iters")
        _validate.check_at_least(r_max, name, "r_max", 1)
        super().__init__(num_features, eps, momentum, *args, **kwargs)
        self.buffer_size, self.warmup_iters = buffer_size, warmup_iters
        self.renorm_warmup_iters, self.r_max = renorm_warmup_iters, float(r_max)
        self.register_buffer("x2_history", torch.zeros(buffer_size, num_features, **self._factory))
        self.register_buffer("gz_history", torch.zeros(buffer_size, num_features, **self._factory))

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "x2_history"):
            self.x2_history.zero_()
            self.gz_history.zero_()

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", buffer_size={self.buffer_size}, warmup_iters={self.warmup_iters}, "
            f"renorm_warmup_iters={self.renorm_warmup_iters}, r_max={self.r_max}"
        )

    def _normalize(self, x: Tensor, axis: int) -> Tensor:
        if self.sync_statistics:
            raise ValueError(f"{self.layer_name}: MABN's moving averages are per process; it cannot be synchronized")
        if not self.uses_batch_stats():
            zeros = torch.zeros_like(self.running_var)
            return kernels.normalize(x, zeros, self.running_var, self.weight, self.bias, self.eps, axis=axis)
        if not self.updates_running_stats():
            raise ValueError(f"{self.layer_name}: eval_stats='batch' is not defined for MABN; use eval_stats='running'")
        iteration = int(self.num_batches_tracked) + 1  # this batch, counted by track below
        slot = iteration % self.buffer_size
        with torch.no_grad():
            m = kernels.moments(x, _stats.reduce_dims(x.ndim, axis))
            chi2 = m.var + m.mean * m.mean  # second moment E[x^2], from the shared (centred, stable) moments
            self.x2_history[slot].copy_(chi2)
            use_average = iteration > self.buffer_size and iteration >= self.warmup_iters
            if use_average:
                chi2 = self.x2_history.mean(dim=0).to(chi2.dtype)
            if iteration <= self.renorm_warmup_iters:
                r = torch.ones_like(chi2)
            else:
                r = (torch.sqrt(chi2 + self.eps) / torch.sqrt(self.running_var.to(chi2.dtype) + self.eps))
                r = r.clamp(1.0 / self.r_max, self.r_max)
            _stats.track(
                self.running_mean, self.running_var, self.num_batches_tracked,
                _stats.Moments(torch.zeros_like(chi2), chi2, m.count), momentum=self.momentum,
                running_var_unbiased=False, name=self.layer_name,
            )
        out = _MovingAverageNormalize.apply(x, chi2, r, self.gz_history, slot, use_average, axis, self.eps)
        return _stats.affine(out, self.weight, self.bias, axis=axis)


class BatchLayerNorm(BatchNormBase):
    """Batch Layer Normalization, BLN (Ziaee & Cano 2022, arXiv:2209.08898).

    With the batch-normalized ``x_b = (x - mu_B) / sqrt(sigma2_B + eps)`` (per channel over the batch axes, as
    BatchNorm) and the feature-normalized ``x_f = (x - mu_L) / sqrt(sigma2_L + eps)`` (per sample and position over
    the C channels, as the authors' code), mixed by the inverse batch size B:

        y = gamma * [ (1/B - 1e-4) * x_f + (1 - 1/B - 1e-4) * x_b ] / sqrt(C) + beta

    (the paper's equation, including the division by sqrt(d) with d = C features; ``scale_by_sqrt_features=False``
    drops it). At B = 1 the layer is (1 - 1e-4) x a LayerNorm. The paper's eps is 1e-3, and its population
    statistics are per-epoch *averages* of the batch statistics with the B/(B-1) correction: here
    ``momentum=None`` (the cumulative average) with the unbiased running variance; call ``reset_running_stats()``
    at each epoch start for the per-epoch average. Inference uses the running statistics for x_b (or the batch's
    with ``eval_stats="batch"``, the paper's other option) and each sample's own x_f, with the B of the last
    training batch (buffer ``train_batch_size``; fixed by ``batch_size=`` if given).

    For an ``(N, C)`` input this is exactly the paper's layer. For feature maps the authors' Keras code takes batch
    statistics per position; here they are per channel over all positions, like every BatchNorm in normlab.
    """

    _needs_batch_variance = False  # defined at batch size 1 (x_b's weight is then -1e-4 and x_b = 0)
    plain_batch_moments = False  # batch statistics mixed with each sample's layer statistics
    MIX_OFFSET = 1e-4
    train_batch_size: Tensor

    @extends_constructor
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-3,
        momentum: float | None = None,
        *args,
        batch_size: int | None = None,
        scale_by_sqrt_features: bool = True,
        **kwargs,
    ) -> None:
        _validate.check_positive_int(batch_size, type(self).__name__, "batch_size", or_none=True)
        super().__init__(num_features, eps, momentum, *args, **kwargs)
        self.batch_size = batch_size
        self.scale_by_sqrt_features = scale_by_sqrt_features
        device = self._factory["device"]
        self.register_buffer("train_batch_size", torch.tensor(batch_size or 0, dtype=torch.long, device=device))

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", batch_size={self.batch_size}, scale_by_sqrt_features={self.scale_by_sqrt_features}"
        )

    def mix_weights(self, batch_size: int) -> tuple[float, float]:
        """``(w_feature, w_batch) = (1/B - 1e-4, 1 - 1/B - 1e-4)``."""
        return 1.0 / batch_size - self.MIX_OFFSET, 1.0 - 1.0 / batch_size - self.MIX_OFFSET

    def _normalize(self, x: Tensor, axis: int) -> Tensor:
        _check_batch_axis(self, axis)
        batch: int | None = None
        if self.uses_batch_stats():
            stats = self.batch_moments(x, _stats.reduce_dims(x.ndim, axis))
            # B = samples behind the statistics (all processes' when synchronized); from the shape, not x[:1],
            # which is empty on a process without samples
            per_sample = 1
            for d in range(1, x.ndim):
                if d != axis:
                    per_sample *= x.shape[d]
            count = stats.count.reshape(-1)[0] if isinstance(stats.count, Tensor) else stats.count
            batch = round(float(count)) // per_sample if per_sample else 0
            if batch == 0:  # no sample on any process: an empty batch
                return self.empty_output(x, axis)
            if self.updates_running_stats():
                self.update_running(stats)
            mean, var = stats.mean, stats.var
        else:
            mean, var = self.running_mean, self.running_var
        if self.batch_size is not None:
            batch = self.batch_size
        elif self.training and batch is not None:
            self.train_batch_size.fill_(batch)
        elif int(self.train_batch_size) > 0:
            batch = int(self.train_batch_size)
        w_f, w_b = self.mix_weights(batch if batch is not None else x.shape[0])  # never trained: the batch at hand
        if self.scale_by_sqrt_features:
            w_f, w_b = w_f / math.sqrt(self.num_features), w_b / math.sqrt(self.num_features)
        x_b = kernels.normalize(x, mean, var, None, None, self.eps, axis=axis)
        # kernels.layer_norm: torch's layer_norm with exact higher-order derivatives
        x_f = kernels.layer_norm(x.movedim(axis, -1), (self.num_features,), None, None, self.eps).movedim(-1, axis)
        return _stats.affine(w_f * x_f + w_b * x_b, self.weight, self.bias, axis=axis)
