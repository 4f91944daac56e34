"""Per-layer activation statistics during training, on sampled steps, through hooks.

The statistics the batch-norm literature argues with: the distribution of each layer's pre-activation over
training (internal covariate shift, Ioffe & Szegedy 2015; Santurkar et al. 2018 plot its 15/50/85th percentiles),
the fraction of dead ReLU units, and the size of the gradient reaching each layer (vanishing gradients,
Glorot & Bengio 2010).

For each watched module, on a sampled step, the recorder reads the module's **input** (for an activation
function, its pre-activation) and stores one :class:`LayerRecord`:

* ``mean``, ``std`` over all values of the batch;
* ``p15``, ``p50``, ``p85``: percentiles, exact for tensors of at most ``max_values`` values, else of
  ``max_values`` values drawn uniformly at random (seeded), which keeps the cost flat for large feature maps;
* ``dead_fraction``: the fraction of channels (axis 1) whose input is <= 0 at every position of the batch, i.e.
  ReLU units that output zero for the whole batch and pass no gradient;
* ``grad_norm``: the L2 norm of the gradient of the loss with respect to that input, filled in when ``backward``
  reaches it (``None`` until then, or if no backward runs);
* ``weight_grad_norm``: for a watched module with a ``weight`` parameter (a Linear or Conv), the L2 norm of that
  weight's gradient from the same step's backward (``None`` otherwise).

On request (``stats``) also, per layer:

* ``unit_percentiles``: the 15/50/85th percentiles of every unit (channel, axis 1) separately, over the batch and
  any other positions, as ``[[p15, p50, p85], ...]`` (Ioffe & Szegedy's Fig. 1 plots them for single units);
* ``variance_shift``: for a watched batch norm with running statistics, ``mean_c |log(Var_c(input) /
  running_var_c)|`` with the per-channel unbiased variance of its input: 0 when the running variance matches the
  variance the layer sees (Li et al. 2019's "variance shift" between training and inference).

A statistic that is not finite (NaN or inf: a non-finite activation or gradient, an overflow) is recorded as it
is, and the first one of each watched layer raises a ``RuntimeWarning`` naming the layer, the statistic(s) and
the step; later ones of that layer are recorded silently.

A step is one forward call of the root model in training mode; every ``every``-th step is sampled (steps
0, every, 2 * every, ...). Eval-mode forward calls are neither counted nor recorded. Hooks exist only inside the
``with`` block, and outside sampled steps they return at once. Two ways to measure outside the training stream:
:meth:`ActivationRecorder.observe` runs one forward on a fixed probe input (eval mode, or training mode with every
buffer and the random state put back) and records it; :meth:`ActivationRecorder.paused` hides extra forward and
backward passes (a probe's own) from the training-step count and the records.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .. import _validate

__all__ = ["ActivationRecorder", "LayerRecord", "ACTIVATION_MODULES", "STATS", "DEFAULT_STATS"]

STATS = ("moments", "percentiles", "dead", "unit_percentiles", "variance_shift")
#: what the recorder computes when ``stats`` is not given
DEFAULT_STATS = ("moments", "percentiles", "dead")
_QUANTILES = (0.15, 0.50, 0.85)

#: the activation *module types* the recorder hooks by default (not a name -> activation table)
ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
)


@dataclass
class LayerRecord:
    """One layer on one step; a statistic not asked for (``stats``) is ``None``."""

    step: int
    layer: str
    mean: float | None
    std: float | None
    p15: float | None
    p50: float | None
    p85: float | None
    dead_fraction: float | None
    grad_norm: float | None = None
    weight_grad_norm: float | None = None
    unit_percentiles: list | None = None
    variance_shift: float | None = None


class ActivationRecorder:
    """Context manager recording per-layer activation statistics on sampled training steps.

    ``modules``: names of the modules to watch (their inputs are recorded); by default every activation-function
    module of :data:`ACTIVATION_MODULES` (functional calls such as ``torch.relu`` inside a forward are invisible to
    hooks: name the module after which they come instead). ``every``: record one step in ``every``. ``max_values``:
    values used for the percentiles (``seed`` seeds their draw). ``grads``: also record gradient norms.
    ``stats``: which statistics to compute, some of :data:`STATS` (default: "moments" (mean, std),
    "percentiles", "dead"; add "unit_percentiles" or "variance_shift", or pass ``()`` to record gradient norms
    only).

    >>> with ActivationRecorder(model, every=10) as rec:
    ...     for x, y in loader:
    ...         loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    >>> rec.series("layer1.relu", "p50")   # [(step, value), ...]
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Iterable[str] | None = None,
        *,
        every: int = 1,
        max_values: int = 4096,
        grads: bool = True,
        seed: int = 0,
        stats: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ActivationRecorder: expected a torch.nn.Module, got {type(model).__name__}")
        _validate.check_positive_int(every, "ActivationRecorder", "every")
        if not isinstance(max_values, int) or max_values < 3:
            raise ValueError(f"ActivationRecorder: max_values must be an int >= 3, got {max_values!r}")
        chosen = DEFAULT_STATS if stats is None else tuple(stats) if not isinstance(stats, str) else (stats,)
        unknown_stats = [k for k in chosen if k not in STATS]
        if unknown_stats:
            raise ValueError(f"ActivationRecorder: unknown stats {unknown_stats}; expected some of {list(STATS)}")
        named = dict(model.named_modules())
        if modules is None:
            names = [n for n, m in named.items() if isinstance(m, ACTIVATION_MODULES)]
            if not names:
                raise ValueError(
                    "ActivationRecorder: the model has no activation module (nn.ReLU, nn.GELU, ...); pass "
                    "modules=[names] to choose what to watch"
                )
        else:
            names = list(modules)
            unknown = [n for n in names if n not in named]
            if unknown:
                raise ValueError(
                    f"ActivationRecorder: no module named {unknown} in the model; known names include "
                    f"{[n for n in named if n][:10]}"
                )
        self.model = model
        self.layers = names
        self.every = every
        self.max_values = max_values
        self.grads = grads
        self.stats = frozenset(chosen)
        self.records: list[LayerRecord] = []
        self.step = -1  # incremented at the start of each training forward of the root model
        self._sampled = False
        self._paused = 0
        self._latest: dict[str, LayerRecord] = {}  # this step's record per layer, for the weight-gradient hooks
        self._handles: list = []
        self._modules = {n: named[n] for n in names}
        self._gen = torch.Generator().manual_seed(seed)
        self._warned: set[str] = set()  # layers whose first non-finite statistic was reported

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _on_root_forward(self, module: nn.Module, args: tuple) -> None:
        if self._paused:
            self._sampled = False
        elif module.training:
            self.step += 1
            self._sampled = self.step % self.every == 0
        else:
            self._sampled = False

    def _watch(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not self._sampled or not args or not isinstance(args[0], Tensor):
                return
            x = args[0]
            rec = self._summarize(name, x)
            self.records.append(rec)
            self._latest[name] = rec
            if self.grads and x.requires_grad:
                def on_grad(grad: Tensor, rec: LayerRecord = rec) -> None:
                    rec.grad_norm = float(torch.linalg.vector_norm(grad.detach().float()))
                    self._warn_non_finite(rec, ("grad_norm",))

                x.register_hook(on_grad)

        return hook

    @torch.no_grad()
    def _summarize(self, name: str, x: Tensor, step: int | None = None) -> LayerRecord:
        x = x.detach()
        rec = LayerRecord(self.step if step is None else step, name, None, None, None, None, None, None)
        flat = x.reshape(-1).float() if self.stats & {"moments", "percentiles"} else x.new_empty(0)
        if "moments" in self.stats:
            std, mean = torch.std_mean(flat, correction=0)
            rec.mean, rec.std = mean.item(), std.item()
        if "percentiles" in self.stats:
            sample = flat
            if flat.numel() > self.max_values:
                # Uniform draws (with replacement, O(max_values)): a stride could alias with the feature-map layout.
                sample = flat[torch.randint(flat.numel(), (self.max_values,), generator=self._gen)]
            rec.p15, rec.p50, rec.p85 = torch.quantile(sample, torch.tensor(_QUANTILES, device=sample.device)).tolist()
        per_unit = None
        if x.ndim >= 2 and self.stats & {"dead", "unit_percentiles"}:
            per_unit = x.transpose(0, 1).reshape(x.shape[1], -1)  # (channels, values)
        if "dead" in self.stats:
            dead = (per_unit <= 0).all(dim=1) if per_unit is not None else (x <= 0)
            rec.dead_fraction = dead.float().mean().item()
        if "unit_percentiles" in self.stats and per_unit is not None:
            q = torch.tensor(_QUANTILES, dtype=torch.float32, device=x.device)
            rec.unit_percentiles = torch.quantile(per_unit.float(), q, dim=1).T.tolist()
        if "variance_shift" in self.stats:
            rec.variance_shift = _variance_shift(self._modules[name], x)
        self._warn_non_finite(rec, _SUMMARY_FIELDS)
        return rec

    def _warn_non_finite(self, rec: LayerRecord, fields: tuple[str, ...]) -> None:
        """Warn once per layer when a statistic of ``rec`` is NaN or inf (the record itself stays as it is)."""
        if rec.layer in self._warned:
            return
        bad = [f for f in fields if not _finite(getattr(rec, f))]
        if bad:
            self._warned.add(rec.layer)
            warnings.warn(
                f"ActivationRecorder: layer {rec.layer!r} recorded a non-finite {', '.join(bad)} at step {rec.step} "
                f"(a NaN or inf input or gradient); recorded as is, and this layer's later non-finite statistics "
                f"are not reported again",
                RuntimeWarning, stacklevel=2,
            )

    def _watch_weight(self, name: str):
        def hook(grad: Tensor) -> None:
            if self._paused:
                return
            rec = self._latest.get(name)
            if rec is not None and rec.step == self.step:
                rec.weight_grad_norm = float(torch.linalg.vector_norm(grad.detach().float()))
                self._warn_non_finite(rec, ("weight_grad_norm",))

        return hook

    # -- context manager -----------------------------------------------------------------------------------------
    def __enter__(self) -> ActivationRecorder:
        if self._handles:
            raise RuntimeError("ActivationRecorder: already recording; a recorder is entered once at a time")
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_root_forward))
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_pre_hook(self._watch(name)))
                weight = getattr(module, "weight", None)
                if self.grads and isinstance(weight, nn.Parameter) and weight.requires_grad:
                    self._handles.append(weight.register_hook(self._watch_weight(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (the ``with`` block does this on exit, also on error)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._sampled = False
        self._latest.clear()

    # -- probes outside the training stream ---------------------------------------------------------------------
    @contextlib.contextmanager
    def paused(self) -> Iterator[ActivationRecorder]:
        """Inside this block no forward counts as a training step and nothing is recorded (a probe's own passes
        must not shift the step count nor the gradient norms of the training step)."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    def observe(self, x: Tensor, *, step: int | None = None, train: bool = False) -> list[LayerRecord]:
        """Run the model once on the probe input ``x`` (no gradient) and record every watched layer's input.

        ``train=False``: in eval mode (running statistics, no dropout). ``train=True``: in training mode, i.e.
        the distribution the next layer sees while it trains (batch statistics, dropout, injected noise); every
        buffer of the model (running statistics, counters) and torch's random state are put back afterwards, so
        the probe leaves the training run unchanged. The records carry ``step`` (default: the current training
        step), are appended to :attr:`records` and returned. Works inside or outside the ``with`` block.
        """
        label = self.step if step is None else int(step)
        found: list[LayerRecord] = []

        def watch(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                if args and isinstance(args[0], Tensor):
                    found.append(self._summarize(name, args[0], label))
            return hook

        modes = [(m, m.training) for m in self.model.modules()]
        saved = {k: b.detach().clone() for k, b in self.model.named_buffers()} if train else {}
        rng = torch.get_rng_state() if train else None
        handles = [m.register_forward_pre_hook(watch(n)) for n, m in self._modules.items()]
        try:
            with self.paused(), torch.no_grad():
                self.model.train(train)
                self.model(x)
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes:
                m.train(mode)
            if rng is not None:  # a training-mode probe: put back what its passes changed
                with torch.no_grad():
                    buffers = dict(self.model.named_buffers())
                    for k, v in saved.items():
                        buffers[k].copy_(v)
                torch.set_rng_state(rng)
        self.records.extend(found)
        return found

    # -- reading -------------------------------------------------------------------------------------------------
    def series(self, layer: str, field: str) -> list[tuple[int, float | None]]:
        """``[(step, value), ...]`` of one field of one layer, in step order."""
        if field not in LayerRecord.__dataclass_fields__ or field in ("step", "layer"):
            raise ValueError(f"ActivationRecorder.series: unknown field {field!r}; expected one of "
                             f"{[f for f in LayerRecord.__dataclass_fields__ if f not in ('step', 'layer')]}")
        if layer not in self._modules:
            raise ValueError(f"ActivationRecorder.series: layer {layer!r} is not watched; watched: {self.layers}")
        return [(r.step, getattr(r, field)) for r in self.records if r.layer == layer]

    def rows(self) -> list[dict]:
        """Every record as a plain dict (for a table, a DataFrame or the lab's store)."""
        return [asdict(r) for r in self.records]


_SUMMARY_FIELDS = ("mean", "std", "p15", "p50", "p85", "dead_fraction", "unit_percentiles", "variance_shift")


def _finite(value) -> bool:
    """None (not computed) counts as finite; a list (unit percentiles) is finite when all its numbers are."""
    if value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return math.isfinite(value)


def _variance_shift(module: nn.Module, x: Tensor) -> float | None:
    """mean_c |log(unbiased Var_c(x) / running_var_c)| for a batch norm with one running variance per channel."""
    from ._common import as_batch_norm, has_running_stats, is_batch_norm, norm_axis

    if not (is_batch_norm(module) and has_running_stats(module)):
        return None
    running_var = as_batch_norm(module).running_var
    if running_var.ndim != 1:
        return None
    axis = norm_axis(module) % x.ndim
    dims = [d for d in range(x.ndim) if d != axis]
    var = x.double().var(dim=dims, correction=1)
    ratio = var / running_var.double().clamp_min(1e-12)
    return float(ratio.clamp_min(1e-12).log().abs().mean())
