"""The per-sample norms' step (LayerNorm, RMSNorm, GroupNorm, InstanceNorm): :func:`sample_norm`, and the one
place that chooses between torch's fused kernels and the composed steps for them.

A layer (:class:`normlab.nn.PerSampleNorm`) declares a :class:`SampleLayout` (torch's trailing dims, or G groups of
channels on an axis), whether it is centred, and which of torch's fused kernels (a key of :data:`FUSED`) computes
its steps; :func:`sample_norm` runs ``_stats.moments`` -> ``_stats.standardize`` -> affine over that layout on the
fused kernel when one is named, else composed (:func:`sample_steps`, differentiable operators only: exact
derivatives of every order, torch.func transforms).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as TF

from .. import _stats
from . import native

__all__ = ["FUSED", "SampleLayout", "layer_norm", "sample_norm", "sample_steps"]


class SampleLayout(NamedTuple):
    """What one call of a per-sample norm takes its statistics over, as the layer declares it.

    ``trailing`` (torch's LayerNorm/RMSNorm mode): statistics per sample over these trailing dims, elementwise affine
    of that shape. Otherwise ``groups`` of channels on ``axis``: statistics per (sample, group) over the group's
    C/G channels and every dim but the batch dim 0, per-channel affine. ``groups=1`` is the feature-map LayerNorm
    (= ``GroupNorm(1, C)``), ``groups=C`` InstanceNorm.
    """

    trailing: tuple[int, ...] | None = None
    axis: int = 1
    groups: int = 1


def _elementwise_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y + bias.to(y.dtype) if bias is not None else y


def sample_steps(x: Tensor, layout: SampleLayout, weight: Tensor | None, bias: Tensor | None, eps: float | None,
                 centred: bool = True) -> Tensor:
    """A per-sample norm from the step API: ``_stats.moments`` (centred or not) over ``layout``'s dims ->
    ``_stats.standardize`` -> the affine. Differentiable operators only, so its derivatives are exact at every order
    and it runs under torch.func transforms; it is also what torch's fused kernels compute (:func:`sample_norm`)."""
    if eps is None:  # torch's RMSNorm default
        eps = torch.finfo(x.dtype).eps
    if layout.trailing is not None:
        dims = tuple(range(x.ndim - len(layout.trailing), x.ndim))
        y = _stats.standardize(x, _stats.moments(x, dims, keepdim=True, centred=centred), eps)
        return _elementwise_affine(y, weight, bias)
    xm = x.movedim(layout.axis, 1)
    xg = xm.reshape(xm.shape[0], layout.groups, -1)
    y = _stats.standardize(xg, _stats.moments(xg, (2,), keepdim=True, centred=centred), eps)
    return _stats.affine(y.reshape(xm.shape).movedim(1, layout.axis), weight, bias, axis=layout.axis)


def _fused_layer_norm(x: Tensor, layout: SampleLayout, weight, bias, eps) -> Tensor:
    if layout.trailing is not None:
        return layer_norm(x, layout.trailing, weight, bias, eps)
    return _stats.affine(layer_norm(x, tuple(x.shape[1:]), None, None, eps), weight, bias, axis=layout.axis)


def _fused_rms_norm(x: Tensor, layout: SampleLayout, weight, bias, eps) -> Tensor:
    if layout.trailing is not None:
        return TF.rms_norm(x, layout.trailing, weight, eps)
    return _stats.affine(TF.rms_norm(x, tuple(x.shape[1:]), None, eps), weight, bias, axis=layout.axis)


def _fused_group_norm(x: Tensor, layout: SampleLayout, weight, bias, eps) -> Tensor:
    return TF.group_norm(x.movedim(layout.axis, 1), layout.groups, weight, bias, eps).movedim(1, layout.axis)


def _fused_instance_norm(x: Tensor, layout: SampleLayout, weight, bias, eps) -> Tensor:
    # torch's instance_norm (its batch_norm on (1, N*C, ...)) has a wrong third derivative: exact_orders keeps its
    # first-order gradients and differentiates the steps when a graph of the backward is requested
    per_channel = SampleLayout(axis=1, groups=layout.groups)
    y = native.exact_orders(
        lambda a, w, b: TF.instance_norm(a, None, None, w, b, True, 0.0, eps),
        lambda a, w, b: sample_steps(a, per_channel, w, b, eps), x.movedim(layout.axis, 1), weight, bias,
    )
    return y.movedim(1, layout.axis)


#: torch's fused kernels, each computing :func:`sample_steps` for the layouts of the layers that name it (faster
#: than the composed steps; see the README's design notes for the timings)
FUSED = {
    "layer_norm": _fused_layer_norm, "rms_norm": _fused_rms_norm, "group_norm": _fused_group_norm,
    "instance_norm": _fused_instance_norm,
}


def sample_norm(x: Tensor, layout: SampleLayout, weight: Tensor | None, bias: Tensor | None, eps: float | None, *,
                centred: bool = True, fused: str | None = None) -> Tensor:
    """The one forward of the per-sample norms: statistics over ``layout`` -> normalize -> affine, on torch's fused
    kernel ``fused`` (a key of :data:`FUSED`) when the layer names one, else on the step API (:func:`sample_steps`).
    An empty input gives torch's empty output, in the graph of ``x`` and the parameters (gradients 0)."""
    if x.numel() == 0:
        if layout.trailing is not None:
            return _elementwise_affine(x * 0, weight, bias)
        return _stats.affine(x * 0, weight, bias, axis=layout.axis)
    if fused is None:
        return sample_steps(x, layout, weight, bias, eps, centred)
    return FUSED[fused](x, layout, weight, bias, eps)


def _layer_norm_composite(x: Tensor, shape: tuple, weight, bias, eps: float) -> Tensor:
    return sample_steps(x, SampleLayout(tuple(shape)), weight, bias, eps)


class _LayerNorm(torch.autograd.Function):
    """torch's fused layer norm forward and first-order backward; a graph of the backward (create_graph=True)
    differentiates the composite instead, whose derivatives are exact at every order."""

    @staticmethod
    def forward(ctx, x, shape, weight, bias, eps):
        y, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.shape, ctx.eps = shape, eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        n = ctx.needs_input_grad
        if torch.is_grad_enabled():
            shape, eps = ctx.shape, ctx.eps
            dx, dw, db = native.double_backward_grads(
                lambda a, w, b: _layer_norm_composite(a, shape, w, b, eps), (x, weight, bias), (n[0], n[2], n[3]), dy)
            return dx, None, dw, db, None
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            dy, x, ctx.shape, mean, rstd, weight, bias, [n[0], n[2] and weight is not None, n[3] and bias is not None])
        return dx if n[0] else None, None, dw if n[2] else None, db if n[3] else None, None


def layer_norm(x: Tensor, shape: tuple, weight, bias, eps: float) -> Tensor:
    """``torch.nn.functional.layer_norm`` with exact derivatives of every order (torch's double backward treats
    the saved statistics as constants and is wrong from the third order on)."""
    if (
        torch.is_grad_enabled() and native.plain(x) and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and (
            x.requires_grad
            or (weight is not None and weight.requires_grad)
            or (bias is not None and bias.requires_grad)
        )
    ):
        return _LayerNorm.apply(x, tuple(shape), weight, bias, eps)
    if not native.plain(x) and torch.is_grad_enabled():  # torch.func transforms: the composite
        return _layer_norm_composite(x, tuple(shape), weight, bias, eps)
    return TF.layer_norm(x, shape, weight, bias, eps)
