"""Input checks shared by every layer and functional: one wording, raised before any state changes."""

from __future__ import annotations

import torch
from torch import Tensor

from ._stats import channel_axis


def check_float(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point input (float16, bfloat16, float32 or float64), got {x.dtype}; "
            f"convert it first, e.g. x.float()"
        )


def _check_int(value, name: str, what: str, minimum: int, kind: str, or_none: bool) -> None:
    if or_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: {what} must be a {kind} int{' or None' if or_none else ''}, got {value!r}")


def check_positive_int(value, name: str, what: str, *, or_none: bool = False) -> None:
    """``value`` is an int >= 1 (not a bool; ``None`` too if ``or_none``), e.g. a size or a count."""
    _check_int(value, name, what, 1, "positive", or_none)


def check_non_negative_int(value, name: str, what: str) -> None:
    """``value`` is an int >= 0 (not a bool), e.g. a number of steps."""
    _check_int(value, name, what, 0, "non-negative", False)


def check_at_least(value: float, name: str, what: str, minimum: int) -> None:
    """``value >= minimum`` (a NaN fails too), e.g. batch renorm's clipping limits ``r_max >= 1``, ``d_max >= 0``."""
    if not value >= minimum:
        raise ValueError(f"{name}: {what} must be >= {minimum}, got {value}")


def check_rank(x: Tensor, name: str, ranks: tuple[int, ...]) -> None:
    if x.ndim not in ranks:
        want = " or ".join(f"{r}D" for r in ranks)
        raise ValueError(f"{name}: expected {want} input (got {x.ndim}D input of shape {tuple(x.shape)})")


def check_channels(x: Tensor, name: str, num_features: int, axis: int) -> int:
    """Check the channel count on ``axis``; return the axis as a non-negative index."""
    if x.ndim < 1:
        raise ValueError(f"{name}: expected at least a 1D input, got a 0D tensor")
    try:
        c = channel_axis(x.ndim, axis)
    except ValueError:
        raise ValueError(
            f"{name}: channel axis {axis} does not exist in a {x.ndim}D input of shape {tuple(x.shape)}"
        ) from None
    if x.shape[c] != num_features:
        raise ValueError(
            f"{name}: expected {num_features} channels on axis {axis}, got input of shape {tuple(x.shape)} "
            f"with {x.shape[c]}"
        )
    return c


def check_batch_size(x: Tensor, name: str, axis: int) -> None:
    """Training with batch statistics needs more than one value per channel (else the variance is 0/0); an empty
    batch (0 values) is allowed, as in torch: its output is empty and nothing is learned from it."""
    c = channel_axis(x.ndim, axis)
    per_channel = x.numel() // max(x.shape[c], 1)
    if per_channel == 1:
        raise ValueError(
            f"{name}: expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x.shape)} ({per_channel} value per channel); use a batch of 2 or more, or eval mode"
        )


def check_vector(t: Tensor | None, name: str, what: str, num_features: int) -> None:
    if t is not None and tuple(t.shape) != (num_features,):
        raise ValueError(f"{name}: expected {what} of shape ({num_features},), got {tuple(t.shape)}")


def check_finite(x: Tensor, name: str, axis: int) -> None:
    """Raise on NaN/Inf naming the first channel that holds one."""
    c = channel_axis(x.ndim, axis)
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    dims = tuple(d for d in range(x.ndim) if d != c)
    bad = (~finite).any(dim=dims) if dims else ~finite
    first = int(torch.nonzero(bad)[0, 0])
    raise ValueError(
        f"{name}: input holds NaN or Inf (check_finite=True); first bad channel is {first} on axis {axis}, "
        f"{int(bad.sum())} bad channel(s) in all"
    )


def check_not_batch_axis(c: int, name: str, axis: int) -> None:
    """Layers whose statistics are per sample (or split the batch) need the channel axis ``c`` (non-negative)
    apart from the batch axis 0; ``axis`` is the layer's own setting, for the message."""
    if c == 0:
        raise ValueError(f"{name}: the channel axis cannot be the batch axis 0, got axis={axis}")
