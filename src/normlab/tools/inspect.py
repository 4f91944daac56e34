"""Find parameters a model carries for nothing: biases cancelled by the batch norm after them.

A Conv/ConvTranspose/Linear bias adds one constant per output channel; a batch norm that centres each channel with
the batch mean removes that constant exactly, so in training the bias receives zero gradient and never moves
(Ioffe & Szegedy 2015, arXiv:1502.03167, section 3.2: "the bias b can be ignored"); BN's beta plays its role.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ._common import is_batch_norm, is_uncentred, join_path, norm_axis
from .fold import FOLD_TARGETS, LeafTracer, sequential_pairs, wrapped_norm

__all__ = ["RedundantBias", "find_redundant_biases"]


@dataclass(frozen=True)
class RedundantBias:
    """``layer``'s bias is cancelled by the batch norm ``norm`` that follows it (module paths, ``""`` = the model).

    ``found_by``: ``"torch.fx"`` (data flow of a traced forward) or ``"nn.Sequential order"``; ``bias_grad_max``:
    the largest ``|dL/db|`` measured on the example input in training mode (zero up to rounding);
    ``grad_scale``: the largest per-channel sum of ``|dL/d(layer output)|``, what the gradient would be of order of
    if the bias were alive.
    """

    layer: str
    norm: str
    found_by: str
    bias_grad_max: float
    grad_scale: float

    def __str__(self) -> str:
        return (f"{self.layer or '<model>'}.bias is cancelled by the mean subtraction of {self.norm or '<model>'} "
                f"(found by {self.found_by}; max |dL/db| = {self.bias_grad_max:.3g} vs per-channel gradient mass "
                f"{self.grad_scale:.3g}): build the layer with bias=False; the norm's beta does its job")


def _called_module(node: object) -> str | None:
    """The submodule path a ``call_module`` node calls, else None (fx types ``target`` as str or callable)."""
    if isinstance(node, fx.Node) and node.op == "call_module" and isinstance(node.target, str):
        return node.target
    return None


def _pairs_graph(graph: fx.Graph, root: nn.Module, prefix: str, found: dict) -> None:
    calls: dict[str, int] = {}
    for node in graph.nodes:
        target = _called_module(node)
        if target is not None:
            calls[target] = calls.get(target, 0) + 1
    for node in graph.nodes:
        target = _called_module(node)
        wrapped = wrapped_norm(root.get_submodule(target)) if target is not None else None
        if target is None or wrapped is None or len(node.args) != 1 or node.kwargs or calls[target] > 1:
            continue
        src = node.args[0]
        src_target = _called_module(src)
        if (isinstance(src, fx.Node) and src_target is not None and len(src.users) == 1
                and calls[src_target] == 1 and isinstance(root.get_submodule(src_target), FOLD_TARGETS)):
            found[join_path(prefix, target) + wrapped[0]] = (join_path(prefix, src_target), "torch.fx")


def _pairs_module(module: nn.Module, prefix: str, found: dict) -> None:
    if isinstance(module, FOLD_TARGETS) or wrapped_norm(module) is not None:
        return
    if not any(is_batch_norm(m) for m in module.modules()):
        return
    try:
        graph = LeafTracer().trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure sends us to the module-order fallback
        pass
    else:
        _pairs_graph(graph, module, prefix, found)
        return
    for norm_path, layer_path, _, _ in sequential_pairs(module, prefix):
        found[norm_path] = (layer_path, "nn.Sequential order")
    for name, child in module.named_children():
        _pairs_module(child, join_path(prefix, name), found)


def _tensors(out) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def find_redundant_biases(model: nn.Module, example_input) -> list[RedundantBias]:
    """The Conv/ConvTranspose/Linear biases in ``model`` that a following batch norm cancels, with module paths.

    A candidate is a layer with a bias whose output goes only to a centring batch norm (torch's ``BatchNorm*d`` /
    ``SyncBatchNorm``, ``normlab.nn.BatchNormBase`` layers, or the BN inside a ``NormAct``): data flow from
    ``torch.fx`` where the model traces, ``nn.Sequential`` order where it does not. Each candidate is then checked
    on ``example_input`` (a tensor, or a tuple of positional arguments; batch of at least 2) with a deep copy of the
    model in training mode: the norm's channel axis must be the axis the bias is added along (1 for convolutions,
    the last for Linear), and ``|dL/db|`` for a random upstream gradient must vanish to rounding (at most
    ``1000 * eps(dtype)`` of the gradient mass of that channel). The model, its statistics and the global RNG are
    left unchanged.

    Returns a list of :class:`RedundantBias` (empty when there is none). Raises ``TypeError`` for a non-module and
    ``ValueError`` when the model cannot run on the example input in training mode (the error names the cause).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"find_redundant_biases: expected a torch.nn.Module, got {type(model).__name__}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, Tensor) for a in args):
        raise TypeError("find_redundant_biases: example_input must be a tensor or a tuple of tensors, got "
                        f"{type(example_input).__name__}")
    found: dict[str, tuple[str, str]] = {}
    _pairs_module(model, "", found)
    pairs = [(layer, norm, how) for norm, (layer, how) in found.items()
             if model.get_submodule(layer).bias is not None]
    if not pairs:
        return []
    work = copy.deepcopy(model).train()
    outputs: dict[str, Tensor] = {}
    hooks = []
    for layer, _, _ in pairs:
        def keep(_m, _inp, out, name=layer):
            if isinstance(out, Tensor) and out.requires_grad:
                out.retain_grad()
            outputs[name] = out
        hooks.append(work.get_submodule(layer).register_forward_hook(keep))
    with torch.random.fork_rng(devices=[]):  # dropout & co. in training mode must not move the caller's RNG
        try:
            out = work(*args)
        except Exception as exc:
            raise ValueError(f"find_redundant_biases: the model failed on the example input in training mode "
                             f"(batch norms need a batch of at least 2): {type(exc).__name__}: {exc}") from exc
        finally:
            for h in hooks:
                h.remove()
        gen = torch.Generator().manual_seed(0)
        loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum()
                   for t in _tensors(out) if t.is_floating_point() and t.requires_grad)
        if not isinstance(loss, Tensor):
            return []  # nothing differentiable comes out: no gradient can tell
        loss.backward()
    result = []
    for layer, norm, how in pairs:
        mod, bn, u = work.get_submodule(layer), work.get_submodule(norm), outputs.get(layer)
        bias = getattr(mod, "bias", None)  # a tensor: pairs only holds layers with a bias
        if u is None or u.grad is None or not isinstance(bias, Tensor) or bias.grad is None or is_uncentred(bn):
            continue
        bias_axis = u.ndim - 1 if isinstance(mod, nn.Linear) else 1
        if u.ndim < 2 or norm_axis(bn) % u.ndim != bias_axis or u.shape[bias_axis] != bias.numel():
            continue
        dims = [i for i in range(u.ndim) if i != bias_axis]
        mass = u.grad.abs().sum(dims)
        db = bias.grad.abs()
        tol = 1000 * torch.finfo(db.dtype).eps
        if bool((db <= tol * mass + torch.finfo(db.dtype).tiny).all()) and float(mass.max()) > 0:
            result.append(RedundantBias(layer, norm, how, float(db.max()), float(mass.max())))
    return result
