"""Functional normalization: tensors in, tensors out, torch-compatible signatures.

``batch_norm`` has the meaning of :func:`torch.nn.functional.batch_norm` for the shared arguments, plus
``axis`` (the channel axis: ``-1`` for channels-last and ``(N, L, C)`` sequences) and the running-variance
estimator. All arithmetic goes through :mod:`normlab._stats`, or through the same steps on the fast CPU kernels
(:mod:`normlab.kernels`) when the dispatch chooses them (``NORMLAB_KERNELS=auto|fast|native``).
"""

from __future__ import annotations

from torch import Tensor

from . import _stats, _validate, kernels

__all__ = ["batch_norm", "momentum_factor"]


def momentum_factor(momentum: float | None, num_batches_tracked: Tensor | None, name: str = "batch_norm") -> float:
    """The weight of the new batch statistic in the running average.

    ``momentum=None`` means the cumulative (equal-weight) average, as in torch: the n-th batch gets weight 1/n,
    which needs the count of batches seen so far (``num_batches_tracked``, *after* counting this batch).
    """
    if momentum is not None:
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"{name}: momentum must lie in [0, 1] (torch convention: weight of the new value), got {momentum}")
        return float(momentum)
    if num_batches_tracked is None:
        raise ValueError(
            f"{name}: momentum=None (cumulative average) needs num_batches_tracked to count the batches seen"
        )
    return 1.0 / max(int(num_batches_tracked), 1)


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
    ``momentum=None`` it makes the running statistics a cumulative average. Everything is validated before any
    buffer changes.
    """
    _validate.check_float(input, name)
    if input.ndim < 2:
        raise ValueError(f"{name}: expected an input of rank >= 2 (batch and channel), got {input.ndim}D input")
    if not -input.ndim <= axis < input.ndim:
        raise ValueError(f"{name}: channel axis {axis} does not exist in a {input.ndim}D input of shape {tuple(input.shape)}")
    num_features = input.shape[axis]
    c = _validate.check_channels(input, name, num_features, axis)
    for what, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _validate.check_vector(t, name, what, num_features)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    has_running = running_mean is not None
    if not training and not has_running:
        raise ValueError(f"{name}: eval mode (training=False) needs running_mean and running_var")
    if training:
        _validate.check_batch_size(input, name, c)
    if check_finite:
        _validate.check_finite(input, name, c)

    factor = 0.0
    if training and has_running:
        batches = num_batches_tracked + 1 if num_batches_tracked is not None else None
        factor = momentum_factor(momentum, batches, name)

    if not training:
        return kernels.normalize(input, running_mean, running_var, weight, bias, eps, axis=c)

    out, stats = kernels.batch_norm_train(input, weight, bias, eps, axis=c)
    if has_running:
        _stats.update_running(running_mean, running_var, stats, momentum=factor, running_var_unbiased=running_var_unbiased)
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
    return out
