"""Per-sample normalizations: LayerNorm, GroupNorm, InstanceNorm, RMSNorm.

None of these uses batch statistics, so they behave the same in training and eval and at any batch size. They
share BatchNorm's vocabulary (``num_features``, ``axis`` = the channel axis, per-channel affine) and otherwise
take torch's constructor arguments.

One forward for all four, the step :func:`normlab.kernels.sample_norm`: statistics (``_stats.moments``, centred or
not) over a declared :class:`~normlab.kernels.SampleLayout` -> ``_stats.standardize`` -> affine. A layer
(:class:`PerSampleNorm`) declares only what differs: its layout (torch's trailing dims, or G groups of channels on
``axis``: LayerNorm's feature-map mode is G = 1, GroupNorm G, InstanceNorm G = C), whether it is ``centred``
(RMSNorm is not) and which of torch's fused kernels (``fused``, a key of :data:`normlab.kernels.sample.FUSED`)
computes those steps faster. The choice between that kernel and the composed steps is the step API's
(:mod:`normlab.kernels.sample`), not the layer's.

For an input with batch axis 0 and channel axis ``c`` (per sample n, channel k, group g):

* LayerNorm (Ba et al. 2016, arXiv:1607.06450): ``mu_n, sigma2_n`` over all of sample n's values
  (torch mode: over the trailing ``normalized_shape`` dims), ``y = gamma * (x - mu_n) / sqrt(sigma2_n + eps) + beta``.
* GroupNorm (Wu & He 2018, arXiv:1803.08494): the same with ``mu_{n,g}, sigma2_{n,g}`` over the C/G channels of
  group g and all spatial positions. ``GroupNorm(1, C)`` is LayerNorm over (C, *S); ``GroupNorm(C, C)`` is
  InstanceNorm.
* InstanceNorm (Ulyanov et al. 2016, arXiv:1607.08022): ``mu_{n,k}, sigma2_{n,k}`` over the spatial positions.
* RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467): LayerNorm without centring,
  ``y = gamma * x / sqrt(mean(x^2) + eps)`` (no beta).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as TF

from .. import _stats, _validate, kernels
from ..kernels import SampleLayout
from .batchnorm import NormLayer, RunningStatsNorm, reset_affine

__all__ = [
    "LayerNorm", "GroupNorm", "InstanceNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm",
    "PerSampleNorm",
]


def _check_eps(eps, name: str) -> None:
    if eps is not None and not eps > 0:
        raise ValueError(f"{name}: eps must be positive, got {eps}")


# -- the layers: each declares its layout; the forward is kernels.sample_norm over it ---------------------------
class PerSampleNorm(NormLayer):
    """The base of the per-sample norms: a subclass declares what differs — ``centred`` (RMSNorm is not),
    ``fused`` (which of torch's fused kernels computes its steps, :data:`normlab.kernels.sample.FUSED`), the
    parameters it owns and, per call, :meth:`check` (the layer's input rules and errors) and :meth:`layout`
    (normalized dims, groups, affine axis) — and its forward is :func:`normlab.kernels.sample_norm` over them."""

    centred = True
    fused: str | None = None
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    num_features: int
    axis: Any  # the channel axis (an int; None for torch's trailing-dims mode of LayerNorm and RMSNorm)
    eps: Any  # a float; None for RMSNorm (torch's default, the dtype's machine epsilon)

    @property
    def layer_name(self) -> str:
        """How errors name the layer (each layer says it with its size)."""
        return type(self).__name__

    def check(self, x: Tensor) -> int | None:
        """Validate ``x`` (raising naming the layer); return the channel axis as an index, or None in torch's
        trailing-dims mode."""
        raise NotImplementedError

    def layout(self, x: Tensor, c: int | None) -> SampleLayout:
        raise NotImplementedError

    def check_feature_map(self, x: Tensor) -> int:
        """The feature-map rules shared by the per-channel layouts: rank >= 2, ``num_features`` channels on
        ``axis``, which is not the batch axis; returns the channel axis as an index (raises naming the layer)."""
        name = self.layer_name
        if x.ndim < 2:
            raise ValueError(f"{name}: expected an input of rank >= 2 (batch and channel), got {x.ndim}D input")
        c = _validate.check_channels(x, name, self.num_features, self.axis)
        _validate.check_not_batch_axis(c, name, self.axis)
        return c

    def forward(self, x: Tensor) -> Tensor:
        c = self.check(x)
        return kernels.sample_norm(x, self.layout(x, c), self.weight, self.bias, self.eps, centred=self.centred,
                                   fused=self.fused)


class _SampleNorm(PerSampleNorm):
    """LayerNorm and RMSNorm: statistics over a whole sample (or its trailing dims), the same code with and
    without centring.

    Two modes:

    * ``axis=None`` (torch's): ``normalized_shape`` names the trailing dims; statistics *and* the elementwise
      affine cover exactly those dims, as ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` (native kernels).
    * ``axis=<int>`` (feature maps): ``normalized_shape`` is the channel count C on ``axis``; statistics cover
      every dim except the batch dim 0 (C and all spatial dims, the "LN" of the GroupNorm paper, equal to
      ``GroupNorm(1, C)``), and the affine is per channel, like BatchNorm's. For a 2D ``(N, C)`` input both modes
      are the same.
    """

    def __init__(self, normalized_shape, eps, elementwise_affine, bias, device, dtype, axis) -> None:
        super().__init__()
        name = type(self).__name__
        _check_eps(eps, name)
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        normalized_shape = tuple(int(s) for s in normalized_shape)
        if not normalized_shape or any(s < 1 for s in normalized_shape):
            raise ValueError(f"{name}: normalized_shape must be non-empty with positive sizes, got {normalized_shape}")
        if axis is not None and len(normalized_shape) != 1:
            raise ValueError(
                f"{name}: with axis={axis} normalized_shape is the channel count (one int), got {normalized_shape}"
            )
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = normalized_shape
        self.num_features = normalized_shape[0] if axis is not None else normalized_shape[-1]
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.axis = axis
        self.weight = nn.Parameter(torch.ones(normalized_shape, **factory)) if elementwise_affine else None
        self.bias = (
            nn.Parameter(torch.zeros(normalized_shape, **factory))
            if elementwise_affine and bias and self.centred
            else None
        )

    @property
    def layer_name(self) -> str:
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"{type(self).__name__}({shape})"

    def reset_parameters(self) -> None:
        reset_affine(self)

    def extra_repr(self) -> str:
        s = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        return s + (f", axis={self.axis}" if self.axis is not None else "")

    def check(self, x: Tensor) -> int | None:
        name = self.layer_name
        _validate.check_float(x, name)
        if self.axis is None:
            k = len(self.normalized_shape)
            if x.ndim < k or tuple(x.shape[-k:]) != self.normalized_shape:
                raise ValueError(
                    f"{name}: expected an input whose trailing dims are {self.normalized_shape}, "
                    f"got input of shape {tuple(x.shape)}"
                )
            return None
        return self.check_feature_map(x)

    def layout(self, x: Tensor, c: int | None) -> SampleLayout:
        # torch's mode: the trailing dims; feature maps: the whole sample as one group, per-channel affine
        return SampleLayout(self.normalized_shape) if c is None else SampleLayout(axis=c, groups=1)


class LayerNorm(_SampleNorm):
    """LayerNorm (Ba et al. 2016). ``LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``
    as torch; with ``axis=c`` it is the feature-map LayerNorm over all non-batch dims with a per-channel affine
    (= ``GroupNorm(1, C)``), which is what ``make_norm("ln", C)`` builds.

    ``y = gamma * (x - mu) / sqrt(sigma2 + eps) + beta``, ``mu``, ``sigma2`` (biased) per sample.
    """

    fused = "layer_norm"

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, axis: int | None = None) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype, axis)


class RMSNorm(_SampleNorm):
    """RMSNorm (Zhang & Sennrich 2019): ``y = gamma * x / sqrt(mean(x^2) + eps)``, no centring and no beta.

    ``RMSNorm(normalized_shape, eps=None, elementwise_affine=True)`` as torch (``eps=None`` is torch's default:
    ``torch.finfo(x.dtype).eps``); ``axis=c`` gives the feature-map mode (mean square over all non-batch dims,
    per-channel gamma), which ``make_norm("rms", C)`` builds.
    """

    centred = False
    fused = "rms_norm"

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True,
                 device=None, dtype=None, *, axis: int | None = None) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, False, device, dtype, axis)


class GroupNorm(PerSampleNorm):
    """GroupNorm (Wu & He 2018): ``GroupNorm(num_groups, num_channels, eps=1e-5, affine=True, *, bias=True)`` as
    torch, plus
    ``axis`` (the channel axis; ``-1`` for channels-last). Statistics per (sample, group of C/G channels) over the
    group's channels and all spatial positions; per-channel affine. The paper's default is G = 32.
    """

    fused = "group_norm"

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, bias: bool = True, axis: int = 1) -> None:
        super().__init__()
        name = type(self).__name__
        _validate.check_positive_int(num_groups, name, "num_groups")
        _validate.check_positive_int(num_channels, name, "num_channels")
        _check_eps(eps, name)
        if num_channels % num_groups:
            raise ValueError(
                f"{name}: num_channels ({num_channels}) must be divisible by num_groups ({num_groups}); "
                f"choose a divisor of {num_channels}"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_groups, self.num_channels, self.num_features = num_groups, num_channels, num_channels
        self.eps, self.affine, self.axis = eps, affine, axis
        self.weight = nn.Parameter(torch.ones(num_channels, **factory)) if affine else None
        # torch's keyword bias=False: a learned weight and no bias
        self.bias = nn.Parameter(torch.zeros(num_channels, **factory)) if affine and bias else None

    @property
    def layer_name(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_channels})"

    def reset_parameters(self) -> None:
        reset_affine(self)

    def extra_repr(self) -> str:
        s = f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
        return s + (f", axis={self.axis}" if self.axis != 1 else "")

    def check(self, x: Tensor) -> int:
        _validate.check_float(x, self.layer_name)
        return self.check_feature_map(x)

    def layout(self, x: Tensor, c: int | None) -> SampleLayout:
        return SampleLayout(axis=self.axis if c is None else c, groups=self.num_groups)


class InstanceNorm(RunningStatsNorm, PerSampleNorm):
    """InstanceNorm (Ulyanov et al. 2016): ``InstanceNorm(num_features, eps=1e-5, momentum=0.1, affine=False,
    track_running_stats=False, *, bias=True)`` for a batched input of any rank >= 3 (batch axis 0), plus ``axis``.

    Statistics per (sample, channel) over the spatial positions: ``y = gamma * (x - mu_nc) / sqrt(sigma2_nc + eps)
    + beta``. With ``track_running_stats=True`` training also keeps torch's running averages (the batch mean of
    the per-instance mean and unbiased variance, updated with ``momentum``), and eval mode normalizes with them.
    This rank-generic class extends torch's: ``momentum=None`` is the cumulative average over the batches counted
    in ``num_batches_tracked`` (as BatchNorm's). :class:`InstanceNorm1d`, :class:`InstanceNorm2d` and
    :class:`InstanceNorm3d` are torch's classes exactly (rank rules with unbatched inputs, a counter that never
    moves, ``momentum=None`` leaving the running statistics as they are).

    An empty batch gives an empty output and changes no running statistic (torch's layer writes NaN into them).
    Raises ``ValueError`` naming the layer for a wrong rank or channel count (torch only warns about the channel
    count when ``affine=False``) and for a single spatial value per channel when batch statistics are used.
    """

    #: torch-named classes: the rank without a batch axis (unbatched input), else None (any batched rank >= 3)
    _no_batch_rank: int | None = None
    #: torch's counter and momentum=None rules (the counter never moves, momentum=None = no update)
    _torch_counter = False
    #: the per-sample steps' declarations: centred, on torch's fused instance_norm (the running-statistic path in
    #: eval is a per-channel affine map, torch's instance_norm with the buffers)
    centred = True
    fused = "instance_norm"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, bias: bool = True,
                 axis: int = 1) -> None:
        super().__init__()
        # torch's keyword bias=False: a learned weight and no bias
        self._init_state(num_features, eps, momentum, affine, track_running_stats, scale=affine,
                         center=affine and bias, axis=axis, device=device, dtype=dtype)
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # torch's rule, before the shared ones of RunningStatsNorm: a checkpoint without metadata (from before
        # torch 0.4) may hold running statistics a non-tracking layer does not have (reported and dropped)
        if local_metadata.get("version", None) is None and not self.track_running_stats:
            keys = [prefix + k for k in ("running_mean", "running_var") if prefix + k in state_dict]
            if keys:
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {' and '.join(repr(k) for k in keys)} for "
                    f"{type(self).__name__} with track_running_stats=False (a checkpoint saved before torch 0.4.0?); "
                    f"remove these keys from state_dict, or set track_running_stats=True to use them"
                )
                for k in keys:
                    state_dict.pop(k)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        name = self.layer_name
        _validate.check_float(x, name)
        rank = self._no_batch_rank
        if rank is not None:
            if x.ndim not in (rank, rank + 1):
                raise ValueError(
                    f"{name}: expected {rank}D (unbatched) or {rank + 1}D (batched) input, got {x.ndim}D input of "
                    f"shape {tuple(x.shape)}"
                )
            if x.ndim == rank:  # unbatched, as torch: a batch of one
                return self._batched(x.unsqueeze(0)).squeeze(0)
        elif x.ndim < 3:
            raise ValueError(
                f"{name}: expected an input of rank >= 3 (batch, channel and at least one spatial dim), got "
                f"{x.ndim}D input of shape {tuple(x.shape)}; for (N, C) inputs use LayerNorm or BatchNorm"
            )
        return self._batched(x)

    def _batched(self, x: Tensor) -> Tensor:
        name = self.layer_name
        c = _validate.check_channels(x, name, self.num_features, self.axis)
        _validate.check_not_batch_axis(c, name, self.axis)
        use_input_stats = self.training or not self.track_running_stats
        if x.numel() == 0:  # torch's empty output; nothing learned, no running statistic changes
            return _stats.affine(x * 0, self.weight, self.bias, axis=c)
        if use_input_stats and x.numel() // (x.shape[0] * x.shape[c]) == 1:
            raise ValueError(
                f"{name}: expected more than 1 spatial value per channel, got input of shape {tuple(x.shape)}"
            )
        track = self.training and self.track_running_stats
        xm = x.movedim(c, 1)
        if not use_input_stats:  # running statistics: BatchNorm's eval normalize step (a per-channel affine map)
            return kernels.normalize(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps, axis=c)
        eps = self.eps
        if track and not kernels.native.plain(xm):
            # under a torch.func transform the running update is torch's to refuse, as torch's layer does
            momentum: float = self.momentum if self.momentum is not None else 0.0
            if not self._torch_counter:
                self.num_batches_tracked.add_(1)
                momentum = float(_stats.momentum_factor(self.momentum, int(self.num_batches_tracked), name))
            y = TF.instance_norm(xm, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, eps)
            return y.movedim(1, c)
        # the per-sample steps, one group per channel (torch's fused instance_norm computes them)
        y = kernels.sample_norm(x, self.layout(x, c), self.weight, self.bias, eps, centred=self.centred,
                                fused=self.fused)
        if track:
            self._track(xm)
        return y

    def layout(self, x: Tensor, c: int | None) -> SampleLayout:
        """Statistics per (sample, channel) over the spatial positions: one group per channel."""
        c = _stats.channel_axis(x.ndim, self.axis) if c is None else c
        return SampleLayout(axis=c, groups=x.shape[c])

    def _track(self, xm: Tensor) -> None:
        """The running step: torch's (the batch mean of the per-instance means and unbiased variances) through the
        one :func:`normlab._stats.track`. torch-named classes do not count and take ``momentum=None`` as no update."""
        if self._torch_counter and self.momentum is None:
            return
        with torch.no_grad():
            inst = _stats.moments(xm.detach(), tuple(range(2, xm.ndim)))  # (N, C), biased, count = spatial size
            stats = _stats.Moments(inst.mean.mean(0), inst.var.mean(0), inst.count)
        _stats.track(self.running_mean, self.running_var, None if self._torch_counter else self.num_batches_tracked,
                     stats, momentum=self.momentum, name=self.layer_name)


class InstanceNorm1d(InstanceNorm):
    """``torch.nn.InstanceNorm1d``: input ``(N, C, L)`` or unbatched ``(C, L)``; torch's counter and ``momentum``
    rules (``num_batches_tracked`` never moves; ``momentum=None`` leaves the running statistics unchanged)."""

    _no_batch_rank = 2
    _torch_counter = True


class InstanceNorm2d(InstanceNorm):
    """``torch.nn.InstanceNorm2d``: input ``(N, C, H, W)`` or unbatched ``(C, H, W)``; torch's rules, as
    :class:`InstanceNorm1d`."""

    _no_batch_rank = 3
    _torch_counter = True


class InstanceNorm3d(InstanceNorm):
    """``torch.nn.InstanceNorm3d``: input ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)``; torch's rules, as
    :class:`InstanceNorm1d`."""

    _no_batch_rank = 4
    _torch_counter = True
