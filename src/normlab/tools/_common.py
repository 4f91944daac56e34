"""What the model tools need to know about normalization layers, torch's and normlab's, in one place."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, cast

import torch
from torch import fx, nn

from ..nn.act import NormAct
from ..nn.batchnorm import BatchNormBase, NormLayer

# Every torch batch-statistic layer (BatchNorm1d/2d/3d, SyncBatchNorm, the lazy ones) derives from _BatchNorm.
TORCH_BATCH_NORM = nn.modules.batchnorm._BatchNorm
BATCH_NORM_TYPES = (TORCH_BATCH_NORM, BatchNormBase)
TORCH_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # batch norms and instance norms
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
#: normlab's norms: every layer of normlab.nn derives from NormLayer; NormAct (a norm followed by its activation)
#: counts as a norm too
NORMLAB_NORM_TYPES = (NormLayer, NormAct)


def is_batch_norm(module: nn.Module) -> bool:
    """A layer that normalizes with batch statistics in training and (usually) running statistics in eval."""
    return isinstance(module, BATCH_NORM_TYPES)


def is_norm(module: nn.Module) -> bool:
    """Any normalization layer: torch's, or normlab's (:class:`normlab.nn.batchnorm.NormLayer` and ``NormAct``)."""
    return isinstance(module, TORCH_NORM_TYPES + NORMLAB_NORM_TYPES)


class BatchNormLike(Protocol):
    """What the tools read of a batch-norm layer (torch's ``_BatchNorm`` and normlab's ``BatchNormBase`` both have
    it): its declared public surface, for the type checker."""

    num_features: int
    eps: float
    training: bool
    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def as_batch_norm(module: nn.Module) -> BatchNormLike:
    """``module`` seen as a batch norm with running statistics; ``TypeError`` naming its class when it is not one
    (:func:`is_batch_norm` and :func:`has_running_stats`)."""
    if not (is_batch_norm(module) and has_running_stats(module)):
        raise TypeError(f"expected a batch-norm layer with running statistics, got {type(module).__name__}")
    return cast(BatchNormLike, module)


def has_running_stats(module: nn.Module) -> bool:
    return getattr(module, "running_mean", None) is not None and getattr(module, "running_var", None) is not None


def is_uncentred(norm: nn.Module) -> bool:
    """Layers that normalize by the second moment without centring (MABN, Yan et al. 2020): their
    ``running_var`` is E[x^2] and their ``running_mean`` stays 0. Read from the layer's declared ``centred``."""
    return not getattr(norm, "centred", True)


def norm_axis(norm: nn.Module) -> int:
    """The channel axis a batch-norm layer declares (its ``axis``, possibly negative; torch's layers: 1). Not
    :func:`normlab._stats.channel_axis`, which turns an axis into an index for a given rank."""
    return int(getattr(norm, "axis", 1))


def eval_uses_running_stats(norm: nn.Module) -> str | None:
    """``None`` when ``norm`` normalizes with its running statistics now, else the reason it does not."""
    if norm.training:
        return "in training mode (it normalizes with batch statistics); call model.eval() first"
    if not has_running_stats(norm):
        return "has no running statistics (track_running_stats=False), so it always uses batch statistics"
    if isinstance(norm, BatchNormBase) and norm.uses_batch_stats():
        return f"uses batch statistics in eval mode (eval_stats={norm.eval_stats!r})"
    if isinstance(norm, TORCH_BATCH_NORM) and not norm.track_running_stats:
        return "has track_running_stats=False, so it always uses batch statistics"
    return None


def module_use_counts(model: nn.Module) -> dict[int, int]:
    """How many names each module object is registered under (a shared module appears more than once)."""
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    return counts


def graph_call_counts(graph: fx.Graph) -> dict[str, int]:
    """How many times a traced forward calls each submodule (by dotted path): a module called twice cannot be
    rewritten for one of its calls only."""
    return dict(Counter(str(node.target) for node in graph.nodes if node.op == "call_module"))


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule registered as ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def nonfinite(tensors: Mapping[str, torch.Tensor | None]) -> list[str]:
    """``"<name> holds 2 NaN and 1 inf of 8 values"`` for each floating tensor of ``tensors`` that is not finite."""
    found = []
    for name, t in tensors.items():
        if (not isinstance(t, torch.Tensor) or not t.is_floating_point()
                or isinstance(t, nn.parameter.UninitializedTensorMixin)):  # type: ignore[attr-defined]
            continue
        t = t.detach()
        if bool(torch.isfinite(t).all()):
            continue
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        what = " and ".join(f"{k} {label}" for k, label in ((nan, "NaN"), (inf, "inf")) if k)
        found.append(f"{name} holds {what} of {t.numel()} values")
    return found


def module_nonfinite(module: nn.Module, prefix: str = "", recurse: bool = True) -> list[str]:
    """:func:`nonfinite` over the parameters and buffers of ``module``, named by their dotted path under ``prefix``."""
    named: dict[str, torch.Tensor | None] = dict(module.named_parameters(prefix=prefix, recurse=recurse))
    named.update(module.named_buffers(prefix=prefix, recurse=recurse))
    return nonfinite(named)


def join_path(prefix: str, name: str) -> str:
    """A submodule's dotted path from its parent's path and its own name (either may be empty)."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


def trace_or_note(tracer: fx.Tracer, module: nn.Module, prefix: str, report: Any) -> fx.Graph | None:
    """``module``'s fx graph, its path noted in ``report.traced``; or None, with the path and the first line of the
    tracing error in ``report.untraced``: the caller then falls back to ``nn.Sequential`` order."""
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure sends the caller to the module-order fallback
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        report.untraced.append((prefix, f"{type(exc).__name__}: {first_line}"))
        return None
    report.traced.append(prefix)
    return graph


class RewriteReport:
    """What a model rewrite (:class:`~normlab.tools.FoldReport`, :class:`~normlab.tools.FuseReport`) did with each
    batch-norm layer: the part both share.

    ``skipped``: ``(norm name, reason)``; ``traced``: modules whose data flow was read with ``torch.fx`` (``""`` is
    the whole model); ``untraced``: ``(module name, error)`` for modules that did not trace. A subclass names its
    tool, its verb and the field of the norms it rewrote (``class FoldReport(RewriteReport, tool="fold",
    verb="folded", done_field="folded")``) and writes their lines (:meth:`_done_lines`). The subclass (a dataclass)
    declares these fields itself, in its own order: this base is no dataclass, so it adds no field in front of the
    subclass's (positional construction, ``repr``, ``astuple`` keep the reports' own field order).
    """

    skipped: list[tuple[str, str]]
    traced: list[str]
    untraced: list[tuple[str, str]]

    tool: ClassVar[str] = ""
    verb: ClassVar[str] = ""
    done_field: ClassVar[str] = ""

    def __init_subclass__(cls, *, tool: str, verb: str, done_field: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.tool, cls.verb, cls.done_field = tool, verb, done_field

    def _done(self) -> list:
        return getattr(self, self.done_field)

    def _done_lines(self) -> list[str]:
        raise NotImplementedError

    def _more_lines(self) -> list[str]:
        """Lines between the skipped norms and the untraced modules (none unless the tool says more)."""
        return []

    @property
    def num_norms(self) -> int:
        return len(self._done()) + len(self.skipped)

    def __str__(self) -> str:
        if not self.num_norms:
            return f"{self.tool}: the model has no batch-norm layer (torch.nn.BatchNorm*d or normlab.nn.BatchNormBase)"
        lines = [f"{self.tool}: {len(self._done())} of {self.num_norms} batch-norm layers {self.verb}"]
        lines += self._done_lines()
        lines += [f"  skipped {norm or '<model>'}: {reason}" for norm, reason in self.skipped]
        lines += self._more_lines()
        lines += [f"  not traceable with torch.fx: {name or '<model>'} ({err})" for name, err in self.untraced]
        return "\n".join(lines)
