"""Convert normalization layers to another kind; freeze and unfreeze them (the fine-tuning idiom).

``convert_norm`` replaces layers by ``normlab.nn.make_norm(spec, C)`` layers and carries over what keeps its
meaning: the per-channel affine parameters (gamma, beta), the running statistics when both layers keep them
(BN -> batch renorm, ghost BN, another BN class) and the channel ``axis``. Everything else starts as the new class
initializes it -- with one exception, the options a user chose: ``eps`` (of any layer) and ``momentum`` (of a
batch norm) are carried over when the old layer's value differs from its own class's default and the new class
takes the option; a value left at the old class's default gives the new class's default. So a default
``torch.nn.BatchNorm2d`` converted to ``"bln"`` gets BLN's own eps=1e-3 and momentum=None (the paper's), to
``"mabn"`` MABN's momentum 0.02, to ``"rms"`` RMSNorm's eps; a ``BatchNorm2d(eps=1e-3, momentum=0.05)`` keeps
1e-3 and 0.05 in every kind that takes them. Keywords given to ``convert_norm`` win over both.

MABN (``"mabn"``) keeps the uncentred second moment as its running variance and a zero running mean, so a centred
layer's statistics are carried over as ``running_var = var + mean^2``, ``running_mean = 0``. A torch-convention
running variance is unbiased; the batch size behind it is not stored, so its Bessel factor cannot be undone, and
it is used as it is: it estimates the population variance, which is what E[x^2] = var + mean^2 needs. MABN's
iteration counter (``num_batches_tracked``) starts at 0, since its moving-average histories start empty and its
warm-up must run again.

``freeze`` fixes the statistics: every layer with running statistics normalizes with them from now on, even after
``model.train()``, and its running statistics stop changing. Affine parameters (gamma, beta) of every
normalization layer stop training unless ``train_affine=True``. Nothing is replaced, so the class of each layer
and the state_dict keys stay as they were and ``unfreeze`` restores the previous state exactly.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch import nn

from ._common import has_running_stats, is_batch_norm, is_norm, is_uncentred, set_submodule

__all__ = ["convert_norm", "freeze", "unfreeze", "is_frozen"]


def _num_channels(name: str, norm: nn.Module) -> int:
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(norm, attr, None), int):
            return getattr(norm, attr)
    shape = getattr(norm, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        return int(shape[0])
    raise ValueError(
        f"convert_norm: cannot tell the channel count of {name!r} ({type(norm).__name__}); only layers with "
        f"num_features, num_channels or a one-dimensional normalized_shape can be converted"
    )


_NO_DEFAULT = object()


def _class_default(cls: type, name: str):
    """The default of constructor option ``name`` of ``cls``, or _NO_DEFAULT when it has none we can read."""
    try:
        param = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):
        return _NO_DEFAULT
    return _NO_DEFAULT if param is None or param.default is inspect.Parameter.empty else param.default


def _chosen(old: nn.Module, name: str) -> bool:
    """Did the user set ``old.<name>`` (a value other than its class's default, or a class whose default is
    unreadable)? A default value carries no intent: the new class's own default is what the user expects."""
    default = _class_default(type(old), name)
    return default is _NO_DEFAULT or getattr(old, name) != default


def _carried_options(old: nn.Module, new_cls: type[nn.Module]) -> dict:
    """Constructor options of ``old`` that keep their meaning in ``new_cls``, that it accepts and (eps, momentum)
    that the user chose; see the module docstring."""
    accepted = inspect.signature(new_cls.__init__).parameters
    options = {}
    if "eps" in accepted and isinstance(getattr(old, "eps", None), float) and _chosen(old, "eps"):
        options["eps"] = old.eps
    if "momentum" in accepted and is_batch_norm(old) and _chosen(old, "momentum"):
        options["momentum"] = old.momentum
    if "axis" in accepted and isinstance(getattr(old, "axis", None), int):
        options["axis"] = old.axis
    return options


def _copy_matching(old: nn.Module, new: nn.Module, names: tuple[str, ...]) -> None:
    for attr in names:
        src, dst = getattr(old, attr, None), getattr(new, attr, None)
        if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.shape == dst.shape:
            dst.copy_(src.detach())


def _carry_second_moment(old: nn.Module, new: nn.Module) -> None:
    """Centred running statistics (mean, var) -> MABN's (0, E[x^2] = var + mean^2); see the module docstring."""
    old_mean, old_var = old.get_buffer("running_mean"), old.get_buffer("running_var")
    new_mean, new_var = new.get_buffer("running_mean"), new.get_buffer("running_var")
    if old_mean.shape != new_mean.shape:
        return
    mean = old_mean.detach().to(new_var.dtype)
    new_var.copy_(old_var.detach().to(new_var.dtype) + mean * mean)
    new_mean.zero_()


def convert_norm(
    model: nn.Module,
    spec: str,
    *,
    where: Callable[[str, nn.Module], bool] | None = None,
    inplace: bool = False,
    **kw,
) -> nn.Module:
    """Replace normalization layers of ``model`` by ``make_norm(spec, C, **kw)`` layers; return the model.

    ``spec`` is any :func:`normlab.nn.make_norm` spec (``"bn"``, ``"brn"``, ``"gbn:16"``, ``"mabn"``, ``"bln"``,
    ``"gn:32"``, ``"ln"``, ``"in"``, ``"rms"``, ``"none"``, ...) or ``"sync"``: synchronized statistics over
    ``torch.distributed`` (:func:`normlab.nn.convert_sync_batchnorm` on each picked layer; ``process_group=``
    is its one keyword; torch's batch norms become normlab ``BatchNorm`` with the same state_dict).

    ``where(name, module)`` picks the layers (default: every batch norm, torch's and normlab's); ``kw`` goes to
    every new layer's constructor and wins over the carried-over ``eps``/``momentum``/``axis``. Affine parameters
    and running statistics are copied where both layers have them with the same shape; dtype, device and training
    mode follow the old layer. ``eps`` and ``momentum`` carry over only where the old layer's value is not its
    class's default (the user chose it) and the new class takes them; otherwise the new layer keeps its own
    default, e.g. ``"bln"`` its paper's eps=1e-3 and momentum=None, ``"mabn"`` momentum=0.02 (see the module
    docstring). The channel ``axis`` always carries over.
    ``inplace=False`` converts a deep copy (a model that is itself a norm layer is returned converted). Every new
    layer is built before anything is replaced, so an error (bad spec, a layer make_norm cannot build, e.g.
    ``gn:32`` for 48 channels) leaves the model unchanged.
    """
    from ..nn import convert_sync_batchnorm, make_norm  # the layer family's registry and synchronization

    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_norm: expected a torch.nn.Module, got {type(model).__name__}")
    picked = "batch norms (the default)" if where is None else f"where={where!r}"
    where = where or (lambda name, m: is_batch_norm(m))
    targets: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        inside_target = any(name.startswith(f"{t}.") or not t for t, _ in targets)
        if is_norm(m) and where(name, m) and not inside_target:
            targets.append((name, m))
    if not targets:
        raise ValueError(f"convert_norm: no normalization layer of the model matched: looked for {picked}")
    built: dict[int, nn.Module] = {}
    if isinstance(spec, str) and spec.strip().lower() == "sync":
        unknown = set(kw) - {"process_group"}
        if unknown:
            raise ValueError(f"convert_norm: spec 'sync' takes only process_group=, got {sorted(unknown)}")
        for name, old in targets:
            # normlab layers are switched to synchronized statistics; torch's become normlab BatchNorm (same keys).
            try:
                built[id(old)] = convert_sync_batchnorm(copy.deepcopy(old), kw.get("process_group"))
            except (ValueError, TypeError) as exc:
                raise type(exc)(
                    f"convert_norm: cannot synchronize {name or '<model>'!r} ({type(old).__name__}): {exc}; "
                    f"model unchanged"
                ) from exc
    for name, old in targets if not built else ():
        channels = _num_channels(name, old)
        try:
            probe = make_norm(spec, channels, **kw)
            options = {**_carried_options(old, type(probe)), **kw} if not isinstance(probe, nn.Identity) else {}
            new = make_norm(spec, channels, **options) if options.keys() - kw.keys() else probe
        except (ValueError, TypeError) as exc:
            # make_norm names the spec and the layer class; the user needs to know which of their layers failed
            raise type(exc)(
                f"convert_norm: cannot convert {name or '<model>'!r} ({type(old).__name__}, {channels} channels) "
                f"to {spec!r}: {exc}; model unchanged"
            ) from exc
        ref: torch.Tensor | None = next(iter(old.parameters()), None)
        if ref is None:
            ref = next(iter(old.buffers()), None)
        if ref is not None:
            new = new.to(ref.device)
            if ref.is_floating_point():
                new = new.to(ref.dtype)
        with torch.no_grad():
            _copy_matching(old, new, ("weight", "bias"))
            if has_running_stats(old) and has_running_stats(new):
                if is_uncentred(new) and not is_uncentred(old):
                    _carry_second_moment(old, new)
                else:
                    _copy_matching(old, new, ("running_mean", "running_var", "num_batches_tracked"))
        built[id(old)] = new.train(old.training)
    if id(model) in built:  # the model is itself one norm layer
        return built[id(model)]
    target = model if inplace else copy.deepcopy(model)
    originals = dict(model.named_modules(remove_duplicate=False))
    for name in list(originals):
        if name and id(originals[name]) in built:
            set_submodule(target, name, built[id(originals[name])])
    return target


# On each frozen layer: {"training": bool, "requires_grad": {param name: bool}} as it was before freeze.
_STATE = "_normlab_frozen"


def _stay_in_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of a frozen layer: ``model.train()`` may have flipped it back; normalize with running stats."""
    module.training = False


def is_frozen(module: nn.Module) -> bool:
    return hasattr(module, _STATE)


def _norm_layers(model: nn.Module, fname: str) -> list[nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fname}: expected a torch.nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if is_norm(m)]


def freeze(model: nn.Module, *, train_affine: bool = False) -> nn.Module:
    """Freeze every normalization layer of ``model`` in place and return ``model``.

    Layers with running statistics (batch norms; instance norms with ``track_running_stats``) switch to eval mode
    and stay there across ``model.train()``: their running statistics are fixed and normalize every batch. The
    affine parameters of every normalization layer get ``requires_grad=train_affine``. Freezing twice is a no-op.
    Raises ``ValueError`` if the model has no normalization layer.
    """
    layers = _norm_layers(model, "freeze")
    if not layers:
        raise ValueError("freeze: the model has no normalization layer (torch.nn norms or normlab.nn layers)")
    for m in layers:
        if is_frozen(m):
            continue
        params = dict(m.named_parameters(recurse=False))
        state = {"training": m.training, "requires_grad": {n: p.requires_grad for n, p in params.items()}}
        for p in params.values():
            p.requires_grad_(train_affine)
        if has_running_stats(m):
            m.eval()
            m.register_forward_pre_hook(_stay_in_eval)
        object.__setattr__(m, _STATE, state)
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze` in place and return ``model``: each layer's parameters get back the ``requires_grad``
    they had, and layers with running statistics follow ``model.training`` again (set now to ``model``'s mode).
    Layers that were not frozen are left alone."""
    for m in _norm_layers(model, "unfreeze"):
        if not is_frozen(m):
            continue
        state = getattr(m, _STATE)
        for name, p in m.named_parameters(recurse=False):
            p.requires_grad_(state["requires_grad"].get(name, p.requires_grad))
        for key, hook in list(m._forward_pre_hooks.items()):
            if hook is _stay_in_eval:
                del m._forward_pre_hooks[key]
        if has_running_stats(m):
            m.train(model.training)
        object.__delattr__(m, _STATE)
    return model
