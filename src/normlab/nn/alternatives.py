"""Per-sample normalizations: LayerNorm, GroupNorm, InstanceNorm, RMSNorm.

None of these uses batch statistics, so they behave the same in training and eval and at any batch size. They
share BatchNorm's vocabulary (``num_features``, ``axis`` = the channel axis, per-channel affine) and otherwise
take torch's constructor arguments, running on torch's native kernels where torch has one.

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

import torch
from torch import Tensor, nn
from torch.nn import functional as TF

from .. import _stats, _validate
from .. import functional as F

__all__ = ["LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm"]


def _check_eps(eps, name: str) -> None:
    if eps is not None and not eps > 0:
        raise ValueError(f"{name}: eps must be positive, got {eps}")


class _SampleNorm(nn.Module):
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

    _center = True

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
            nn.Parameter(torch.zeros(normalized_shape, **factory)) if elementwise_affine and bias and self._center else None
        )

    @property
    def layer_name(self) -> str:
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"{type(self).__name__}({shape})"

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        return s + (f", axis={self.axis}" if self.axis is not None else "")

    def _check(self, x: Tensor) -> int | None:
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
        if x.ndim < 2:
            raise ValueError(f"{name}: expected an input of rank >= 2 (batch and channel), got {x.ndim}D input")
        c = _validate.check_channels(x, name, self.num_features, self.axis)
        if c == 0:
            raise ValueError(f"{name}: the channel axis cannot be the batch axis 0, got axis={self.axis}")
        return c

    def forward(self, x: Tensor) -> Tensor:
        c = self._check(x)
        if c is None:
            return self._native(x, self.normalized_shape, self.weight, self.bias)
        # Feature-map mode: normalize each sample over all its values, then the per-channel affine.
        return _stats.affine(self._native(x, tuple(x.shape[1:]), None, None), self.weight, self.bias, axis=c)


class LayerNorm(_SampleNorm):
    """LayerNorm (Ba et al. 2016). ``LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``
    as torch; with ``axis=c`` it is the feature-map LayerNorm over all non-batch dims with a per-channel affine
    (= ``GroupNorm(1, C)``), which is what ``make_norm("ln", C)`` builds.

    ``y = gamma * (x - mu) / sqrt(sigma2 + eps) + beta``, ``mu``, ``sigma2`` (biased) per sample.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, axis: int | None = None) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype, axis)

    def _native(self, x, shape, weight, bias):
        return TF.layer_norm(x, shape, weight, bias, self.eps)


class RMSNorm(_SampleNorm):
    """RMSNorm (Zhang & Sennrich 2019): ``y = gamma * x / sqrt(mean(x^2) + eps)``, no centring and no beta.

    ``RMSNorm(normalized_shape, eps=None, elementwise_affine=True)`` as torch (``eps=None`` is torch's default:
    ``torch.finfo(x.dtype).eps``); ``axis=c`` gives the feature-map mode (mean square over all non-batch dims,
    per-channel gamma), which ``make_norm("rms", C)`` builds.
    """

    _center = False

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True,
                 device=None, dtype=None, *, axis: int | None = None) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, False, device, dtype, axis)

    def _native(self, x, shape, weight, bias):
        return TF.rms_norm(x, shape, weight, self.eps)


class GroupNorm(nn.Module):
    """GroupNorm (Wu & He 2018): ``GroupNorm(num_groups, num_channels, eps=1e-5, affine=True)`` as torch, plus
    ``axis`` (the channel axis; ``-1`` for channels-last). Statistics per (sample, group of C/G channels) over the
    group's channels and all spatial positions; per-channel affine. The paper's default is G = 32.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, axis: int = 1) -> None:
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
        self.bias = nn.Parameter(torch.zeros(num_channels, **factory)) if affine else None

    @property
    def layer_name(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_channels})"

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
        return s + (f", axis={self.axis}" if self.axis != 1 else "")

    def forward(self, x: Tensor) -> Tensor:
        name = self.layer_name
        _validate.check_float(x, name)
        if x.ndim < 2:
            raise ValueError(f"{name}: expected an input of rank >= 2 (batch and channel), got {x.ndim}D input")
        c = _validate.check_channels(x, name, self.num_channels, self.axis)
        if c == 0:
            raise ValueError(f"{name}: the channel axis cannot be the batch axis 0, got axis={self.axis}")
        y = TF.group_norm(x.movedim(c, 1), self.num_groups, self.weight, self.bias, self.eps)
        return y.movedim(1, c)


class InstanceNorm(nn.Module):
    """InstanceNorm (Ulyanov et al. 2016): ``InstanceNorm(num_features, eps=1e-5, momentum=0.1, affine=False,
    track_running_stats=False)`` as torch's ``InstanceNorm1d/2d/3d`` (any rank >= 3), plus ``axis``.

    Statistics per (sample, channel) over the spatial positions. With ``track_running_stats=True`` training also
    keeps torch's running averages (the batch mean of the per-instance mean and unbiased variance, updated with
    ``momentum``), and eval mode normalizes with them. ``momentum=None`` is the cumulative average (as BatchNorm's).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, axis: int = 1) -> None:
        super().__init__()
        name = type(self).__name__
        _validate.check_positive_int(num_features, name, "num_features")
        _check_eps(eps, name)
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must lie in [0, 1] or be None (cumulative average), got {momentum}")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats, self.axis = affine, track_running_stats, axis
        self.weight = nn.Parameter(torch.ones(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **factory)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    @property
    def layer_name(self) -> str:
        return f"InstanceNorm({self.num_features})"

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
             f"track_running_stats={self.track_running_stats}")
        return s + (f", axis={self.axis}" if self.axis != 1 else "")

    def forward(self, x: Tensor) -> Tensor:
        name = self.layer_name
        _validate.check_float(x, name)
        if x.ndim < 3:
            raise ValueError(
                f"{name}: expected an input of rank >= 3 (batch, channel and at least one spatial dim), got "
                f"{x.ndim}D input of shape {tuple(x.shape)}; for (N, C) inputs use LayerNorm or BatchNorm"
            )
        c = _validate.check_channels(x, name, self.num_features, self.axis)
        if c == 0:
            raise ValueError(f"{name}: the channel axis cannot be the batch axis 0, got axis={self.axis}")
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats:
            spatial = x.numel() // (x.shape[0] * x.shape[c])
            if spatial <= 1:
                raise ValueError(
                    f"{name}: expected more than 1 spatial value per channel, got input of shape {tuple(x.shape)}"
                )
        momentum = 0.0  # unused unless the running statistics update
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = F.momentum_factor(self.momentum, self.num_batches_tracked, name)
        y = TF.instance_norm(
            x.movedim(c, 1), self.running_mean, self.running_var, self.weight, self.bias,
            use_input_stats, momentum, self.eps,
        )
        return y.movedim(1, c)
