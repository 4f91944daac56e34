"""``make_norm(spec, num_features, **kw)``: one registry from short spec strings to normalization layers.

======================  ==========================================================================================
spec                    layer
======================  ==========================================================================================
``"bn"``                :class:`BatchNorm` (any rank, channel ``axis``)
``"brn"``               :class:`BatchRenorm` (Ioffe 2017)
``"gbn:16"``            :class:`GhostBatchNorm` with a virtual batch of 16 (the number is required)
``"mabn"``              :class:`MovingAverageBatchNorm` (Yan et al. 2020)
``"bln"``               :class:`BatchLayerNorm` (Ziaee & Cano 2022)
``"gn:32"``             :class:`GroupNorm` with 32 groups; ``"gn"`` alone means 32, the GroupNorm paper's default
``"ln"``                :class:`LayerNorm` in feature-map mode: statistics over *all non-batch dims* of each sample
                        (C and every spatial dim, the "LN" of the GroupNorm paper, = ``GroupNorm(1, C)``), with a
                        per-channel affine. For a 2D ``(N, C)`` input that is the usual LayerNorm over features. For a
                        per-token LayerNorm on ``(N, L, C)`` build ``LayerNorm(C)`` (torch mode) directly.
``"in"``                :class:`InstanceNorm` with ``affine=True`` (every spec here has a learned affine by default;
                        pass ``affine=False`` for torch's default)
``"rms"``               :class:`RMSNorm` in feature-map mode (mean square over all non-batch dims, per-channel gamma)
``"masked"``            :class:`MaskedBatchNorm`: BatchNorm over padded batches, ``forward(x, mask=/lengths=)``
``"tbn:28"``            :class:`TimeStepBatchNorm`, recurrent BN with statistics per time step up to T_max = 28
                        (Cooijmans et al. 2016, gamma starts at 0.1); ``"tbn"`` alone needs ``max_steps=`` as a
                        keyword (the lab's ``rnn`` model passes its sequence length). Channel ``axis`` -1 by default:
                        ``(N, T, C)`` sequences, or ``forward(x_t, step=t)`` on ``(N, C)`` inside a recurrent loop
``"fn"``                :class:`FullNormalization` (Lian & Liu 2019): a moving estimate of the dataset's moments in
                        value, the batch's moments in gradient
``"ran"``               :class:`RunningAverageNorm`: normalizes with the running averages in training too, no
                        gradient through them (what seed article 000 calls MABN)
``"none"``              ``torch.nn.Identity`` (keyword arguments are ignored)
======================  ==========================================================================================

Keyword arguments go to the layer's constructor (``eps``, ``momentum``, ``axis``, ...). ``register_norm`` adds a
spec; an unknown spec raises ``ValueError`` listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["make_norm", "register_norm", "norm_specs"]

# name -> (builder(num_features, arg, **kw), argument: "none" | "optional" | "required", help)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str, str]] = {}


def register_norm(name: str, builder: Callable[..., nn.Module], *, argument: str = "none", help: str = "") -> None:
    """Register ``name`` -> ``builder(num_features, arg, **kw)``; ``arg`` is the int after ``name:`` or None.

    ``argument`` says whether the spec takes ``:<int>``: ``"none"``, ``"optional"`` or ``"required"``.
    """
    if argument not in ("none", "optional", "required"):
        raise ValueError(f"register_norm: argument must be 'none', 'optional' or 'required', got {argument!r}")
    if not name or ":" in name:
        raise ValueError(f"register_norm: a spec name must be non-empty and without ':', got {name!r}")
    _REGISTRY[name] = (builder, argument, help)


def norm_specs() -> list[str]:
    """The valid spec forms, e.g. ``['bn', 'brn', 'gbn:<int>', ...]``."""
    forms = []
    for name, (_, argument, _) in _REGISTRY.items():
        forms.append({"none": name, "optional": f"{name}[:<int>]", "required": f"{name}:<int>"}[argument])
    return forms


def make_norm(spec: str, num_features: int, **kw) -> nn.Module:
    """Build the normalization layer named by ``spec`` for ``num_features`` channels (see the module docstring)."""
    valid = ", ".join(norm_specs())
    if not isinstance(spec, str):
        raise TypeError(f"make_norm: spec must be a string, got {type(spec).__name__}; valid specs: {valid}")
    name, sep, rest = spec.strip().lower().partition(":")
    if name not in _REGISTRY:
        raise ValueError(f"make_norm: unknown spec {spec!r}; valid specs: {valid}")
    builder, argument, _ = _REGISTRY[name]
    arg = None
    if sep:
        if argument == "none":
            raise ValueError(f"make_norm: spec {name!r} takes no ':<int>' argument, got {spec!r}; valid specs: {valid}")
        try:
            arg = int(rest)
        except ValueError:
            raise ValueError(f"make_norm: expected an int after ':' in {spec!r}; valid specs: {valid}") from None
        if arg < 1:
            raise ValueError(f"make_norm: the number in {spec!r} must be positive")
    elif argument == "required":
        raise ValueError(f"make_norm: spec {name!r} needs a number, e.g. '{name}:16'; valid specs: {valid}")
    try:
        return builder(num_features, arg, **kw)
    except TypeError as e:  # a wrong keyword for this spec: name the spec the user wrote
        hint = " (the number in the spec already sets it)" if "multiple values" in str(e) and arg is not None else ""
        raise TypeError(f"make_norm({spec!r}): {e}{hint}") from None


def _time_step_bn(num_features: int, arg: int | None, /, **kw) -> nn.Module:
    """``"tbn:<T_max>"`` or ``"tbn"`` with ``max_steps=`` (one of the two; both only if they agree)."""
    from .sequence import TimeStepBatchNorm

    max_steps = arg
    if "max_steps" in kw:
        given = kw.pop("max_steps")
        if max_steps is not None and given != max_steps:
            raise ValueError(
                f"make_norm: spec 'tbn:{max_steps}' and max_steps={given!r} disagree; give the number of time "
                f"steps once"
            )
        max_steps = given
    if max_steps is None:
        raise ValueError(
            "make_norm: spec 'tbn' needs the number of time steps T_max: write 'tbn:<int>' (e.g. 'tbn:28') or pass "
            "max_steps=<int>"
        )
    return TimeStepBatchNorm(num_features, max_steps, **kw)


def _builtin() -> None:
    # Imported here so that registry.py can be imported first by anything.
    from . import alternatives as alt
    from . import batchnorm, sequence, variants
    from .full_normalization import FullNormalization
    from .running_average import RunningAverageNorm

    register_norm("bn", lambda c, _, **kw: batchnorm.BatchNorm(c, **kw), help="BatchNorm")
    register_norm("brn", lambda c, _, **kw: variants.BatchRenorm(c, **kw), help="Batch Renormalization")
    register_norm(
        "gbn", lambda c, n, **kw: variants.GhostBatchNorm(c, virtual_batch_size=n, **kw),
        argument="required", help="Ghost BatchNorm, gbn:<virtual batch size>",
    )
    register_norm("mabn", lambda c, _, **kw: variants.MovingAverageBatchNorm(c, **kw), help="Moving Average BN")
    register_norm("bln", lambda c, _, **kw: variants.BatchLayerNorm(c, **kw), help="Batch Layer Normalization")
    register_norm(
        "gn", lambda c, g, **kw: alt.GroupNorm(32 if g is None else g, c, **kw),
        argument="optional", help="GroupNorm, gn:<groups> (default 32)",
    )
    register_norm("ln", lambda c, _, **kw: alt.LayerNorm(c, **{"axis": 1, **kw}), help="LayerNorm over non-batch dims")
    register_norm("in", lambda c, _, **kw: alt.InstanceNorm(c, **{"affine": True, **kw}), help="InstanceNorm")
    register_norm("rms", lambda c, _, **kw: alt.RMSNorm(c, **{"axis": 1, **kw}), help="RMSNorm over non-batch dims")
    register_norm("masked", lambda c, _, **kw: sequence.MaskedBatchNorm(c, **kw), help="BatchNorm over padded batches")
    register_norm("tbn", _time_step_bn, argument="optional", help="recurrent BN per time step, tbn:<max_steps>")
    register_norm("fn", lambda c, _, **kw: FullNormalization(c, **kw), help="Full Normalization (Lian & Liu 2019)")
    register_norm("ran", lambda c, _, **kw: RunningAverageNorm(c, **kw), help="running-average normalization")
    register_norm("none", lambda c, _, **kw: nn.Identity(), help="identity")


_builtin()
