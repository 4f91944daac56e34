"""BatchNorm for sequences: padded batches (:class:`MaskedBatchNorm`) and recurrent nets (:class:`TimeStepBatchNorm`).

Both are :class:`~normlab.nn.batchnorm.BatchNormBase` layers on the shared path (``batch_moments`` with a mask, or
over time steps folded into channels, then ``kernels.normalize``), so they synchronize over processes like the rest.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _stats, _validate, kernels
from .batchnorm import BatchNormBase, extends_constructor

__all__ = ["MaskedBatchNorm", "TimeStepBatchNorm", "validity_mask", "check_valid_counts"]


def validity_mask(x: Tensor, c: int, mask: Tensor | None, lengths: Tensor | None, name: str) -> Tensor | None:
    """The validity mask of a padded batch ``x`` (channel axis ``c``) as a bool tensor broadcastable to ``x``, from
    ``mask`` or ``lengths`` (see :class:`MaskedBatchNorm`), or None for every position; validated before anything
    changes. Raises ``ValueError``/``TypeError`` naming the layer ``name``."""
    if mask is not None and lengths is not None:
        raise ValueError(f"{name}: give mask or lengths, not both")
    if lengths is not None:
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.is_floating_point() or lengths.dtype == torch.bool or tuple(lengths.shape) != (x.shape[0],):
            raise ValueError(
                f"{name}: expected lengths as integers of shape ({x.shape[0]},), got {lengths.dtype} of shape "
                f"{tuple(lengths.shape)}"
            )
        time_axes = [d for d in range(1, x.ndim) if d != c]
        if not time_axes:
            raise ValueError(f"{name}: lengths need a time axis, got a {x.ndim}D input of shape {tuple(x.shape)}")
        t = time_axes[0]
        steps = x.shape[t]
        if bool((lengths < 0).any()) or bool((lengths > steps).any()):
            raise ValueError(
                f"{name}: lengths must lie in [0, {steps}] (the size of axis {t}), got {lengths.tolist()}"
            )
        shape = [1] * x.ndim
        shape[0], shape[t] = x.shape[0], steps
        positions = torch.arange(steps, device=x.device).reshape([steps if d == t else 1 for d in range(x.ndim)])
        return positions < lengths.to(x.device).reshape([-1] + [1] * (x.ndim - 1))
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected a bool mask (True = valid), got {got}")
    given = tuple(mask.shape)
    if mask.ndim == x.ndim - 1:
        mask = mask.unsqueeze(c)
    try:
        # The mask broadcasts *to* x: a larger mask would broadcast x up and change the output's shape.
        ok = mask.ndim == x.ndim and torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        without = tuple(s for d, s in enumerate(x.shape) if d != c)
        raise ValueError(
            f"{name}: expected a mask of shape {without} (the input without its channel axis) or broadcastable "
            f"to the input's shape {tuple(x.shape)}, got a mask of shape {given}"
        )
    return mask.to(x.device)


def check_valid_counts(stats: _stats.Moments, name: str, synchronized: bool) -> None:
    """Training needs more than one valid value per channel (count: a tensor under a mask, else an int); a
    synchronized layer whose statistics hold no valid value on any process has an empty batch. Raises
    ``ValueError`` naming the layer ``name`` and the first channel with too few values."""
    if synchronized and _stats.is_empty(stats, True):
        return  # no valid value on any process: an empty batch, nothing is learned
    counts = stats.count if isinstance(stats.count, Tensor) else torch.full_like(stats.mean, stats.count)
    if bool((counts <= 1).any()):
        bad = int(torch.nonzero(counts.reshape(-1) <= 1)[0, 0])
        raise ValueError(
            f"{name}: expected more than 1 valid value per channel when training, channel {bad} "
            f"has {int(counts.reshape(-1)[bad])}; pass a mask with more valid positions, or use eval mode"
        )


class MaskedBatchNorm(BatchNormBase):
    """BatchNorm over padded batches: ``forward(x, mask=None, lengths=None)``.

    Only valid positions enter the batch statistics and the running statistics; the output at valid positions
    equals BatchNorm applied to the concatenation of the valid positions alone:

        mu = sum(m * x) / sum(m)     sigma2 = sum(m * (x - mu)^2) / sum(m)     (per channel, m = mask)
        y = gamma * (x - mu) / sqrt(sigma2 + eps) + beta     where m, and y = 0 at padded positions.

    **Padded outputs are exactly 0** and receive no gradient; padded inputs may hold anything, even NaN or Inf (they
    never enter the arithmetic; ``check_finite=True`` would still reject them). Eval mode normalizes valid positions
    with the running statistics and also returns 0 at padded ones.

    ``mask``: bool, True = valid; shape ``x.shape`` without the channel axis (e.g. ``(N, L)`` for ``(N, C, L)`` or
    ``(N, L, C)`` inputs), or any shape broadcastable to ``x`` (a size-1 channel axis, or per-channel masks).
    ``lengths``: ``(N,)`` integers, valid prefix length along the *time axis*, the first axis that is neither the
    batch axis 0 nor the channel axis. Give one or neither; with neither the layer is BatchNorm.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, lengths: Tensor | None = None) -> Tensor:
        c = self.check_input(x)
        mask = validity_mask(x, c, mask, lengths, self.layer_name)
        if x.numel() == 0 and self.skips_empty_batch():
            return self.empty_output(x, c)
        if mask is None:
            return self._normalize(x, c)
        if self.uses_batch_stats() and self._local_plain_moments() and mask.shape[c] == 1:
            # per-position mask, local statistics: the fused kernel (or its native twin) does all of it
            y, stats = kernels.batch_norm_train(x, self.weight, self.bias, self.eps, axis=c, mask=mask)
            check_valid_counts(stats, self.layer_name, self.sync_statistics)
            if self.updates_running_stats():
                self.update_running(stats)
            return y
        x_safe = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        if self.uses_batch_stats():
            stats = self.batch_moments(x_safe, _stats.reduce_dims(x.ndim, c), mask=mask)
            check_valid_counts(stats, self.layer_name, self.sync_statistics)
            if self.updates_running_stats():
                self.update_running(stats)
            mean, var = stats.mean, stats.var
        else:
            mean, var = self.running_mean, self.running_var
        y = kernels.normalize(x_safe, mean, var, self.weight, self.bias, self.eps, axis=c)
        return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))

    def statistics_input(self, args: tuple, kwargs: dict) -> tuple[Tensor | None, Tensor | None]:
        """``(x, mask)`` of a call ``forward(x, mask=None, lengths=None)``: the validity mask built as the forward
        builds it (``lengths`` become a mask), or None for every position (see
        :meth:`BatchNormBase.statistics_input`)."""
        x, _ = super().statistics_input(args, kwargs)
        if x is None:
            return None, None
        mask = args[1] if len(args) > 1 else kwargs.get("mask")
        lengths = args[2] if len(args) > 2 else kwargs.get("lengths")
        return x, validity_mask(x, _stats.channel_axis(x.ndim, self.axis), mask, lengths, self.layer_name)


class TimeStepBatchNorm(BatchNormBase):
    """Recurrent BatchNorm with statistics per time step (Cooijmans et al. 2016, arXiv:1603.09025).

    Each time step t has its own batch statistics and its own running statistics, for t < ``max_steps``
    (the paper's T_max); later steps are normalized with their own batch statistics in training and with the
    running statistics of the last step ``max_steps - 1`` at inference, as the paper generalizes beyond T_max (they
    do not update any running statistics):

        y_t = gamma(_t) * (x_t - mu_t) / sqrt(sigma2_t + eps) + beta(_t)

    ``gamma`` starts at ``gamma_init`` = 0.1, the paper's advice (a small gamma keeps tanh/sigmoid gates out of
    saturation and the gradient flowing); ``per_step_affine=True`` gives each step its own gamma and beta
    (shape ``(max_steps, C)``), else they are shared ``(C,)``.

    Two ways to call it:

    * ``forward(x)``: a whole sequence, batch axis 0, time axis ``time_axis`` (1) and channel ``axis`` (-1), e.g.
      ``(N, T, C)``;
    * ``forward(x_t, step=t)``: one step inside a recurrent cell's loop, ``x_t`` of shape ``(N, C)`` (or any rank
      with the channel ``axis``).

    Buffers: ``running_mean``/``running_var`` of shape ``(max_steps, C)`` and ``num_batches_tracked`` of shape
    ``(max_steps,)`` (each step's own count, for ``momentum=None``).
    """

    plain_batch_moments = False  # statistics per time step

    @extends_constructor
    def __init__(
        self,
        num_features: int,
        max_steps: int,
        *args,
        axis: int = -1,
        time_axis: int = 1,
        per_step_affine: bool = False,
        gamma_init: float = 0.1,
        **kwargs,
    ) -> None:
        _validate.check_positive_int(max_steps, type(self).__name__, "max_steps")
        self.gamma_init = float(gamma_init)
        super().__init__(num_features, *args, axis=axis, **kwargs)
        self.max_steps, self.time_axis, self.per_step_affine = max_steps, time_axis, per_step_affine
        factory = self._factory
        if per_step_affine:
            if self.weight is not None:
                self.weight = nn.Parameter(torch.empty(max_steps, num_features, **factory))
            if self.bias is not None:
                self.bias = nn.Parameter(torch.empty(max_steps, num_features, **factory))
        if self.track_running_stats:
            self.running_mean = torch.zeros(max_steps, num_features, **factory)
            self.running_var = torch.ones(max_steps, num_features, **factory)
            self.num_batches_tracked = torch.zeros(max_steps, dtype=torch.long, device=factory["device"])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.constant_(self.weight, getattr(self, "gamma_init", 1.0))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", max_steps={self.max_steps}, time_axis={self.time_axis}, per_step_affine={self.per_step_affine}, "
            f"gamma_init={self.gamma_init}"
        )

    def _affine(self, slots: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """gamma and beta for the given step slots, flattened to ``(len(slots) * C,)``."""
        def pick(p):
            if p is None:
                return None
            return p[slots].reshape(-1) if self.per_step_affine else p.repeat(len(slots))
        return pick(self.weight), pick(self.bias)

    def forward(self, x: Tensor, step: int | None = None) -> Tensor:
        c = self.check_input(x)
        name = self.layer_name
        if step is not None:
            _validate.check_non_negative_int(step, name, "step")
            return self._run(x.unsqueeze(1), c + 1 if c >= 1 else c, 1, first_step=step).squeeze(1)
        if x.ndim < 3:
            raise ValueError(
                f"{name}: a whole sequence needs batch, time and channel axes (got {x.ndim}D input of shape "
                f"{tuple(x.shape)}); for one time step call forward(x, step=t)"
            )
        try:
            t = _stats.channel_axis(x.ndim, self.time_axis)
        except ValueError:
            raise ValueError(f"{name}: time axis {self.time_axis} does not exist in a {x.ndim}D input") from None
        if t in (0, c):
            raise ValueError(
                f"{name}: the time axis ({self.time_axis}) must differ from the batch axis 0 and the channel axis"
            )
        return self._run(x, c, t, first_step=0)

    def _run(self, x: Tensor, c: int, t: int, *, first_step: int) -> Tensor:
        """Normalize ``x`` whose axis ``t`` holds the steps ``first_step, first_step + 1, ...``: the steps are folded
        into the channel axis so that each (step, channel) pair is one BatchNorm channel of the shared path."""
        n_steps, C = x.shape[t], self.num_features
        z = x.movedim((t, c), (1, 2))  # (N, T, C, *rest)
        moved_shape = z.shape
        z = z.reshape(z.shape[0], n_steps * C, *z.shape[3:])
        steps = torch.arange(first_step, first_step + n_steps, device=x.device)
        slots = steps.clamp(max=self.max_steps - 1)
        weight, bias = self._affine(slots)
        if z.numel() == 0 and self.skips_empty_batch():  # torch's empty output; nothing learned or counted
            return _stats.affine(z * 0, weight, bias, axis=1).reshape(moved_shape).movedim((1, 2), (t, c))
        if self.uses_batch_stats():
            per_channel = z.numel() // z.shape[1]
            # synchronized: the pooled count decides (_pool_over_processes)
            if per_channel == 1 and not self.sync_statistics:
                raise ValueError(
                    f"{self.layer_name}: expected more than 1 value per channel and time step when training, got "
                    f"input of shape {tuple(x.shape)}; use a batch of 2 or more, or eval mode"
                )
            stats = self.batch_moments(z, _stats.reduce_dims(z.ndim, 1))
            if self.updates_running_stats():
                self._update_steps(stats, first_step, n_steps)
            mean, var = stats.mean, stats.var
        else:
            mean, var = self.running_mean[slots].reshape(-1), self.running_var[slots].reshape(-1)
        y = kernels.normalize(z, mean, var, weight, bias, self.eps, axis=1)
        return y.reshape(moved_shape).movedim((1, 2), (t, c))

    @torch.no_grad()
    def _update_steps(self, stats: _stats.Moments, first_step: int, n_steps: int) -> None:
        """Running statistics of the steps below ``max_steps``, each with its own batch count."""
        C = self.num_features
        for k in range(n_steps):
            step = first_step + k
            if step >= self.max_steps:
                break
            if _stats.is_empty(stats, self.sync_statistics):
                break  # no sample on any process: nothing to average, no batch to count
            count = stats.count[k * C:(k + 1) * C] if isinstance(stats.count, Tensor) else stats.count
            part = _stats.Moments(stats.mean[k * C:(k + 1) * C], stats.var[k * C:(k + 1) * C], count)
            # each step its own counter (a 0-dim view of the buffer, counted in place)
            _stats.track(self.running_mean[step], self.running_var[step], self.num_batches_tracked[step], part,
                         momentum=self.momentum, running_var_unbiased=self.running_var_unbiased,
                         name=self.layer_name)
