"""Full Normalization, FN (Lian & Liu, "Revisit Batch Normalization: New Understanding and Refinement via
Composition Optimization", AISTATS 2019, PMLR 89:3254-3263, arXiv:1810.06177).

No public implementation of FN exists; this one is written from the paper's formulation as summarized below. Every
choice the paper does not fix for us, and every deviation, is listed in :class:`FullNormalization`'s docstring.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _stats, kernels
from .batchnorm import BatchNormBase, extends_constructor
from .sequence import check_valid_counts, validity_mask

__all__ = ["FullNormalization"]


class FullNormalization(BatchNormBase):
    """Full Normalization (Lian & Liu, AISTATS 2019, arXiv:1810.06177): BatchNorm whose statistics are a moving
    estimate of the *dataset's* moments in value, while the gradient reaches the input through the *batch's* moments.

    **Where it comes from.** BatchNorm's training objective is compositional: the loss of the network in which each
    BN layer normalizes with dataset-level moments, ``min_theta E_xi[ f(theta; xi, E_zeta[g(theta; zeta)]) ]``, with
    ``g = (x, x^2)`` per channel (first and second raw moments of the layer's input) and the outer ``f`` normalizing
    by ``mu = m1`` and ``sigma2 = m2 - m1^2``. Its gradient is ``grad_theta f + (dg/dtheta)^T grad_y f`` at
    ``y = E[g]``. BN plugs the batch's ``g_B`` in for ``E[g]`` in value *and* gradient, which is a biased estimate
    whenever batch statistics differ from the dataset's (batches from few classes, non-i.i.d. batches). FN applies
    stochastic compositional gradient descent (SCGD, Wang, Fang & Liu 2017): keep an estimate
    ``y_t = (1 - alpha_t) y_{t-1} + alpha_t g_B(theta_t)`` of ``E[g]``, evaluate ``f`` (the normalization) at ``y_t``,
    and take the inner Jacobian ``dg_B/dtheta`` from the batch.

    **Derivation of the layer.** With ``sg`` = stop-gradient, the two statements (value ``y_t``, gradient the
    batch's) are ``m1 = y1 + (mu_B - sg mu_B)`` and ``m2 = y2 + (m2_B - sg m2_B)``. The buffers hold the estimate in
    centred form, ``running_mean = mu_hat = y1`` and ``running_var = sigma2_hat = y2 - y1^2`` (never computed as that
    difference, which cancels in float32). Then ``sigma2 = m2 - m1^2`` has the value ``sigma2_hat`` and the
    differential ``dm2_B - 2 mu_hat dmu_B = dsigma2_B + 2 (mu_B - mu_hat) dmu_B``, so per channel

        alpha   = alpha_t                                                     (see "Step size" below)
        mu_hat  <- (1 - alpha) mu_hat + alpha mu_B
        sigma2_hat <- (1 - alpha) sigma2_hat + alpha sigma2_B + alpha (1 - alpha) (mu_B - mu_hat_old)^2
        mean = mu_hat + (mu_B - sg mu_B)
        var  = sigma2_hat + (sigma2_B - sg sigma2_B) + 2 (sg mu_B - mu_hat) (mu_B - sg mu_B)
        y    = gamma * (x - mean) / sqrt(var + eps) + beta

    (the estimate's update is the exact pooled-moments merge of the old estimate and the batch with weights
    ``1 - alpha, alpha``, i.e. the moving average of the raw moments ``(x, x^2)``; ``mu_B, sigma2_B`` are the batch's
    mean and biased variance, pooled over processes when synchronized). In value ``y`` is ``x`` normalized by the
    updated estimate; the input gradient works out to BatchNorm's backward formula *evaluated at the estimate*:

        dx = gamma / sqrt(sigma2_hat + eps) * (g - mean_B(g) - x_hat * mean_B(g * x_hat)),
        x_hat = (x - mu_hat) / sqrt(sigma2_hat + eps),  g = dL/dy,  mean_B over the batch axes.

    With ``alpha = 1`` the estimate *is* the batch's statistics and FN is BatchNorm exactly (outputs, gradients; the
    buffers then hold BN's biased batch statistics). Note that the value of ``y`` depends on the batch only through
    ``alpha * g_B`` while its gradient uses the whole Jacobian of ``g_B``: that is SCGD's estimator, not the
    derivative of the forward map, so finite differences of the layer's output match its gradient only at
    ``alpha = 1`` (the tests check the gradient against the equations above instead).

    **Step size.** ``alpha_t = max(momentum, 1 / t)`` for the t-th training batch (``t = num_batches_tracked + 1``;
    ``momentum=None``: ``alpha_t = 1 / t``, the cumulative average; ``warmup=False``: ``alpha_t = momentum``).
    The warm-up makes the estimate the exact average of all batches seen while ``1/t > momentum``: the first batch is
    normalized exactly as BatchNorm, and the buffers' initial 0/1 never enter a normalization. :meth:`step_size` gives
    ``alpha_t``. ``momentum`` is the estimate's constant step size in torch's convention (weight of the new value).

    **Deviations and choices, stated.** (1) The paper's own step-size schedule and default could not be checked here
    (no public code, no access to the text while writing this): the default ``momentum=0.1`` is BatchNorm's, so that
    ``convert_norm(model, "fn")`` carries a BN's momentum over with the same meaning, and the warm-up above is this
    implementation's; SCGD's analysis uses decaying steps, available as ``momentum=None``. (2) The estimate is
    updated with the current batch *before* it normalizes that batch (SCGD's order), hence the BN limit at
    ``alpha = 1``. (3) Statistics are per channel over every other axis (feature maps included), as every BatchNorm
    in normlab. (4) ``running_var`` is the estimate itself, a biased (population) variance: ``running_var_unbiased``
    is always False and ``True`` is refused; eval mode normalizes with the estimate (``eval_stats="batch"``: with
    plain batch statistics). (5) Masked inputs (``forward(x, mask=, lengths=)``, as :class:`MaskedBatchNorm`): the
    batch moments are over valid positions, padded outputs are 0, and a channel with no valid value keeps its
    estimate.

    Shapes: any rank >= 2, channels on ``axis`` (1 by default, ``-1`` for channels-last / ``(N, L, C)``); output of
    the input's shape. Buffers and state_dict keys are BatchNorm's (``running_mean``, ``running_var``,
    ``num_batches_tracked``), so ``normlab.tools`` fold and recalibrate it like BN.

    Raises ``ValueError`` for ``track_running_stats=False`` or ``running_var_unbiased=True`` at construction; at call
    time the family's errors (naming the layer): non-float input (``TypeError``), wrong rank/channels, a training
    batch with one value per channel (or, masked, a channel with <= 1 valid value), a bad mask or lengths.
    """

    requires_running_stats = True
    plain_batch_moments = False  # compositional statistics (running moments mixed with the batch's)

    @extends_constructor
    def __init__(self, num_features: int, *args, warmup: bool = True, running_var_unbiased: bool = False,
                 **kwargs) -> None:
        if running_var_unbiased:
            raise ValueError(
                f"{type(self).__name__}: running_var_unbiased=True is not supported; running_var is FN's estimate of "
                f"the dataset's (biased, population) variance, which also normalizes in training"
            )
        super().__init__(num_features, *args, running_var_unbiased=False, **kwargs)
        self.warmup = bool(warmup)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", warmup={self.warmup}"

    def step_size(self, step: int | None = None) -> float:
        """``alpha_t`` for the ``step``-th training batch, 1-based (default: the next one,
        ``num_batches_tracked + 1``)."""
        t = int(self.num_batches_tracked) + 1 if step is None else int(step)
        if self.momentum is None:
            return 1.0 / max(t, 1)
        if self.warmup:
            return max(float(self.momentum), 1.0 / max(t, 1))
        return float(self.momentum)

    def forward(self, x: Tensor, mask: Tensor | None = None, lengths: Tensor | None = None) -> Tensor:
        """Normalize ``x``; ``mask`` (bool, True = valid) or ``lengths`` as :class:`MaskedBatchNorm` takes them."""
        if mask is None and lengths is None:
            return super().forward(x)
        c = self.check_input(x)
        mask = validity_mask(x, c, mask, lengths, self.layer_name)  # MaskedBatchNorm's
        if x.numel() == 0:  # nothing to mask: the family's empty-batch behaviour
            return super().forward(x)
        return self._normalize(x, c, mask=mask)

    def _normalize(self, x: Tensor, axis: int, mask: Tensor | None = None) -> Tensor:
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        x_in = x if mask is None else torch.where(mask, x, zero)  # padded values never enter the arithmetic
        dims = _stats.reduce_dims(x.ndim, axis)
        if self.updates_running_stats():
            stats = self.batch_moments(x_in, dims, mask=mask)
            if mask is not None:
                check_valid_counts(stats, self.layer_name, self.sync_statistics)
            mean, var = self._compositional_statistics(stats)
        elif self.uses_batch_stats():  # eval_stats="batch": plain batch statistics, nothing tracked
            stats = self.batch_moments(x_in, dims, mask=mask)
            mean, var = stats.mean, stats.var
        else:
            mean, var = self.running_mean, self.running_var
        y = kernels.normalize(x_in, mean, var, self.weight, self.bias, self.eps, axis=axis)
        return y if mask is None else torch.where(mask, y, zero)

    def _compositional_statistics(self, stats: _stats.Moments) -> tuple[Tensor, Tensor]:
        """Update the estimate with this batch, count the batch, and return ``(mean, var)``: the estimate in value,
        the batch's moments in gradient (see the class docstring)."""
        mu_b, var_b = stats.mean.detach(), stats.var.detach()
        # the estimate's step: the exact merge of the estimate and the batch, weighed 1 - alpha and alpha; a channel
        # no value reached keeps its estimate, and no value anywhere counts no batch
        _stats.track(self.running_mean, self.running_var, self.num_batches_tracked, stats, momentum=self.momentum,
                     weight=self.step_size(), merge=True, running_var_unbiased=False, name=self.layer_name,
                     read_count=True)
        # copies: the buffers change in place at the next call, and autograd may still need these values
        est_mean, est_var = self.running_mean.to(mu_b.dtype, copy=True), self.running_var.to(mu_b.dtype, copy=True)
        d_mean = stats.mean - mu_b  # 0 in value; the batch mean's gradient
        d_var = stats.var - var_b
        mean = est_mean + d_mean
        var = est_var + d_var + 2.0 * (mu_b - est_mean) * d_mean
        return mean, var
