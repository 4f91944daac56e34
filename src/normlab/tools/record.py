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

A step is one forward call of the root model in training mode; every ``every``-th step is sampled (steps
0, every, 2 * every, ...). Eval-mode forward calls are neither counted nor recorded. Hooks exist only inside the
``with`` block, and outside sampled steps they return at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from .. import _validate

__all__ = ["ActivationRecorder", "LayerRecord", "ACTIVATIONS"]

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
)


@dataclass
class LayerRecord:
    step: int
    layer: str
    mean: float
    std: float
    p15: float
    p50: float
    p85: float
    dead_fraction: float
    grad_norm: float | None = None
    weight_grad_norm: float | None = None


class ActivationRecorder:
    """Context manager recording per-layer activation statistics on sampled training steps.

    ``modules``: names of the modules to watch (their inputs are recorded); by default every activation-function
    module of :data:`ACTIVATIONS` (functional calls such as ``torch.relu`` inside a forward are invisible to hooks:
    name the module after which they come instead). ``every``: record one step in ``every``. ``max_values``:
    values used for the percentiles (``seed`` seeds their draw). ``grads``: also record gradient norms.

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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ActivationRecorder: expected a torch.nn.Module, got {type(model).__name__}")
        _validate.check_positive_int(every, "ActivationRecorder", "every")
        if not isinstance(max_values, int) or max_values < 3:
            raise ValueError(f"ActivationRecorder: max_values must be an int >= 3, got {max_values!r}")
        named = dict(model.named_modules())
        if modules is None:
            names = [n for n, m in named.items() if isinstance(m, ACTIVATIONS)]
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
        self.records: list[LayerRecord] = []
        self.step = -1  # incremented at the start of each training forward of the root model
        self._sampled = False
        self._latest: dict[str, LayerRecord] = {}  # this step's record per layer, for the weight-gradient hooks
        self._handles: list = []
        self._modules = {n: named[n] for n in names}
        self._gen = torch.Generator().manual_seed(seed)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _on_root_forward(self, module: nn.Module, args: tuple) -> None:
        if module.training:
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

                x.register_hook(on_grad)

        return hook

    @torch.no_grad()
    def _summarize(self, name: str, x: Tensor) -> LayerRecord:
        x = x.detach()
        flat = x.reshape(-1).float()
        std, mean = torch.std_mean(flat, correction=0)
        sample = flat
        if flat.numel() > self.max_values:
            # Uniform draws (with replacement, O(max_values)): a stride could alias with the feature-map layout.
            sample = flat[torch.randint(flat.numel(), (self.max_values,), generator=self._gen)]
        q = torch.quantile(sample, torch.tensor([0.15, 0.50, 0.85], device=sample.device))
        if x.ndim >= 2:
            dead = (x <= 0).transpose(0, 1).reshape(x.shape[1], -1).all(dim=1).float().mean()
        else:
            dead = (x <= 0).float().mean()
        values = torch.stack([mean, std, q[0], q[1], q[2], dead]).tolist()
        return LayerRecord(self.step, name, *values)

    def _watch_weight(self, name: str):
        def hook(grad: Tensor) -> None:
            rec = self._latest.get(name)
            if rec is not None and rec.step == self.step:
                rec.weight_grad_norm = float(torch.linalg.vector_norm(grad.detach().float()))

        return hook

    # -- context manager -----------------------------------------------------------------------------------------
    def __enter__(self) -> "ActivationRecorder":
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
