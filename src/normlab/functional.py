"""Functional normalization: tensors in, tensors out, torch-compatible signatures.

``batch_norm`` has the meaning of :func:`torch.nn.functional.batch_norm` for the shared arguments, plus
``axis`` (the channel axis: ``-1`` for channels-last and ``(N, L, C)`` sequences) and the running-variance
estimator. All arithmetic goes through :mod:`normlab._stats`, or through the same steps on the fast CPU kernels
(:mod:`normlab.kernels`) when the dispatch chooses them (``NORMLAB_KERNELS=auto|fast|native``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _stats, _validate, kernels
from ._stats import momentum_factor  # public here since 0.x; the one definition lives with track
from .kernels.dispatch import plain, use_fast_train
from .kernels.native import torch_train

__all__ = ["batch_norm", "momentum_factor"]

_TORCH_KERNEL_DTYPES = (torch.float32, torch.float64)  # torch's fused CPU operator (the native path's), see _batch_norm


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    running_var_unbiased: bool = True,
    num_batches_tracked: Tensor | None = None,
    check_finite: bool = False,
    name: str = "batch_norm",
) -> Tensor:
    """Batch normalization over every dim of ``input`` except ``axis``.

    In training mode (or without running statistics) the batch's mean and biased variance normalize the input,
    and, when running buffers are given in training mode, update them in place:
    ``running <- (1 - momentum) * running + momentum * batch`` (unbiased variance unless
    ``running_var_unbiased=False``). In eval mode the running statistics normalize.

    ``num_batches_tracked`` (optional, as in torch's modules) is incremented on each training update; with
    ``momentum=None`` it makes the running statistics a cumulative average (weight 1 / counter, a tensor
    operation, so torch.compile keeps it in the graph). An empty batch gives an empty output and changes no buffer.
    Derivatives of every order are exact (a graph of the backward is built from differentiable operators).
    Everything is validated before any buffer changes.

    Shapes: ``input`` of rank >= 2, ``running_mean``/``running_var``/``weight``/``bias`` of shape ``(C,)`` with
    C = ``input.shape[axis]``. Raises ``TypeError`` for a non-float input and ``ValueError`` for a wrong shape, a
    missing running statistic in eval mode, or one value per channel in training.
    """
    return _batch_norm(
        input, _checked_axis(input, running_mean, running_var, weight, bias, training, axis, check_finite, name),
        running_mean, running_var, weight, bias, training, momentum, eps, running_var_unbiased, num_batches_tracked,
        name,
    )


def _checked_axis(input, running_mean, running_var, weight, bias, training: bool, axis: int, check_finite: bool,
                  name: str) -> int:
    """Validate :func:`batch_norm`'s arguments; return the channel axis as a non-negative index.

    The common case is decided by a few comparisons (this runs on every call of every layer); anything else
    goes through the full checks, which raise with the message naming what is wrong.
    """
    if isinstance(input, Tensor) and input.is_floating_point():
        shape = input.shape
        nd = len(shape)
        if nd >= 2 and -nd <= axis < nd:
            c = axis % nd
            C = shape[c]
            if (
                (running_mean is None and (training and running_var is None)
                 or running_mean is not None and running_var is not None
                 and running_mean.shape == (C,) and running_var.shape == (C,))
                and (weight is None or weight.shape == (C,))
                and (bias is None or bias.shape == (C,))
                and (not training or input.numel() > C)
            ):
                if check_finite:
                    _validate.check_finite(input, name, c)
                return c
    _validate.check_float(input, name)
    if input.ndim < 2:
        raise ValueError(f"{name}: expected an input of rank >= 2 (batch and channel), got {input.ndim}D input")
    if not -input.ndim <= axis < input.ndim:
        raise ValueError(
            f"{name}: channel axis {axis} does not exist in a {input.ndim}D input of shape {tuple(input.shape)}"
        )
    num_features = input.shape[axis]
    c = _validate.check_channels(input, name, num_features, axis)
    for what, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _validate.check_vector(t, name, what, num_features)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(f"{name}: eval mode (training=False) needs running_mean and running_var")
    if training:
        _validate.check_batch_size(input, name, c)
    if check_finite:
        _validate.check_finite(input, name, c)
    return c


def _batch_norm(
    input: Tensor, c: int, running_mean, running_var, weight, bias, training: bool, momentum, eps: float,
    running_var_unbiased: bool, num_batches_tracked: Tensor | None, name: str,
) -> Tensor:
    """:func:`batch_norm` on arguments already checked (``c`` = the channel axis, non-negative); layers that
    validated their input call this directly, so nothing is checked twice on the hot path."""
    if not training:
        return kernels.normalize(input, running_mean, running_var, weight, bias, eps, axis=c)
    if input.numel() == 0:
        # an empty batch (torch's behaviour): an empty output in the graph of the input and the parameters; no
        # running statistic and no counter changes (there is nothing to average, no batch to count)
        return _stats.affine(input * 0, weight, bias, axis=c)
    dtype = input.dtype
    if (
        (running_mean is None or type(momentum) is float and running_var_unbiased
         and running_mean.dtype == dtype and running_var.dtype == dtype)
        and dtype in _TORCH_KERNEL_DTYPES and input.is_cpu and plain(input)  # (rank >= 2, not empty: checked)
        and not use_fast_train(input, c, weight, bias)
    ):
        # torch's fused operator, as torch.nn.BatchNorm runs it (its autograd node, no Python in the backward); it
        # updates the running buffers itself (unbiased variance, torch's momentum)
        if running_mean is None:
            return torch_train(input, weight, bias, eps, c, None, stats=False)[0]
        if not 0.0 <= momentum <= 1.0:
            momentum_factor(momentum, None, name)  # raises naming the layer, before anything changes
        out = torch_train(input, weight, bias, eps, c, (running_mean, running_var, momentum))[0]
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return out
    if running_mean is None:
        return kernels.batch_norm_train(input, weight, bias, eps, axis=c)[0]
    out, stats = kernels.batch_norm_train(input, weight, bias, eps, axis=c)
    _stats.track(running_mean, running_var, num_batches_tracked, stats, momentum=momentum,
                 running_var_unbiased=running_var_unbiased, name=name)
    return out
