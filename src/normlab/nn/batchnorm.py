"""BatchNorm (Ioffe & Szegedy 2015), drop-in compatible with ``torch.nn.BatchNorm1d/2d/3d``.

For each channel c, over every other axis of the mini-batch B (m values):

    mu_B = (1/m) sum x_i            sigma2_B = (1/m) sum (x_i - mu_B)^2          (biased, used to normalize)
    y_i  = gamma * (x_i - mu_B) / sqrt(sigma2_B + eps) + beta

Training mode also updates the running averages used at inference (torch's convention, ``momentum`` is the
weight of the *new* value; ``momentum=None`` is the cumulative average, as in torch):

    running_mean <- (1 - momentum) * running_mean + momentum * mu_B
    running_var  <- (1 - momentum) * running_var  + momentum * sigma2_B * m / (m - 1)   (unbiased, as torch)

Parameters (``weight`` = gamma, ``bias`` = beta) are learned by backprop; buffers (``running_mean``,
``running_var``, ``num_batches_tracked``) are updated by the running average. The names and the state_dict
layout are torch's, so checkpoints load both ways.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .. import _stats, _validate, kernels
from .. import functional as F

__all__ = [
    "NormLayer", "RunningStatsNorm", "BatchNormBase", "extends_constructor", "BatchNorm", "BatchNorm1d", "BatchNorm2d",
    "BatchNorm3d",
]

EVAL_STATS = ("running", "batch")


def _initializer(spec: str | float | Callable[[Tensor], Any], what: str) -> Callable[[Tensor], Any]:
    """Keras-style initializer names (or a number, or a callable filling the tensor in place)."""
    if callable(spec):
        return lambda t: spec(t)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return lambda t: nn.init.constant_(t, float(spec))
    table = {"zeros": nn.init.zeros_, "ones": nn.init.ones_}
    if spec not in table:
        raise ValueError(
            f"BatchNorm.keras: unknown {what} {spec!r}; expected one of {sorted(table)}, a number or a callable"
        )
    return table[spec]


def keep_counter_on_load(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """torch's rule for a checkpoint without ``num_batches_tracked`` (written before torch 0.4.1, version < 2, or a
    dict without metadata): the layer keeps its own counter (a layer that has none yet starts at 0). With version-2
    metadata a missing key is a missing key (``strict=False`` then leaves the counter as it is)."""
    version = local_metadata.get("version", None)
    key = prefix + "num_batches_tracked"
    counter = getattr(module, "num_batches_tracked", None)
    if (version is None or version < 2) and getattr(module, "track_running_stats", False) and key not in state_dict:
        if counter is not None and counter.device.type != "meta":
            state_dict[key] = counter
        else:
            state_dict[key] = torch.tensor(0, dtype=torch.long)


def reset_affine(module: nn.Module) -> None:
    """The family's initial affine: ``weight`` (gamma) ones, ``bias`` (beta) zeros, each where the layer has it."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if isinstance(weight, Tensor):
        nn.init.ones_(weight)
    if isinstance(bias, Tensor):
        nn.init.zeros_(bias)


class NormLayer(nn.Module):
    """The base of every normalization layer of ``normlab.nn``: what ``normlab.tools`` and the lab recognize as a
    norm (``isinstance``, never the class's name or module), and checks the constructor's arguments against the
    layer's own signature first, so a wrong argument raises ``TypeError`` naming the layer the user called (not the
    base class whose ``__init__`` receives them) with the layer's true argument counts."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:  # copy/pickle call __new__(cls) alone: nothing to check then
            try:
                inspect.signature(cls.__init__).bind(None, *args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{cls.__name__}: {e}") from None
        return super().__new__(cls)


class RunningStatsNorm(NormLayer):
    """What every layer with per-channel parameters and torch's running-statistic buffers shares (BatchNormBase,
    InstanceNorm): the construction checks (``num_features``, ``eps``, ``momentum``), the parameters ``weight``
    (gamma) and ``bias`` (beta), the buffers ``running_mean``/``running_var``/``num_batches_tracked`` (``None`` without
    ``track_running_stats``), reset, the repr and torch's state_dict rules (version 2, a missing counter keeps the
    layer's). Raises ``ValueError`` naming the layer for a bad ``num_features``, ``eps`` or ``momentum``.
    """

    _version = 2
    # Declared for type checkers (nn.Module.__getattr__ is typed Tensor | Module). The buffers are None only
    # without track_running_stats, where every path that reads them is guarded by that flag.
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def _init_state(
        self, num_features: int, eps: float, momentum: float | None, affine: bool, track_running_stats: bool,
        *, scale: bool, center: bool, axis: int, device=None, dtype=None,
    ) -> None:
        name = type(self).__name__
        _validate.check_positive_int(num_features, name, "num_features")
        if eps is None or not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps}")
        _stats.check_momentum(momentum, name)
        factory = {"device": device, "dtype": dtype}
        # the constructor's device and dtype, for the buffers and parameters a subclass adds
        self._factory = factory
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats, self.axis = affine, track_running_stats, axis
        self.weight = nn.Parameter(torch.empty(num_features, **factory)) if scale else None
        self.bias = nn.Parameter(torch.empty(num_features, **factory)) if center else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    @property
    def layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        reset_affine(self)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        keep_counter_on_load(self, state_dict, prefix, local_metadata)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
        return s + (f", axis={self.axis}" if self.axis != 1 else "")


#: The methods whose definition in a subclass makes it not :attr:`BatchNormBase.fuses_activation` by default.
_OWN_STEP = ("forward", "_normalize", "update_running", "batch_moments")


class BatchNormBase(RunningStatsNorm):
    """Parameters, buffers, state_dict layout and input checks shared by every batch-statistic layer.

    Subclasses set ``_ranks`` (accepted input ranks, ``None`` = any rank >= 2) and may override
    :meth:`_normalize`, which receives a checked input and returns the output.

    Shared rules: an empty batch in training gives an empty output of the input's shape (torch's behaviour) and
    changes no running statistic and no counter; a synchronized layer decides its data-dependent checks on the
    count pooled over the group (see :mod:`normlab.nn.sync`); ``momentum=None`` weighs a batch by 1 / counter as a
    tensor operation; derivatives of every order are exact; a state_dict without ``num_batches_tracked`` keeps
    the layer's counter, as torch. ``bias=False`` (torch's keyword) keeps the weight and drops the bias.
    Raises ``ValueError`` naming the layer for a wrong rank, channel count or a single value per channel.
    """

    _ranks: tuple[int, ...] | None = None
    # -- capabilities, read by nn.sync and normlab.tools (never a concrete-type check) --
    #: whether convert_sync_batchnorm may pool this layer's statistics over processes
    syncable = True
    #: why not, when ``syncable`` is False (completes "... is a <class>, whose <reason> and cannot be synchronized")
    not_syncable_because = ""
    #: whether ``running_mean``/``running_var`` are a mean and a (centred) variance; False when ``running_var`` is
    #: the uncentred second moment E[x^2] and ``running_mean`` stays 0 (MABN): recalibrate then averages E[x^2]
    centred = True
    #: whether the layer is only defined with running statistics (track_running_stats=False raises at construction)
    requires_running_stats = False
    #: whether the batch statistics this class normalizes with are the plain per-channel moments of the batch
    #: (:meth:`batch_moments` as defined here), so that, unsynchronized, functional.batch_norm and the fused
    #: kernels compute exactly its forward. A class whose statistics differ (per time step, moving averages of
    #: E[x^2], mixed with layer statistics, compositional) declares False; a class that overrides ``batch_moments``
    #: or ``update_running`` is False unless it declares True itself.
    plain_batch_moments = True
    #: Whether ``act(self(x))`` may run as one fused kernel pass (:class:`normlab.nn.NormAct`,
    #: :func:`normlab.tools.fuse_norm_act`): the class's training forward is the plain batch-norm step. A subclass
    #: defining ``forward``, ``_normalize``, ``update_running`` or ``batch_moments`` is not, unless it declares this.
    fuses_activation = True
    # Training needs more than one value per channel (a batch variance); BatchLayerNorm works at batch size 1.
    _needs_batch_variance = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # a class bringing its own batch_moments without saying that they are still the plain ones: not plain, so
        # its batch_moments is the one used (the fused paths would silently replace it)
        # (or its own update_running: functional.batch_norm would track the statistics without calling it)
        if "plain_batch_moments" not in vars(cls) and ("batch_moments" in vars(cls) or "update_running" in vars(cls)):
            cls.plain_batch_moments = False
        # the same for the fused norm + activation pass: a class with its own step is not fused unless it says so
        if "fuses_activation" not in vars(cls) and any(m in vars(cls) for m in _OWN_STEP):
            cls.fuses_activation = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        axis: int = 1,
        eval_stats: str = "running",
        running_var_unbiased: bool = True,
        check_finite: bool = False,
        scale: bool | None = None,
        center: bool | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if self.requires_running_stats and not track_running_stats:
            raise ValueError(
                f"{type(self).__name__}: needs running statistics; track_running_stats=False is not supported"
            )
        use_scale = affine if scale is None else scale
        # torch's keyword ``bias=False``: a learned weight and no bias (only meaningful with affine=True, as torch)
        use_center = (affine and bias) if center is None else center
        self._init_state(num_features, eps, momentum, affine, track_running_stats, scale=use_scale,
                         center=use_center, axis=axis, device=device, dtype=dtype)
        if eval_stats not in EVAL_STATS:
            raise ValueError(f"{type(self).__name__}: eval_stats must be one of {EVAL_STATS}, got {eval_stats!r}")
        self.eval_stats = eval_stats
        self.running_var_unbiased = running_var_unbiased
        self.check_finite = check_finite
        # Synchronized statistics over torch.distributed (see normlab.nn.sync); off by default.
        self.sync_statistics = False
        self.process_group = None
        self.reset_parameters()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.eval_stats != "running":
            s += f", eval_stats={self.eval_stats!r}"
        if not self.running_var_unbiased:
            s += ", running_var_unbiased=False"
        return s

    # -- forward ---------------------------------------------------------------------------------------------
    def uses_batch_stats(self) -> bool:
        """True when this call normalizes with the batch's statistics (training, no running stats, or asked)."""
        return self.training or not self.track_running_stats or self.eval_stats == "batch"

    def updates_running_stats(self) -> bool:
        return self.training and self.track_running_stats

    def check_input(self, x: Tensor) -> int:
        """Validate ``x`` before anything changes; return the channel axis as a non-negative index."""
        # The common case in a few comparisons (every forward runs this); anything else takes the full checks,
        # which raise naming the layer and what is wrong.
        if isinstance(x, Tensor) and x.is_floating_point() and not self.check_finite:
            nd = x.ndim
            ranks = self._ranks
            axis = self.axis
            if (nd >= 2 if ranks is None else nd in ranks) and -nd <= axis < nd:
                c = axis % nd
                if x.shape[c] == self.num_features and (
                    x.numel() > self.num_features or not self._needs_batch_variance or not self.uses_batch_stats()
                ):
                    return c
        return self._check_input_fully(x)

    def _check_input_fully(self, x: Tensor) -> int:
        name = self.layer_name
        _validate.check_float(x, name)
        if self._ranks is not None:
            _validate.check_rank(x, name, self._ranks)
        elif x.ndim < 2:
            raise ValueError(f"{name}: expected an input of rank >= 2 (batch and channel), got {x.ndim}D input")
        c = _validate.check_channels(x, name, self.num_features, self.axis)
        # A synchronized layer checks the count pooled over every process instead (see _pool_over_processes): one
        # process may hold 0 or 1 sample while the group holds many, and a local raise would leave the others waiting.
        if self.uses_batch_stats() and self._needs_batch_variance and not self.sync_statistics:
            _validate.check_batch_size(x, name, c)
        if self.check_finite:
            if self.sync_statistics and self.uses_batch_stats():
                self._check_finite_everywhere(x, c)
            else:
                _validate.check_finite(x, name, c)
        return c

    def _check_finite_everywhere(self, x: Tensor, c: int) -> None:
        """check_finite for a synchronized layer: every process learns whether any holds NaN/Inf, and all raise."""
        here = not bool(torch.isfinite(x).all())
        if _stats.any_process(here, self.process_group):
            if here:
                _validate.check_finite(x, self.layer_name, c)
            raise ValueError(
                f"{self.layer_name}: another process of the group holds NaN or Inf in its input (check_finite=True); "
                f"every process stops here"
            )

    def statistics_input(self, args: tuple, kwargs: dict) -> tuple[Tensor | None, Tensor | None]:
        """What a forward call ``layer(*args, **kwargs)`` takes its statistics over: ``(x, mask)``, ``mask`` a bool
        tensor broadcastable to ``x`` (True = valid) or None for every position; ``(None, None)`` when the call holds
        no tensor input. Tools that re-estimate statistics from the calls (``normlab.tools.recalibrate``) read this
        instead of the layer's internals; layers with a mask (MaskedBatchNorm) override it. Raises the layer's own
        errors for a bad mask."""
        x = args[0] if args else kwargs.get("x", kwargs.get("input"))
        return (x, None) if isinstance(x, Tensor) else (None, None)

    def forward(self, x: Tensor) -> Tensor:
        c = self.check_input(x)
        if x.numel() == 0 and self.skips_empty_batch():
            return self.empty_output(x, c)
        return self._normalize(x, c)

    def skips_empty_batch(self) -> bool:
        """Whether an empty batch is answered locally by :meth:`empty_output` (batch statistics, not synchronized:
        a synchronized layer still takes part in the pooling, whose count decides)."""
        return self.uses_batch_stats() and not self.sync_statistics

    def empty_output(self, x: Tensor, axis: int) -> Tensor:
        """The output for an empty batch (torch's behaviour): empty, of ``x``'s shape, still in the graph of ``x``
        and the parameters (their gradients are 0); no running statistic and no counter changes (a batch without
        samples is not counted, unlike torch, whose counter also counts it)."""
        return _stats.affine(x * 0, self.weight, self.bias, axis=axis)

    # -- the shared batch-statistic path (variants override pieces of it) ------------------------------------
    def batch_moments(self, x: Tensor, dims: tuple[int, ...], *, mask: Tensor | None = None) -> _stats.Moments:
        """Batch statistics of ``x`` over ``dims``: local, or pooled over every process of ``process_group`` when
        the layer is synchronized (:func:`normlab.nn.sync.convert_sync_batchnorm`). Differentiable either way."""
        return self._pool_over_processes(kernels.moments(x, dims, mask=mask))

    def _pool_over_processes(self, stats: _stats.Moments) -> _stats.Moments:
        """``stats`` pooled exactly over every process of ``process_group`` when the layer is synchronized, else
        unchanged (the one place a layer's statistics cross processes)."""
        if not self.sync_statistics:
            return stats
        pooled = _stats.all_merge_moments(stats, self.process_group)
        if self._needs_batch_variance and self.uses_batch_stats():
            # the pooled count is the same on every process: all raise together, none waits for the others
            _stats.check_pooled_count(pooled, stats, self.layer_name)
        return pooled

    def _local_plain_moments(self) -> bool:
        """Whether the class declares plain batch moments (:attr:`plain_batch_moments`) and the layer is not
        synchronized (then functional.batch_norm, with its fast paths, computes exactly this layer's forward)."""
        return self.plain_batch_moments and not self.sync_statistics

    def update_running(self, stats: _stats.Moments) -> None:
        """Fold one batch's statistics into the running buffers (momentum, or the cumulative average for
        ``momentum=None``) and count the batch: :func:`normlab._stats.track` on this layer's buffers."""
        _stats.track(
            self.running_mean, self.running_var, self.num_batches_tracked, stats, momentum=self.momentum,
            running_var_unbiased=self.running_var_unbiased, name=self.layer_name, read_count=self.sync_statistics,
        )

    def _normalize(self, x: Tensor, axis: int) -> Tensor:
        if self._local_plain_moments() and self._needs_batch_variance:
            # the plain layer: functional.batch_norm chooses the fused CPU kernels, torch's own kernel or _stats
            update, batch = self.updates_running_stats(), self.uses_batch_stats()
            keep_running = update or not batch
            # Parameters and buffers read from the module's own dicts: nn.Module.__getattr__ is a Python call
            # (~0.3 us each, five per step: a sixth of torch's whole operator on a small tensor). It finds them
            # there too whenever they are there (torch.func.functional_call swaps tensors into these dicts); one
            # that is not (a parametrization turns "weight" into a property) takes the attribute.
            params, buffers = self._parameters, self._buffers
            weight = params["weight"] if "weight" in params else self.weight
            bias = params["bias"] if "bias" in params else self.bias
            if keep_running:
                rm = buffers["running_mean"] if "running_mean" in buffers else self.running_mean
                rv = buffers["running_var"] if "running_var" in buffers else self.running_var
            else:
                rm = rv = None
            counter = None
            if update:
                counter = buffers["num_batches_tracked"] if "num_batches_tracked" in buffers \
                    else self.num_batches_tracked
            # the input was checked by check_input: the unchecked entry, so nothing is validated twice
            return F._batch_norm(x, axis, rm, rv, weight, bias, batch, self.momentum, self.eps,
                                 self.running_var_unbiased, counter, self.layer_name)
        if not self.uses_batch_stats():
            return kernels.normalize(
                x, self.running_mean, self.running_var, self.weight, self.bias, self.eps, axis=axis
            )
        stats = self.batch_moments(x, _stats.reduce_dims(x.ndim, axis))
        if self.updates_running_stats():
            self.update_running(stats)
        return kernels.normalize(x, stats.mean, stats.var, self.weight, self.bias, self.eps, axis=axis)

class BatchNorm(BatchNormBase):
    """BatchNorm over any rank: the channel axis is ``axis`` (``1`` as torch, ``-1`` for channels-last and
    ``(N, L, C)`` sequences); statistics are taken over every other axis.

    Extras over torch: ``eval_stats="batch"`` normalizes with batch statistics in eval mode too;
    ``running_var_unbiased=False`` keeps the biased running variance (Keras, ONNX); ``check_finite=True`` raises
    on NaN/Inf naming the first bad channel; :meth:`keras` builds the layer from Keras' names and defaults.
    """

    @classmethod
    def keras(
        cls,
        num_features: int,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: str | float | Callable = "zeros",
        gamma_initializer: str | float | Callable = "ones",
        moving_mean_initializer: str | float | Callable = "zeros",
        moving_variance_initializer: str | float | Callable = "ones",
        **kwargs,
    ) -> BatchNorm:
        """Keras' ``BatchNormalization`` arguments and defaults.

        Keras' ``momentum`` is the weight of the *old* running value and its running variance is the *biased* batch
        variance, as the ONNX ``BatchNormalization`` operator defines training mode:
        ``running = momentum * running + (1 - momentum) * batch``. Here that is ``momentum = 1 - keras_momentum`` and
        ``running_var_unbiased=False``.
        """
        if not 0.0 <= momentum <= 1.0:  # Keras' convention: its own wording
            raise ValueError(f"BatchNorm.keras: momentum must lie in [0, 1] (weight of the old value), got {momentum}")
        layer = cls(
            num_features,
            eps=epsilon,
            momentum=1.0 - momentum,
            axis=axis,
            scale=scale,
            center=center,
            running_var_unbiased=False,
            **kwargs,
        )
        with torch.no_grad():
            if layer.weight is not None:
                _initializer(gamma_initializer, "gamma_initializer")(layer.weight)
            if layer.bias is not None:
                _initializer(beta_initializer, "beta_initializer")(layer.bias)
            if layer.track_running_stats:
                _initializer(moving_mean_initializer, "moving_mean_initializer")(layer.running_mean)
                _initializer(moving_variance_initializer, "moving_variance_initializer")(layer.running_var)
        return layer


class BatchNorm1d(BatchNorm):
    """``torch.nn.BatchNorm1d``: input ``(N, C)`` or ``(N, C, L)``."""

    _ranks = (2, 3)


class BatchNorm2d(BatchNorm):
    """``torch.nn.BatchNorm2d``: input ``(N, C, H, W)``."""

    _ranks = (4,)


class BatchNorm3d(BatchNorm):
    """``torch.nn.BatchNorm3d``: input ``(N, C, D, H, W)``."""

    _ranks = (5,)


_Init = TypeVar("_Init", bound=Callable[..., None])


def extends_constructor(init: _Init) -> _Init:
    """Decorator for a variant's ``__init__(self, num_features, [own positionals], *args, [own keywords], **kwargs)``
    that hands ``*args``/``**kwargs`` to :class:`BatchNormBase`: the constructor is written once, in BatchNormBase,
    and the variant states only what it adds or changes. Its signature (for ``help()``, and for tools that read
    which options a class accepts, e.g. ``normlab.tools.convert_norm``) becomes BatchNormBase's with the variant's
    own arguments merged in: own positionals named like a base argument change its default in place (they must be
    a prefix of the base's order, e.g. ``eps, momentum``), other own positionals come right after ``num_features``
    (``virtual_batch_size``), own keyword-only arguments are added or change the base's default (``axis=-1``).
    Raises ``TypeError`` at class definition for positionals out of the base's order.
    """
    own = list(inspect.signature(init).parameters.values())
    base = list(inspect.signature(BatchNormBase.__init__).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)
    own_pos = [p for p in own[2:] if p.kind in positional]
    own_kw = {p.name: p for p in own if p.kind == inspect.Parameter.KEYWORD_ONLY}
    base_pos = [p for p in base[2:] if p.kind in positional]
    renamed = [p for p in own_pos if p.name in {b.name for b in base_pos}]
    if [p.name for p in renamed] != [b.name for b in base_pos[: len(renamed)]]:
        raise TypeError(f"extends_constructor: {init.__qualname__} restates base arguments out of order: "
                        f"{[p.name for p in renamed]}")
    added = [p for p in own_pos if p not in renamed]
    changed = {p.name: p for p in renamed}
    params = own[:2] + added + [changed.get(b.name, b) for b in base_pos]
    params += [own_kw.pop(b.name, b) for b in base if b.kind == inspect.Parameter.KEYWORD_ONLY]
    params += list(own_kw.values())
    init.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return init
