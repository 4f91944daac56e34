"""Fold eval-mode batch normalization into the preceding Conv / ConvTranspose / Linear ("fused BN").

In eval mode a batch-norm layer is a fixed per-channel affine map of its input z:

    BN(z) = gamma * (z - mu) / sqrt(sigma2 + eps) + beta = s * z + (beta - s * mu),   s = gamma / sqrt(sigma2 + eps)

with mu, sigma2 the running statistics. When z = W * x + b is the output of a convolution or a linear layer,
the composition is again a convolution / linear layer with

    W' = s * W   (scaling output channel o of W by s_o)      b' = s * (b - mu) + beta

so the normalization costs nothing at inference. For ``ConvTranspose*d`` the weight is laid out
``(in_channels, out_channels / groups, *kernel)``: output channel ``o = g * (out / groups) + j`` is column ``j``
of the rows of group ``g``, which is where the scale goes.

:func:`fold_into` is the pure tensor function; :func:`plan_fold` decides which pairs fold (through ``torch.fx``
data flow where the model traces, through ``nn.Sequential`` order where it does not) and says why the others do
not; :func:`fold_batchnorm` applies the plan to a copy of the model (or in place).

A :class:`normlab.nn.NormAct` whose norm is a batch norm is ``act(BN(z))``; in eval mode that is ``act(s * z + c)``,
so its BN folds into the layer before the NormAct like a bare BN (the NormAct keeps its activation, its norm becomes
``nn.Identity`` and an in-place ABN NormAct becomes a plain one: with no statistics left there is nothing to save).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import Tensor, fx, nn

from .. import reference
from ..nn.act import NormAct
from ._common import (
    BatchNormLike,
    RewriteReport,
    as_batch_norm,
    eval_uses_running_stats,
    graph_call_counts,
    is_batch_norm,
    is_norm,
    join_path,
    module_nonfinite,
    module_use_counts,
    norm_axis,
    set_submodule,
    trace_or_note,
)

__all__ = [
    "FoldReport", "FoldedFeatureNorm", "fold_into", "plan_fold", "fold_batchnorm", "LeafTracer", "wrapped_norm",
    "sequential_pairs",
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
FOLD_TARGETS = _CONV + _CONV_T + (nn.Linear,)
FoldTarget = (
    nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d | nn.Linear
)


def _as_fold_target(module: nn.Module) -> FoldTarget:
    """``module`` as a layer a batch norm folds into (the plan only pairs those); TypeError otherwise."""
    if not isinstance(module, FOLD_TARGETS):
        raise TypeError(f"fold: expected a Conv, ConvTranspose or Linear layer, got {type(module).__name__}")
    return module


# -- the pure tensor function ------------------------------------------------------------------------------------
def fold_into(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    *,
    transposed: bool = False,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """Weight and bias of the layer equal to ``norm(layer(x))`` for an eval-mode batch norm after a layer.

    ``weight`` is a ``Linear`` (out, in), ``Conv`` (out, in / groups, *k) or, with ``transposed=True``, a
    ``ConvTranspose`` (in, out / groups, *k) weight. A missing ``bias`` counts as zero, a missing ``norm_weight``
    (gamma) as one and a missing ``norm_bias`` (beta) as zero. Computed in float64 and returned in ``weight``'s
    dtype and device; the bias is always returned (a conv without bias gains one).
    """
    if weight.ndim < 2:
        raise ValueError(f"fold_into: expected a layer weight of rank >= 2, got shape {tuple(weight.shape)}")
    if groups < 1 or (transposed and weight.shape[0] % groups):
        raise ValueError(f"fold_into: groups={groups} does not divide the weight's {weight.shape[0]} input channels")
    out = weight.shape[1] * groups if transposed else weight.shape[0]
    for what, t in (("running_mean", running_mean), ("running_var", running_var), ("bias", bias),
                    ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if t is not None and tuple(t.shape) != (out,):
            raise ValueError(
                f"fold_into: expected {what} of shape ({out},) to match the layer's {out} output channels, "
                f"got {tuple(t.shape)}"
            )
    if eps < 0:
        raise ValueError(f"fold_into: eps must be non-negative, got {eps}")
    def f64(t: Tensor) -> Tensor:
        return t.detach().to(dtype=torch.float64, device=weight.device)

    scale = torch.rsqrt(f64(running_var) + eps)
    if norm_weight is not None:
        scale = scale * f64(norm_weight)
    b = f64(bias) if bias is not None else torch.zeros(out, dtype=torch.float64, device=weight.device)
    new_bias = (b - f64(running_mean)) * scale
    if norm_bias is not None:
        new_bias = new_bias + f64(norm_bias)
    w = f64(weight)
    if transposed:
        kernel = w.shape[2:]
        per_group = w.reshape(groups, w.shape[0] // groups, w.shape[1], *kernel)
        shape = (groups, 1, w.shape[1]) + (1,) * len(kernel)
        new_weight = (per_group * scale.reshape(shape)).reshape(w.shape)
    else:
        new_weight = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


# -- the plan ----------------------------------------------------------------------------------------------------
@dataclass
class FoldReport(RewriteReport, tool="fold", verb="folded", done_field="folded"):
    """What :func:`fold_batchnorm` folds and why it leaves the rest.

    ``folded``: ``(layer name, norm name)`` pairs; ``skipped``: ``(norm name, reason)``; ``traced``: modules whose
    data flow was read with ``torch.fx`` (``""`` is the whole model); ``untraced``: ``(module name, error)`` for
    modules that did not trace, where only ``nn.Sequential`` order was used.
    """

    folded: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    traced: list[str] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)

    def _done_lines(self) -> list[str]:
        return [f"  folded  {norm or '<model>'} into {layer}" for layer, norm in self.folded]


class LeafTracer(fx.Tracer):
    """Keeps the fold targets and every norm opaque (normlab's input checks need concrete shapes); the tracer of
    fold and inspect."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            isinstance(m, FOLD_TARGETS)
            or is_batch_norm(m)
            or is_norm(m)
            or super().is_leaf_module(m, qualname)
        )


def wrapped_norm(module: nn.Module) -> tuple[str, nn.Module] | None:
    """``("<suffix>", norm)`` when ``module`` *is* a batch norm (suffix ``""``) or a NormAct around one
    (``".norm"``, the BN inside ``act(BN(x))``), else ``None``."""
    if is_batch_norm(module):
        return "", module
    if isinstance(module, NormAct) and is_batch_norm(module.norm):
        return ".norm", module.norm
    return None



def sequential_pairs(module: nn.Module, prefix: str) -> list[tuple[str, str, FoldTarget, nn.Module]]:
    """``(norm path, layer path, layer, norm)`` for each Conv, ConvTranspose or Linear child of the ``nn.Sequential``
    ``module`` that the next child normalizes (a batch norm, or a NormAct around one); none for other modules.
    An nn.Sequential feeds each child's output to the next child and nothing else: order is data flow there."""
    if not isinstance(module, nn.Sequential):
        return []
    children = list(module.named_children())
    pairs = []
    for (layer_name, layer), (norm_name, follower) in zip(children, children[1:]):
        wrapped = wrapped_norm(follower)
        if wrapped is not None and isinstance(layer, FOLD_TARGETS):
            suffix, norm = wrapped
            pairs.append((join_path(prefix, norm_name) + suffix, join_path(prefix, layer_name), layer, norm))
    return pairs


def _out_channels(layer: FoldTarget) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _output_rank(layer: FoldTarget) -> int:
    """The rank of the layer's output as the norm sees it (batched input assumed)."""
    if isinstance(layer, nn.Linear):
        return 2  # (N, C): the one rank where axis 1 and axis -1 both name Linear's features
    return layer.weight.ndim  # conv weights have the same rank as the batched input/output


def _probe(layer: FoldTarget, norm: BatchNormLike) -> str | None:
    """Check numerically that the norm's eval-mode output is the running-statistics affine map.

    Guards against batch-norm subclasses whose eval mode does something else (they would fold wrongly).
    """
    rank = _output_rank(layer)
    c = norm_axis(cast(nn.Module, norm)) % rank
    shape = [2] * rank
    shape[c] = norm.num_features
    dtype = norm.running_mean.dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=norm.running_mean.device)

    def f64(t: Tensor | None):
        return None if t is None else t.detach().cpu().double().numpy()

    # the oracle: eval-mode BatchNorm from its equation, in float64 (non-finite statistics are reported below)
    with np.errstate(all="ignore"):
        expected = torch.from_numpy(reference.batch_norm_inference(
            f64(x), f64(norm.running_mean), f64(norm.running_var), f64(norm.weight), f64(norm.bias), norm.eps, axis=c))
    try:
        with torch.no_grad():
            got = norm(x).cpu().double()
    except Exception as exc:  # noqa: BLE001 - any failure means: do not fold
        return f"its eval-mode forward failed on a probe input of shape {tuple(shape)}: {exc}"
    if not bool(torch.isfinite(expected).all()):
        return "its running statistics or affine parameters are not finite (NaN or inf), so folding would spread them"
    tol = 64 * torch.finfo(dtype).eps
    atol = tol * (1 + float(expected.abs().max()))
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tol, atol=atol):
        return f"its eval-mode output is not the running-statistics affine map ({type(norm).__name__})"
    return None


def _synthetic_input(layer: FoldTarget) -> Tensor:
    """A small float64 input the layer accepts: ``(2, in_features)`` for a Linear (the ``(N, C)`` reading), a batch
    of 2 with spatial sizes that fit the kernel, stride, dilation and padding for a convolution."""
    gen = torch.Generator().manual_seed(1)
    if isinstance(layer, nn.Linear):
        return torch.randn(2, layer.in_features, generator=gen, dtype=torch.float64)
    k, d, st = layer.kernel_size, layer.dilation, layer.stride
    pad = layer.padding if isinstance(layer.padding, tuple) else (0,) * len(k)
    sizes = [di * (ki - 1) + 1 + si + 2 * pi for ki, di, si, pi in zip(k, d, st, pad)]
    return torch.randn(2, layer.in_channels, *sizes, generator=gen, dtype=torch.float64)


def _folded_layer(layer: FoldTarget, norm: BatchNormLike, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``layer`` (in ``dtype`` if given) carrying the weights of :func:`fold_into`."""
    new = copy.deepcopy(layer)
    if dtype is not None:
        new = new.to(dtype)
    dt = new.weight.dtype
    weight, bias = fold_into(
        new.weight, new.bias, norm.running_mean.detach().to(dt), norm.running_var.detach().to(dt), norm.eps,
        None if norm.weight is None else norm.weight.detach().to(dt),
        None if norm.bias is None else norm.bias.detach().to(dt),
        transposed=isinstance(layer, _CONV_T), groups=layer.groups if isinstance(layer, _CONV_T) else 1,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if new.bias is None:
            new.bias = nn.Parameter(bias)
        else:
            new.bias.copy_(bias)
    return new


def _check_on_input(layer: FoldTarget, norm: BatchNormLike, x: Tensor, what: str) -> str | None:
    """Why ``folded_layer(x)`` differs from ``norm(layer(x))``, computed in float64, or ``None`` if it does not.

    This is what makes folding safe: the fold is the per-channel affine map along the *layer's* output feature axis
    (axis 1 of a conv's output, the last axis of a Linear's), and it is right only when the norm normalizes that
    same axis of the tensor it actually receives."""
    x = x.detach().to(torch.float64)
    try:
        layer64 = copy.deepcopy(layer).to(torch.float64)
        norm64 = copy.deepcopy(cast(nn.Module, norm)).to(torch.float64)
        with torch.no_grad():
            z = layer64(x)
            want = norm64(z)
    except Exception as exc:  # noqa: BLE001 - the pair cannot even run on this input: do not fold
        return f"norm(layer(x)) failed on {what} of shape {tuple(x.shape)}: {exc}"
    axis = norm_axis(cast(nn.Module, norm))
    if isinstance(layer, nn.Linear) and z.ndim > 2 and axis % z.ndim != z.ndim - 1:
        return (
            f"the Linear before it acts on the last axis of its {tuple(z.shape)} output, but the norm normalizes "
            f"axis {axis % z.ndim} (seen on {what}); folding would scale the wrong axis "
            f"(use a channels-last norm, axis=-1, if the Linear's features are the channels)"
        )
    with torch.no_grad():
        got = _folded_layer(layer, norm, torch.float64)(x)
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    if got.shape != want.shape or not diff <= 1e-9 * (1 + float(want.abs().max()) if want.numel() else 1):
        return f"the folded layer differs from norm(layer(x)) by {diff:.3g} on {what} of shape {tuple(x.shape)}"
    return None


def _pair_problem(
    layer: FoldTarget, module: nn.Module, counts: dict[int, int], seen: Tensor | None = None
) -> str | None:
    """Why ``norm(layer(x))`` cannot be folded into ``layer``, or ``None`` if it can.

    ``seen`` is the layer's input on the example input, when :func:`plan_fold` got one: the pair is then checked
    on it (folded against unfolded); else on a small synthetic input of the layer."""
    reason = eval_uses_running_stats(module)
    if reason:
        return reason
    norm = as_batch_norm(module)  # it has running statistics: eval_uses_running_stats said so
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        return f"{type(layer).__name__} before it is lazy and not initialized yet"
    bad = module_nonfinite(module, "the norm's") + module_nonfinite(layer, f"the {type(layer).__name__}'s")
    if bad:
        return "; ".join(b.replace("'s.", "'s ") for b in bad) + ": folding would spread them"
    if counts.get(id(layer), 1) > 1 or counts.get(id(norm), 1) > 1:
        return "the layer or the norm is shared (registered under several names), so folding would change other uses"
    if tuple(norm.running_mean.shape) != (norm.num_features,):
        return f"its running statistics have shape {tuple(norm.running_mean.shape)}, not one value per channel"
    if _out_channels(layer) != norm.num_features:
        return f"{norm.num_features} channels, but the {type(layer).__name__} before it has {_out_channels(layer)}"
    axis = norm_axis(module)
    if isinstance(layer, nn.Linear):
        if axis not in (1, -1):
            return f"channel axis {axis} is not the feature axis of the Linear before it (use axis=-1)"
    elif axis not in (1, 1 - layer.weight.ndim):
        return f"channel axis {axis} is not the channel axis (1) of the {type(layer).__name__} before it"
    reason = _probe(layer, norm)
    if reason:
        return reason
    if seen is not None:
        if seen.is_floating_point() and not bool(torch.isfinite(seen).all()):
            # NaN from elsewhere in the model reaches this layer: what matters is the shape, so use random values
            gen = torch.Generator().manual_seed(2)
            seen = torch.randn(seen.shape, generator=gen, dtype=torch.float64)
        return _check_on_input(layer, norm, seen, "the example input")
    try:
        x = _synthetic_input(layer)
        with torch.no_grad():
            copy.deepcopy(layer).to(torch.float64)(x)
    except Exception:  # noqa: BLE001 - an unusual layer configuration: the norm-only probe above stands
        return None
    return _check_on_input(layer, norm, x, "a probe input")


def _describe(node: object) -> str:
    if isinstance(node, fx.Node):
        if node.op == "call_module":
            return f"module {node.target!r}"
        if node.op == "placeholder":
            return f"the input {node.target!r}"
        return f"{node.op} {getattr(node.target, '__name__', node.target)!s}"
    return repr(node)


def _plan_graph(
    graph: fx.Graph, root: nn.Module, prefix: str, counts: dict[int, int], decisions: dict, seen: dict
) -> None:
    calls = graph_call_counts(graph)
    for node in graph.nodes:
        target = str(node.target)  # a call_module node's target is the module's dotted path
        wrapped = wrapped_norm(root.get_submodule(target)) if node.op == "call_module" else None
        if wrapped is None:
            continue
        name = join_path(prefix, target) + wrapped[0]
        norm = wrapped[1]
        src = node.args[0] if node.args else None
        if len(node.args) != 1 or node.kwargs:
            decisions[name] = (None, "called with more than one argument")
        elif calls[target] > 1:
            decisions[name] = (None, "called more than once in forward")
        elif not (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(root.get_submodule(str(src.target)), FOLD_TARGETS)
        ):
            what = "not the output of a Conv, ConvTranspose or Linear"
            decisions[name] = (None, f"its input is {_describe(src)}, {what}")
        elif len(src.users) != 1:
            others = ", ".join(_describe(u) for u in src.users if u is not node)
            decisions[name] = (None, f"the output of {src.target!r} is also used by {others}")
        elif calls[str(src.target)] > 1:
            decisions[name] = (None, f"{src.target!r} is called more than once in forward")
        else:
            layer = _as_fold_target(root.get_submodule(str(src.target)))
            decisions[name] = (
                join_path(prefix, str(src.target)), _pair_problem(layer, norm, counts, seen.get(id(layer)))
            )


def _plan_module(
    module: nn.Module, prefix: str, counts: dict[int, int], report: FoldReport, decisions: dict, seen: dict
) -> None:
    if isinstance(module, FOLD_TARGETS) or wrapped_norm(module) is not None:
        return  # a NormAct's BN is planned with what comes before the NormAct, by its parent
    if not any(is_batch_norm(m) for m in module.modules()):
        return
    graph = trace_or_note(LeafTracer(), module, prefix, report)
    if graph is not None:
        _plan_graph(graph, module, prefix, counts, decisions, seen)
        return
    for norm_path, layer_path, layer, norm in sequential_pairs(module, prefix):
        decisions[norm_path] = (layer_path, _pair_problem(layer, norm, counts, seen.get(id(layer))))
    for child_name, child in module.named_children():
        _plan_module(child, join_path(prefix, child_name), counts, report, decisions, seen)


def _layer_inputs(model: nn.Module, example_input) -> dict[int, Tensor]:
    """The first input of every Conv/ConvTranspose/Linear when the eval-mode model runs on ``example_input``.

    Every module's training flag is restored afterwards (in eval mode no normlab or torch norm changes its state)."""
    inputs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("plan_fold: example_input must be a Tensor or a non-empty tuple of Tensors")
    seen: dict[int, Tensor] = {}

    def record(module, args):
        if args and isinstance(args[0], Tensor):
            seen.setdefault(id(module), args[0].detach().clone())  # clone: in-place ABN may overwrite it later

    flags = [(m, m.training) for m in model.modules()]
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, FOLD_TARGETS)]
    try:
        model.eval()
        with torch.no_grad():
            model(*(t.clone() for t in inputs))
    except Exception as exc:
        raise ValueError(
            f"plan_fold: the eval-mode model failed on example_input: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for h in hooks:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return seen


def plan_fold(model: nn.Module, example_input: Tensor | tuple[Tensor, ...] | None = None) -> FoldReport:
    """What :func:`fold_batchnorm` would fold in ``model`` and why it would skip the rest; changes nothing.

    Data flow comes from ``torch.fx`` (a norm folds when its only input is a Conv/ConvTranspose/Linear output that
    feeds nothing else, each called once). A module that does not trace is searched for ``nn.Sequential``
    neighbours (layer then norm) and its children are traced one by one.

    Every candidate pair is checked numerically: the folded layer must give the norm's output (float64). With
    ``example_input`` (what the model takes) the check runs on each layer's actual input, which also proves that the
    layer's output feature axis is the axis the norm normalizes: a ``Linear`` acting on the last axis ``L`` of an
    ``(N, C, L)`` tensor followed by a ``BatchNorm1d`` over ``C`` is refused with that reason. Without it, the check
    runs on a small synthetic input of each layer (a Linear's is ``(N, C)``). Weights or buffers holding NaN or inf
    are refused naming the tensor. Raises ``TypeError`` for a non-module or a bad ``example_input`` and
    ``ValueError`` if the model fails on ``example_input``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"plan_fold: expected a torch.nn.Module, got {type(model).__name__}")
    seen = _layer_inputs(model, example_input) if example_input is not None else {}
    report = FoldReport()
    decisions: dict[str, tuple[str | None, str | None]] = {}
    _plan_module(model, "", module_use_counts(model), report, decisions, seen)
    for name, norm in model.named_modules():
        if not is_batch_norm(norm):
            continue
        reason: str | None
        if name not in decisions:
            reason = eval_uses_running_stats(norm) or (
                "not reached: no traced forward calls it, and it does not follow a Conv/Linear in an nn.Sequential"
            )
            report.skipped.append((name, reason))
            continue
        layer, reason = decisions[name]
        if reason is not None:
            reason = eval_uses_running_stats(norm) or reason  # the actionable reason first
        if reason is None and layer is not None:  # a decision without a layer always has its reason
            report.folded.append((layer, name))
        else:
            report.skipped.append((name, reason or "no layer to fold into"))
    return report


class FoldedFeatureNorm(nn.Identity):
    """Stands where a channel-axis-1 norm after a ``Linear`` was folded. The fold assumed ``(N, C)`` inputs, the only
    ones on which a Linear's features lie on axis 1; any other rank raises instead of giving a wrong output."""

    def __init__(self, name: str, num_features: int) -> None:
        super().__init__()
        self.folded_name, self.num_features = name, num_features

    def extra_repr(self) -> str:
        return f"folded {self.folded_name!r}, (N, {self.num_features}) inputs only"

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2:
            raise ValueError(
                f"folded norm {self.folded_name!r}: it was folded into the Linear before it for (N, C) inputs, got a "
                f"{x.ndim}D input of shape {tuple(x.shape)}, whose axis 1 is not the Linear's feature axis: this "
                f"output would be wrong. Fold with fold_batchnorm(model, example_input=x) (such pairs are refused), "
                f"or use a channels-last norm (axis=-1)"
            )
        return x


def fold_batchnorm(
    model: nn.Module,
    inplace: bool = False,
    *,
    strict: bool = False,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
) -> nn.Module:
    """Fold every foldable eval-mode batch norm into the layer before it; return the folded model.

    The folded norms become ``nn.Identity`` and their layers get the weights of :func:`fold_into` (a conv without
    bias gains one); everything else, the model's class included, stays. The result matches the eval-mode model.
    The BN inside a ``normlab.nn.NormAct`` after a layer folds too (the NormAct keeps its activation and turns
    ``inplace_abn`` off).
    Handles ``torch.nn.BatchNorm*d`` (and ``SyncBatchNorm``) and every ``normlab.nn.BatchNormBase`` layer.

    A norm with channel axis 1 after a ``Linear`` is folded as the ``(N, C)`` case, the only input on which a
    Linear's features lie on axis 1; for ``(N, L, C)`` sequences use a channels-last norm (``axis=-1``). With
    ``example_input`` every pair is checked on the layer's actual input first (see :func:`plan_fold`), so a Linear
    acting on another axis than the norm's is refused; without it the folded norm is replaced by a
    :class:`FoldedFeatureNorm` that raises on any input that is not ``(N, C)`` rather than return a wrong output.

    ``inplace=False`` folds a deep copy. :func:`plan_fold` returns the :class:`FoldReport` of what this call folds.
    Norms that cannot fold are skipped with a warning listing the reasons, or, with ``strict=True``, make it raise
    ``ValueError``. A model without any batch norm raises ``ValueError``. On any error the model is unchanged.
    """
    if not isinstance(model, nn.Module):  # named here, not as the plan it calls
        raise TypeError(f"fold_batchnorm: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):  # fold_batchnorm(model, x): a tensor's truth would decide inplace
        raise TypeError(f"fold_batchnorm: inplace must be True or False, got {type(inplace).__name__} (an example "
                        f"input goes to example_input=); model unchanged")
    report = plan_fold(model, example_input)
    if not report.num_norms:
        raise ValueError(
            "fold_batchnorm: the model has no batch-norm layer to fold (looked for torch.nn.BatchNorm*d, "
            "SyncBatchNorm and normlab.nn.BatchNormBase subclasses)"
        )
    if strict and report.skipped:
        raise ValueError(f"fold_batchnorm(strict=True): cannot fold every batch norm; model unchanged.\n{report}")
    # Compute every new weight before touching any module, so an error leaves the model as it was.
    folded = []
    for layer_name, norm_name in report.folded:
        layer, module = _as_fold_target(model.get_submodule(layer_name)), model.get_submodule(norm_name)
        norm = as_batch_norm(module)
        weight, bias = fold_into(
            layer.weight, layer.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias,
            transposed=isinstance(layer, _CONV_T), groups=layer.groups if isinstance(layer, _CONV_T) else 1,
        )
        guard = isinstance(layer, nn.Linear) and norm_axis(module) == 1
        folded.append((layer_name, norm_name, weight, bias, guard))
    target = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for layer_name, norm_name, weight, bias, guard in folded:
            layer = _as_fold_target(target.get_submodule(layer_name))
            layer.weight.copy_(weight)
            if layer.bias is None:
                layer.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
            else:
                layer.bias.copy_(bias)
            # guard: a Linear whose norm takes axis 1 (see FoldedFeatureNorm)
            replacement = (
                FoldedFeatureNorm(norm_name, layer.out_features) if guard and isinstance(layer, nn.Linear)
                else nn.Identity()
            )
            set_submodule(target, norm_name, replacement)
            parent = target.get_submodule(norm_name.rpartition(".")[0])
            if isinstance(parent, NormAct):
                parent.inplace_abn = False  # act(Identity(x)): in-place ABN needs a BatchNorm to run
    if report.skipped:
        warnings.warn(str(report), stacklevel=2)
    return target
