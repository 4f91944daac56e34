"""Freeze and unfreeze normalization layers (the fine-tuning idiom); convert them to another kind.

``freeze`` fixes the statistics: every layer with running statistics normalizes with them from now on, even after
``model.train()``, and its running statistics stop changing. Affine parameters (gamma, beta) of every
normalization layer stop training unless ``train_affine=True``. Nothing is replaced, so the class of each layer
and the state_dict keys stay as they were and ``unfreeze`` restores the previous state exactly.
"""

from __future__ import annotations

from torch import nn

from ._common import has_running_stats, is_norm

__all__ = ["freeze", "unfreeze", "is_frozen"]

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
