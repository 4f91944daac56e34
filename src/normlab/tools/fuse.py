"""Fuse batch norm and the ReLU / LeakyReLU after it into :class:`normlab.nn.NormAct` modules, for training.

A model built from torch layers computes ``relu(BN(z))`` as two operators: the BN writes its output, the ReLU reads
it and writes another tensor (and the backward does the same twice). :class:`~normlab.nn.NormAct` computes
``act(BN(z))`` as one module: the one place where normlab's kernels can run statistics, normalization and the
activation as one pass forward and one backward (``normlab.kernels.batch_norm_train(..., act="relu")``). This tool
only makes a model use NormAct; how NormAct runs (kernels or torch's operators) is decided there.

:func:`plan_fuse_norm_act` decides which pairs fuse and says why the others do not (data flow from ``torch.fx`` where
the model traces, ``nn.Sequential`` order where it does not, as :func:`~normlab.tools.plan_fold`);
:func:`fuse_norm_act` applies the plan to a copy of the model (or in place):

* the BN is replaced by ``NormAct(bn, activation)``; a ``torch.nn.BatchNorm1d/2d/3d`` becomes normlab's
  ``BatchNorm1d/2d/3d`` *with the same parameter and buffer objects* (an optimizer built before keeps working);
* an activation *module* called once is replaced by ``nn.Identity`` (the model keeps its class);
* an activation *function call* (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.leaky_relu``; or a module called
  several times) is removed from the traced forward of the module that makes it, which becomes a
  ``torch.fx.GraphModule`` of the same class name and the same state_dict keys.

Residual ends (where ``torch.fx`` traces the block): a BN whose only user is a two-tensor add with another tensor
(the shortcut) whose only user is a ReLU/LeakyReLU (slope >= 0), ``act(bn(x) + shortcut)`` as in ResNet's basic
block, becomes a :class:`~normlab.nn.act.NormAddAct` called as ``bn(x, shortcut)``, the add and the activation
removed from the block's traced forward; one kernel pass forward (statistics, normalize, add, activation) and one
backward (the activation's mask read from the output, the shortcut's gradient written in the same sweep). When both
summands are BN outputs (a downsampling shortcut's BN), the first summand's BN takes the add; the other is skipped
with that reason.

The fused model's ``state_dict`` has the unfused model's keys (``layer.weight``, not ``layer.norm.weight``): each
new NormAct renames its norm's keys on save and accepts both names on load, so checkpoints load both ways.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import fx, nn
from torch.nn import functional as TF

from ..nn.act import NormAct, NormAddAct
from ..nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from ._common import (
    RewriteReport,
    graph_call_counts,
    is_batch_norm,
    join_path,
    module_use_counts,
    set_submodule,
    trace_or_note,
)

__all__ = ["FuseReport", "plan_fuse_norm_act", "fuse_norm_act"]

#: torch's batch norms fused (converted to normlab's class of the same rank) and normlab's plain batch norms.
_TORCH_TO_NORMLAB = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}
_NORMLAB_BN = (BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)
_RELU_FUNCTIONS = {torch.relu, torch.relu_, TF.relu, TF.relu_}
_LEAKY_FUNCTIONS = {TF.leaky_relu, TF.leaky_relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_BN_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# -- state_dict keys: the fused model's keys are the unfused model's ---------------------------------------------
def _unfused_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook of a fused NormAct: ``<prefix>norm.<name>`` -> ``<prefix><name>`` (the BN's own keys)."""
    inner = prefix + "norm."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    meta = getattr(state_dict, "_metadata", None)
    if meta is not None and inner[:-1] in meta:
        meta[prefix[:-1]] = meta.pop(inner[:-1])  # the BN's version, which its loader reads


def _accept_unfused_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook of a fused NormAct: accept the BN's keys at ``<prefix><name>`` (the unfused model's
    and the fused model's own state_dict) as well as ``<prefix>norm.<name>``."""
    for name in _BN_STATE:
        key, inner = prefix + name, prefix + "norm." + name
        if key in state_dict and inner not in state_dict:
            state_dict[inner] = state_dict.pop(key)
    meta = getattr(state_dict, "_metadata", None)
    if meta is not None and prefix[:-1] in meta and prefix + "norm" not in meta:
        meta[prefix + "norm"] = meta[prefix[:-1]]


# -- the report --------------------------------------------------------------------------------------------------
@dataclass
class _Pair:
    norm: str  # the BN's name in the model
    activation: str  # "relu" or "leaky_relu"
    slope: float
    act_module: str | None  # the activation module called once (replaced by Identity), None for a call to remove
    act_owner: str | None  # the module whose forward calls the activation (None: nn.Sequential order)
    what: str  # how the activation is called, for the report
    act_root: str | None = None  # the rewritten module whose graph loses the activation's call, if any
    norm_root: str | None = None  # the rewritten module inside which the BN is replaced, if any
    residual: bool = False  # BN -> add(shortcut) -> activation: a NormAddAct, the add and activation calls removed

    @property
    def needs_rewrite(self) -> bool:
        return self.act_module is None


@dataclass
class FuseReport(RewriteReport, tool="fuse_norm_act", verb="fused with their activation", done_field="fused"):
    """What :func:`fuse_norm_act` fuses and why it leaves the rest.

    ``fused``: ``(norm name, activation)`` pairs (the activation as a module name or ``"relu() in <module>"``);
    ``skipped``: ``(norm name, reason)``; ``rewritten``: modules whose forward is rewritten through ``torch.fx``
    (they become ``GraphModule``s; ``""`` is the whole model); ``traced`` / ``untraced``: as :class:`FoldReport`.
    """

    fused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    traced: list[str] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)
    pairs: list[_Pair] = field(default_factory=list, repr=False)

    def _done_lines(self) -> list[str]:
        return [f"  fused   {norm or '<model>'} + {act}" for norm, act in self.fused]

    def _more_lines(self) -> list[str]:
        return [f"  forward rewritten (torch.fx GraphModule): {name or '<model>'}" for name in self.rewritten]


# -- what pairs ---------------------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """Keeps batch norms, activations and every normlab layer opaque (their input checks need concrete shapes)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            is_batch_norm(m)
            or isinstance(m, (nn.ReLU, nn.LeakyReLU))
            or type(m).__module__.startswith("normlab.nn")
            or super().is_leaf_module(m, qualname)
        )



def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or m._state_dict_hooks or m._load_state_dict_pre_hooks or m._state_dict_pre_hooks
                or m._load_state_dict_post_hooks)


def _norm_problem(norm: nn.Module, counts: dict[int, int]) -> str | None:
    """Why this batch norm cannot become the norm of a NormAct, or ``None``."""
    if type(norm) in _TORCH_TO_NORMLAB:
        if _has_hooks(norm):
            return f"torch {type(norm).__name__} with hooks (e.g. freeze's): converting it to normlab's would drop them"
    elif type(norm) not in _NORMLAB_BN:
        return (f"{type(norm).__name__} is not torch.nn.BatchNorm1d/2d/3d or normlab's plain BatchNorm, the layers "
                f"NormAct's fused kernel covers")
    elif norm._forward_hooks:
        return "has forward hooks, but the fused module never exposes the BN's own output (before the activation)"
    if counts.get(id(norm), 1) > 1:
        return "the norm is shared (registered under several names), so fusing would change its other uses"
    return None


def _activation_of(m: nn.Module | None, node: fx.Node | None) -> tuple[str, float, bool] | str:
    """``(activation, negative_slope, inplace)`` for a ReLU/LeakyReLU module or call, else why it is not one."""
    if m is not None:
        if type(m) is nn.ReLU:
            return "relu", 0.0, m.inplace
        if type(m) is nn.LeakyReLU:
            return "leaky_relu", float(m.negative_slope), m.inplace
        return (f"it is followed by {type(m).__name__}, not ReLU/LeakyReLU (the activations NormAct's fused kernel "
                f"covers)")
    assert node is not None
    args, kwargs = node.args, node.kwargs
    if node.op == "call_method" and node.target in ("relu", "relu_") and len(args) == 1 and not kwargs:
        return "relu", 0.0, node.target == "relu_"
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        inplace = node.target in (torch.relu_, TF.relu_) or bool(args[1] if len(args) > 1 else kwargs.get("inplace"))
        return "relu", 0.0, inplace
    if node.op == "call_function" and node.target in _LEAKY_FUNCTIONS:
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        inplace = node.target is TF.leaky_relu_ or bool(args[2] if len(args) > 2 else kwargs.get("inplace"))
        if not isinstance(slope, (int, float)) or isinstance(slope, bool):
            return f"the leaky_relu slope is computed in forward ({slope!r}), not a constant"
        return "leaky_relu", float(slope), inplace
    return f"its output goes to {_describe(node)}, not a ReLU/LeakyReLU"


def _describe(node: object) -> str:
    if isinstance(node, fx.Node):
        if node.op == "call_module":
            return f"module {node.target!r}"
        if node.op == "output":
            return "the output"
        return f"{node.op} {getattr(node.target, '__name__', node.target)!s}"
    return repr(node)


def _owner_of(node: fx.Node) -> str:
    """The module (relative to the traced root) whose forward made this call: the innermost on fx's module stack."""
    names = [name for name, _ in (node.meta.get("nn_module_stack") or {}).values()]
    if node.op == "call_module" and names:
        names = names[:-1]  # a module call's stack ends with the called module itself
    return names[-1] if names else ""


def _inside(name: str, root: str) -> bool:
    return root == "" or name == root or name.startswith(root + ".")


def _rewrite_problem(model: nn.Module, owner: str, graphs: list) -> str | None:
    """Why ``owner``'s forward cannot be rewritten through torch.fx: it must trace on its own, keep its state_dict
    keys and have no hooks, and nothing outside its forward may reach inside it (a GraphModule keeps only what its
    own graph uses)."""
    module = model.get_submodule(owner) if owner else model
    label = repr(owner) if owner else "the model"
    for prefix, graph in graphs:
        for node in graph.nodes:
            if node.op in ("call_module", "get_attr"):
                target = join_path(prefix, node.target)
                caller = join_path(prefix, _owner_of(node))
                if owner and target.startswith(owner + ".") and not _inside(caller, owner):
                    return (f"the activation is a call in {label}'s forward, but {target!r} inside it is used from "
                            f"{caller or 'the model'!r}'s forward, which a GraphModule of {label} would break")
    if _has_hooks(module):
        return f"the activation is a call in {label}'s forward, which has hooks a GraphModule would not keep"
    try:
        graph = _Tracer().trace(module)
        gm = fx.GraphModule(module, graph)
    except Exception as exc:  # noqa: BLE001 - any failure: do not rewrite
        return f"the activation is a call in {label}'s forward, which does not trace on its own ({type(exc).__name__})"
    lost = sorted(set(module.state_dict()) - set(gm.state_dict()))
    if lost:
        return (f"the activation is a call in {label}'s forward; rewriting it as a GraphModule would drop state "
                f"not used in forward ({', '.join(lost[:3])})")
    return None


def _plan_graph(
    graph: fx.Graph, root: nn.Module, prefix: str, counts: dict[int, int], decisions: dict, graphs: list
) -> None:
    calls = graph_call_counts(graph)
    for node in graph.nodes:
        if node.op != "call_module" or not is_batch_norm(root.get_submodule(node.target)):
            continue
        name = join_path(prefix, node.target)
        norm = root.get_submodule(node.target)
        problem = _norm_problem(norm, counts)
        users = list(node.users)
        if problem:
            decisions[name] = problem
        elif len(node.args) != 1 or node.kwargs:
            decisions[name] = "called with more than one argument"
        elif calls[node.target] > 1:
            decisions[name] = "called more than once in forward"
        elif not users:
            decisions[name] = "its output is not used"
        elif len(users) > 1:
            inplace = [u for u in users if not isinstance(_act_from(u, root), str) and _act_from(u, root)[2]]
            others = ", ".join(_describe(u) for u in users if u not in inplace[:1])
            if inplace:
                decisions[name] = (f"an in-place activation ({_describe(inplace[0])}) overwrites its output, which "
                                   f"{others} also read(s): fusing would change what they see")
            else:
                decisions[name] = f"its output is also used by {others}, not only by an activation"
        elif _is_add(users[0]):
            decisions[name] = _residual_decision(name, node, users[0], root, prefix)
        else:
            user = users[0]
            act = _act_from(user, root)
            if isinstance(act, str):
                decisions[name] = act
            elif ([a for a in (*user.args[1:], *user.kwargs.values()) if isinstance(a, fx.Node)]
                  or user.args[0] is not node):
                decisions[name] = f"{_describe(user)} takes other tensors besides the BN's output"
            elif user.op == "call_module":
                act_module = root.get_submodule(user.target)
                if _has_hooks(act_module):
                    decisions[name] = f"the activation {user.target!r} has hooks that would no longer see its output"
                elif calls[user.target] == 1:
                    full = join_path(prefix, user.target)
                    decisions[name] = _Pair(name, act[0], act[1], full, join_path(prefix, _owner_of(user)), full)
                else:  # one ReLU module called at several places: remove this call from the forward
                    owner = join_path(prefix, _owner_of(user))
                    decisions[name] = _Pair(name, act[0], act[1], None, owner,
                                            f"{user.target!r} (called at several places) in {owner or '<model>'}")
            else:
                owner = join_path(prefix, _owner_of(user))
                decisions[name] = _Pair(name, act[0], act[1], None, owner,
                                        f"{getattr(user.target, '__name__', user.target)}() in {owner or '<model>'}")
    graphs.append((prefix, graph))


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_"))


def _residual_partner(add: fx.Node, bn: fx.Node) -> fx.Node | str:
    """The other operand of ``add`` (BN's output + it), or why ``add`` is not a plain two-tensor sum with the BN."""
    if add.kwargs or len(add.args) != 2:
        return f"{_describe(add)} has other arguments (alpha=, out=) besides the two summands"
    a, b = add.args
    other = b if a is bn else a
    if (a is bn) == (b is bn):
        return f"{_describe(add)} adds the BN's output to itself"
    if not isinstance(other, fx.Node):
        return f"{_describe(add)} adds a constant ({other!r}), not a residual tensor, to the BN's output"
    if add.op == "call_method" and add.args[0] is not bn:
        return f"{_describe(add)} writes into the residual, not the BN's output"
    return other


def _residual_decision(name: str, bn: fx.Node, add: fx.Node, root: nn.Module, prefix: str) -> _Pair | str:
    """BN -> add(residual) -> ReLU/LeakyReLU (a ResNet basic block's end) as a residual pair, or why not."""
    partner = _residual_partner(add, bn)
    if isinstance(partner, str):
        return partner
    if partner.op == "call_module" and is_batch_norm(root.get_submodule(str(partner.target))) \
            and len(partner.users) == 1 and add.args[0] is partner:
        return (f"the residual add's other summand, {join_path(prefix, str(partner.target))!r}, is a BN too; the add "
                f"is fused with {join_path(prefix, str(partner.target))!r}")
    if len(add.users) != 1:
        return f"its output goes to {_describe(add)}, whose sum is used by more than an activation"
    act_node = next(iter(add.users))
    act = _act_from(act_node, root)
    if isinstance(act, str):
        return f"its output goes to {_describe(add)} (a residual add), whose sum is not followed by ReLU/LeakyReLU"
    if [a for a in (*act_node.args[1:], *act_node.kwargs.values()) if isinstance(a, fx.Node)] \
            or act_node.args[0] is not add:
        return f"{_describe(act_node)} after the residual add takes other tensors besides the sum"
    if act[0] == "leaky_relu" and act[1] < 0:
        return (f"the LeakyReLU after the residual add has a negative slope ({act[1]}); the fused backward reads "
                f"the activation's derivative from the output's sign, which needs slope >= 0")
    if act_node.op == "call_module" and _has_hooks(root.get_submodule(str(act_node.target))):
        return f"the activation {act_node.target!r} has hooks that would no longer see its output"
    owner = join_path(prefix, _owner_of(act_node))
    if _owner_of(add) != _owner_of(act_node):
        return "the residual add and the activation are calls in different modules' forwards"
    return _Pair(name, act[0], act[1], None, owner,
                 f"+ residual, {_describe(act_node)} in {owner or '<model>'}", residual=True)


def _act_from(node: fx.Node, root: nn.Module) -> tuple[str, float, bool] | str:
    if node.op == "call_module":
        return _activation_of(root.get_submodule(str(node.target)), None)
    return _activation_of(None, node)


def _plan_module(
    module: nn.Module, prefix: str, counts: dict[int, int], report: FuseReport, decisions: dict, graphs: list
) -> None:
    if is_batch_norm(module) or isinstance(module, NormAct) or not any(is_batch_norm(m) for m in module.modules()):
        return
    graph = trace_or_note(_Tracer(), module, prefix, report)
    if graph is not None:
        _plan_graph(graph, module, prefix, counts, decisions, graphs)
        return
    children = list(module.named_children())
    if isinstance(module, nn.Sequential):
        # nn.Sequential feeds each child's output to the next child and nothing else: order is data flow here.
        for i, (norm_name, norm) in enumerate(children):
            if not is_batch_norm(norm):
                continue
            name = join_path(prefix, norm_name)
            problem = _norm_problem(norm, counts)
            if problem:
                decisions[name] = problem
            elif i + 1 == len(children):
                decisions[name] = "it is the last layer of its nn.Sequential; no activation follows it"
            else:
                act_name, act_module = children[i + 1]
                act = _activation_of(act_module, None)
                if isinstance(act, str):
                    decisions[name] = act
                elif _has_hooks(act_module):
                    decisions[name] = f"the activation {act_name!r} has hooks that would no longer see its output"
                else:
                    full = join_path(prefix, act_name)
                    decisions[name] = _Pair(name, act[0], act[1], full, None, full)
    for child_name, child in children:
        _plan_module(child, join_path(prefix, child_name), counts, report, decisions, graphs)


def plan_fuse_norm_act(model: nn.Module) -> FuseReport:
    """What :func:`fuse_norm_act` would fuse in ``model`` and why it would skip the rest; changes nothing.

    A batch norm (``torch.nn.BatchNorm1d/2d/3d`` or normlab's ``BatchNorm``/``BatchNorm1d/2d/3d``) fuses when its
    only input is one tensor, it is called once, and its output goes to exactly one ReLU or LeakyReLU (a module, or,
    where ``torch.fx`` traces the model, ``F.relu``/``torch.relu``/``Tensor.relu``/``F.leaky_relu``, in place or
    not) and nowhere else; or, where fx traces, when its only user is ``bn + shortcut`` followed by such an activation
    alone (the residual end of a ResNet block, fused into a ``NormAddAct``). Skipped, with the reason: a BN whose
    output is used elsewhere too (in particular when an in-place activation overwrites it), any other activation
    (GELU, sigmoid, ...), a residual add with a constant, ``alpha=``, a reused sum or a negative LeakyReLU slope, BN
    subclasses and variants, shared or hooked modules, a rewrite that would lose state.
    Raises ``TypeError`` if ``model`` is not a module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"plan_fuse_norm_act: expected a torch.nn.Module, got {type(model).__name__}")
    report = FuseReport()
    decisions: dict[str, _Pair | str] = {}
    graphs: list[tuple[str, fx.Graph]] = []
    _plan_module(model, "", module_use_counts(model), report, decisions, graphs)
    # Pairs whose activation is a call to remove rewrite the forward of the module making it. The outermost such
    # module takes every pair inside it: its GraphModule inlines its children's forwards, so module swaps inside it
    # happen in the GraphModule (BN -> NormAct) and its graph (the activation's call removed).
    owners = {d.act_owner for d in decisions.values()
              if isinstance(d, _Pair) and d.needs_rewrite and d.act_owner is not None}
    problems = {o: _rewrite_problem(model, o, graphs) for o in owners}
    roots = {o for o in owners if problems[o] is None}
    roots = {o for o in roots if not any(r != o and _inside(o, r) for r in roots)}

    def root_of(name: str | None) -> str | None:
        return next((r for r in roots if _inside(name, r)), None) if name is not None else None

    wrapped = {id(m.norm): n for n, m in model.named_modules() if isinstance(m, NormAct)}
    for name, norm in model.named_modules():
        if not is_batch_norm(norm):
            continue
        d = decisions.get(name)
        if id(norm) in wrapped:
            d = f"already fused: it is the norm of the NormAct {wrapped[id(norm)] or '<model>'!r}"
        if d is None:
            report.skipped.append((name, "not reached: no traced forward calls it, and it is not in an nn.Sequential"))
            continue
        if isinstance(d, str):
            report.skipped.append((name, d))
            continue
        problem = problems.get(d.act_owner) if d.needs_rewrite and d.act_owner is not None else None
        if problem is not None:
            report.skipped.append((name, problem))
            continue
        act_root, norm_root = root_of(d.act_owner), root_of(name)
        if act_root is not None and norm_root != act_root:
            report.skipped.append((name, f"the BN is not inside {act_root or '<model>'!r}, whose forward (rewritten) "
                                         f"calls the activation"))
            continue
        report.pairs.append(_Pair(d.norm, d.activation, d.slope, d.act_module, d.act_owner, d.what, act_root, norm_root,
                                  d.residual))
        report.fused.append((name, d.what))
    report.rewritten = sorted({r for p in report.pairs for r in (p.act_root, p.norm_root) if r is not None})
    return report


# -- applying the plan -------------------------------------------------------------------------------------------
def _normlab_bn(module: nn.Module) -> nn.Module:
    """normlab's BN of the same rank *sharing* a torch BN's parameters and buffers (normlab's BN: itself)."""
    if type(module) not in _TORCH_TO_NORMLAB:
        return module
    norm = cast(nn.modules.batchnorm._BatchNorm, module)
    new = _TORCH_TO_NORMLAB[type(norm)](
        norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
        track_running_stats=norm.track_running_stats,
    )
    for name in ("weight", "bias"):
        setattr(new, name, getattr(norm, name))  # the same Parameter objects (or None)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new.register_buffer(name, getattr(norm, name))
    return new.train(norm.training)


def _norm_act(norm: nn.Module, pair: _Pair) -> NormAct:
    cls = NormAddAct if pair.residual else NormAct
    fused = cls(_normlab_bn(norm), activation=pair.activation,
                negative_slope=pair.slope if pair.activation == "leaky_relu" else 0.01)
    fused.train(norm.training)
    fused.register_state_dict_post_hook(_unfused_keys)
    fused.register_load_state_dict_pre_hook(_accept_unfused_keys)
    return fused


def _rewritten(model: nn.Module, owner: str, pairs: list[_Pair], fused: dict[str, NormAct]) -> fx.GraphModule:
    """``owner``'s forward as a GraphModule without the fused activations' calls, its BNs replaced by NormActs."""
    module = model.get_submodule(owner) if owner else model
    graph = _Tracer().trace(module)

    def rel(name: str) -> str:
        return name[len(owner) + 1:] if owner else name

    for pair in (p for p in pairs if p.act_root == owner and p.residual):
        _rewrite_residual(graph, module, owner, pair, rel(pair.norm))
    for pair in (p for p in pairs if p.act_root == owner and not p.residual):
        nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == rel(pair.norm)]
        act = next(iter(nodes[0].users)) if len(nodes) == 1 and len(nodes[0].users) == 1 else None
        expected = act is not None and (
            act.target == rel(pair.act_module) if pair.act_module is not None
            else not isinstance(_act_from(act, module), str)
        )
        if act is None or not expected:
            raise RuntimeError(f"fuse_norm_act: in {owner or 'the model'}'s forward, {pair.norm!r} is no longer "
                               f"followed by its activation alone as planned; model unchanged")
        act.replace_all_uses_with(nodes[0])
        graph.erase_node(act)
    graph.lint()
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    for pair in (p for p in pairs if p.norm_root == owner):  # gm's intermediate modules are its own
        set_submodule(gm, rel(pair.norm), fused[pair.norm])
    originals = dict(module.named_modules())
    for name, sub in gm.named_modules():  # gm and its new intermediate modules: the originals' modes, one by one
        if name in originals and originals[name] is not sub and not isinstance(sub, NormAct):
            sub.training = originals[name].training
    for name, sub in list(gm.named_modules()):
        if name in originals and originals[name] is not sub:
            _children_in_order_of(sub, originals[name])
    return gm


def _children_in_order_of(module: nn.Module, original: nn.Module) -> None:
    """Re-register ``module``'s children in ``original``'s order: a GraphModule registers them in the order its graph
    first uses them, which a rewrite can change (a residual call moved after the shortcut), and the state_dict's
    key order follows the registration order."""
    rank = {name: i for i, (name, _) in enumerate(original.named_children())}
    children = list(module.named_children())
    ordered = sorted(children, key=lambda kv: rank.get(kv[0], len(rank)))
    if [n for n, _ in ordered] == [n for n, _ in children]:
        return
    for name, _ in children:
        delattr(module, name)
    for name, child in ordered:
        module.add_module(name, child)


def _rewrite_residual(graph: fx.Graph, module: nn.Module, owner: str, pair: _Pair, target: str) -> None:
    """``act(bn(x) + r)`` in ``graph`` -> one call ``bn(x, r)`` (the BN's module becomes a NormAddAct)."""
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    bn = nodes[0] if len(nodes) == 1 and len(nodes[0].users) == 1 else None
    add = next(iter(bn.users)) if bn is not None else None
    partner = _residual_partner(add, bn) if add is not None and bn is not None and _is_add(add) else None
    act = next(iter(add.users)) if add is not None and len(add.users) == 1 else None
    if bn is None or add is None or not isinstance(partner, fx.Node) or act is None \
            or isinstance(_act_from(act, module), str):
        raise RuntimeError(f"fuse_norm_act: in {owner or 'the model'}'s forward, {pair.norm!r} is no longer followed "
                           f"by a residual add and its activation alone as planned; model unchanged")
    with graph.inserting_before(add):
        fused = graph.call_module(target, (bn.args[0], partner))
    fused.meta = dict(bn.meta)
    act.replace_all_uses_with(fused)
    graph.erase_node(act)
    graph.erase_node(add)
    graph.erase_node(bn)


def fuse_norm_act(model: nn.Module, inplace: bool = False, *, strict: bool = False) -> nn.Module:
    """Fuse every BatchNorm -> ReLU/LeakyReLU pair of ``model`` into a :class:`normlab.nn.NormAct`; return the model.

    What fuses and how is :func:`plan_fuse_norm_act`'s :class:`FuseReport` (see the module docstring). The result
    computes the same outputs, gradients and running statistics as ``model`` in training and eval mode, and its
    ``state_dict`` has the same keys (it loads ``model``'s state_dict and ``model`` loads its own).

    ``inplace=False`` fuses a deep copy; ``inplace=True`` changes ``model`` (torch BNs become normlab BNs sharing
    their parameter objects, so an optimizer built before keeps working) and raises ``ValueError`` if the model's
    own forward would need rewriting (a function-call activation at its top level: it becomes a new GraphModule).
    Pairs that cannot fuse are skipped (listed by the plan), or with ``strict=True`` make it raise ``ValueError``.
    A model without any batch norm raises ``ValueError``. On any error the model is unchanged.
    """
    if not isinstance(model, nn.Module):  # named here, not as the plan it calls
        raise TypeError(f"fuse_norm_act: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):  # fuse_norm_act(model, x): a tensor's truth would decide inplace
        raise TypeError(f"fuse_norm_act: inplace must be True or False, got {type(inplace).__name__}; model "
                        f"unchanged")
    report = plan_fuse_norm_act(model)
    if not report.num_norms:
        raise ValueError("fuse_norm_act: the model has no batch-norm layer (looked for torch.nn.BatchNorm1d/2d/3d "
                         "and normlab.nn.BatchNormBase subclasses)")
    if strict and report.skipped:
        raise ValueError(f"fuse_norm_act(strict=True): cannot fuse every batch norm; model unchanged.\n{report}")
    if inplace and "" in report.rewritten:
        raise ValueError(
            "fuse_norm_act(inplace=True): the model's own forward calls an activation function after a BN "
            f"({', '.join(p.norm for p in report.pairs if p.act_root == '')}); fusing it makes a new GraphModule, "
            "so use inplace=False (the default); model unchanged"
        )
    target = model if inplace else copy.deepcopy(model)
    # Build every new module before replacing anything, so an error leaves the model as it was.
    fused = {p.norm: _norm_act(target.get_submodule(p.norm), p) for p in report.pairs}
    graphs = {owner: _rewritten(target, owner, report.pairs, fused) for owner in report.rewritten}
    for p in report.pairs:
        if p.norm_root is None:
            set_submodule(target, p.norm, fused[p.norm])
        if p.act_root is None and p.act_module is not None:
            set_submodule(target, p.act_module, nn.Identity().train(target.get_submodule(p.act_module).training))
    for owner, gm in graphs.items():
        if owner:
            set_submodule(target, owner, gm)
        else:
            target = gm
    return target
