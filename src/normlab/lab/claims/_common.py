"""Shared pieces of the claim experiments: the lab's data, small models built from ``make_norm`` specs, training
through the lab's engine with probe hooks, and the mean-and-band plot.

The claims need instruments a generic model does not expose (the input of each nonlinearity, dead units, noise
injected after BN), so the MLP here keeps its pre-activations on request; training itself is
:func:`normlab.lab.train.train` with callbacks. Everything is deterministic given the seed: the model is built
after ``torch.manual_seed``, the split and the mini-batch order are seeded by the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .base import MissingDependency

# ---------------------------------------------------------------------------------------------------------- data


@lru_cache(maxsize=4)
def _mnist5k(split_seed: int):
    from ..data import load_mnist5k

    return load_mnist5k(val_fraction=0.2, split_seed=split_seed)


def digits(seed: int, n_train: int | None = None):
    """The lab's embedded MNIST 5k subset (:func:`normlab.lab.data.load_mnist5k`): stratified 4,000/1,000
    train/validation split seeded by ``seed``; ``n_train`` keeps a seeded random subset of the training split."""
    import dataclasses

    ds = _mnist5k(seed)
    # The split comes grouped by class; shuffle both parts (seeded) so that any slice -- the training subset
    # evaluated in eval mode, the step-0 probe batch, small evaluation batches -- is a mix of classes.
    gen = torch.Generator().manual_seed(10_000 + seed)
    keep = torch.randperm(len(ds.y_train), generator=gen)[:n_train]
    val = torch.randperm(len(ds.y_val), generator=gen)
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep], x_val=ds.x_val[val],
                               y_val=ds.y_val[val])


# -------------------------------------------------------------------------------------------------------- models


def norm(spec: str, num_features: int, **kw) -> nn.Module:
    """A normalization layer from a ``make_norm`` spec (``"bn"``, ``"ln"``, ``"gbn:16"``, ..., ``"none"``)."""
    try:
        from ...nn import make_norm
    except ImportError as exc:
        raise MissingDependency(f"normlab.nn.make_norm (the family layers) is not available ({exc})") from exc
    try:
        return make_norm(spec, num_features, **kw)
    except NotImplementedError as exc:
        raise MissingDependency(f"make_norm({spec!r}): {exc}") from exc


ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Fully connected net: ``depth`` blocks of Linear -> [norm] -> activation (-> dropout), then Linear.

    ``order="norm-act"`` puts the norm before the nonlinearity (Ioffe & Szegedy 2015, Sec. 3.2);
    ``"act-norm"`` after it (the seed article's Keras model). ``dropout_pos`` places dropout ``"before"`` the
    norm or ``"after"`` the activation of every block, or ``"last"``: only after the last block, i.e. after every
    norm (Li et al. 2019's recommendation). ``init_std`` replaces the default init of
    every Linear weight by N(0, init_std^2) (``init_gain`` instead scales the default Kaiming-uniform init).
    The pre-activations (the norm's output, the activation's input) of block i are kept in ``self.pre[i]`` when
    ``self.keep = True``.
    """

    def __init__(self, in_features: int, widths: Sequence[int], num_classes: int = 10, *, norm_spec: str = "none",
                 activation: str = "relu", order: str = "norm-act", dropout: float = 0.0, dropout_pos: str = "after",
                 init_std: float | None = None, init_gain: float = 1.0, norm_kw: dict | None = None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if order not in ("norm-act", "act-norm"):
            raise ValueError(f"MLP: order must be 'norm-act' or 'act-norm', got {order!r}")
        if dropout_pos not in ("before", "after", "last"):
            raise ValueError(f"MLP: dropout_pos must be 'before', 'after' or 'last', got {dropout_pos!r}")
        self.order, self.dropout_pos = order, dropout_pos
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.acts = nn.ModuleList()
        self.drops = nn.ModuleList()
        prev = in_features
        for i, w in enumerate(widths):
            self.linears.append(nn.Linear(prev, w))
            self.norms.append(norm(norm_spec, w, **(norm_kw or {})))
            self.acts.append(ACTIVATIONS[activation]())
            use = dropout > 0 and (dropout_pos != "last" or i == len(widths) - 1)
            self.drops.append(nn.Dropout(dropout) if use else nn.Identity())
            prev = w
        self.head = nn.Linear(prev, num_classes)
        for lin in [*self.linears, self.head]:
            if init_std is not None:
                nn.init.normal_(lin.weight, 0.0, init_std)
                nn.init.zeros_(lin.bias)
            elif init_gain != 1.0:
                with torch.no_grad():
                    lin.weight.mul_(init_gain)
        self.keep = False
        self.pre: list[Tensor] = []
        self.post: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        self.pre, self.post = [], []
        for lin, nrm, act, drop in zip(self.linears, self.norms, self.acts, self.drops):
            x = lin(x)
            if self.dropout_pos == "before":
                x = drop(x)
            if self.order == "norm-act":
                x = nrm(x)
                if self.keep:
                    self.pre.append(x)
                x = act(x)
            else:
                if self.keep:
                    self.pre.append(x)
                x = nrm(act(x))
            if self.keep:
                self.post.append(x)
            if self.dropout_pos in ("after", "last"):
                x = drop(x)
        return self.head(x)


def seed_mlp(norm_spec: str) -> MLP:
    """The seed article's Keras model: Flatten -> Dense(128, ReLU) -> [BN] -> Dense(10)."""
    return MLP(784, [128], norm_spec=norm_spec, activation="relu", order="act-norm")


def ioffe_mlp(norm_spec: str, init_std: float = 0.1) -> MLP:
    """Ioffe & Szegedy 2015, Fig. 1: three hidden layers of 100 sigmoid units, BN before each sigmoid,
    small Gaussian initial weights."""
    return MLP(784, [100, 100, 100], norm_spec=norm_spec, activation="sigmoid", order="norm-act", init_std=init_std)


# ------------------------------------------------------------------------------------------------------ training


@dataclass
class History:
    steps: list[int]
    train_loss: list[float]  # mean training-mode mini-batch loss since the previous evaluation (Keras' "loss")
    val_loss: list[float]
    val_acc: list[float]
    train_acc: list[float]  # eval-mode accuracy on (a fixed subset of) the training set
    train_eval_loss: list[float]  # eval-mode loss on the same training subset
    diverged_at: int | None
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode (the lab's evaluation), restoring the training flag."""
    from ..train import evaluate as lab_evaluate

    return lab_evaluate(model, x, y, batch)


OPTIMIZERS = {"sgd": ("sgd", 0.0), "momentum": ("sgd", 0.9), "adam": ("adam", 0.0)}


def train(model: nn.Module, data, *, steps: int, batch_size: int, lr: float, optimizer: str = "sgd",
          eval_every: int = 50, seed: int = 0, params=None,
          on_step: Callable[[int, nn.Module, Tensor, Tensor], None] | None = None,
          train_eval_size: int = 1000, norm_spec: str = "custom") -> History:
    """Train ``model`` with the lab's engine (:func:`normlab.lab.train.train`) and return its curves.

    ``optimizer``: ``"sgd"``, ``"momentum"`` (SGD, momentum 0.9) or ``"adam"``. ``params``: train only these
    (every other parameter is frozen). ``on_step(step, model, x, y)`` is called with the model after ``step``
    updates: once before training (step 0, on the first ``batch_size`` training examples) and after every
    update (on that update's mini-batch). Each evaluation also measures eval-mode loss and accuracy on the first
    ``train_eval_size`` training examples. A diverged run (non-finite loss) returns with ``diverged_at`` set.
    """
    from ..train import Callback, TrainConfig
    from ..train import train as lab_train

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"train: optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if params is not None:
        keep = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
    opt, momentum = OPTIMIZERS[optimizer]
    config = TrainConfig(data="mnist5k", split_seed=seed, model="mlp", norm=norm_spec, optimizer=opt, lr=lr,
                         momentum=momentum, batch_size=batch_size, steps=steps, eval_every=eval_every, seed=seed,
                         drop_last=True)
    xt, yt = data.x_train[:train_eval_size], data.y_train[:train_eval_size]
    extra: dict[int, tuple[float, float]] = {}

    class _Eval(Callback):
        def on_eval(self, state, rec) -> None:
            extra[int(rec["step"])] = evaluate(state.model, xt, yt)

    class _Probe(_Eval):
        def on_train_start(self, state) -> None:
            on_step(0, state.model, data.x_train[:batch_size], data.y_train[:batch_size])

        def on_step(self, state, metrics) -> None:
            on_step(int(metrics["step"]), state.model, state.x, state.y)

    hooks = _Eval() if on_step is None else _Probe()  # the engine skips per-step calls when on_step is not set
    result = lab_train(config, model=model, dataset=data, callbacks=[hooks], progress="none",
                       record_grad_norm=False)
    ev = result.evals
    fin = lambda v: v if math.isfinite(v) else math.nan  # noqa: E731
    return History(
        steps=[int(e["step"]) for e in ev], train_loss=[fin(e["train_loss"]) for e in ev],
        val_loss=[fin(e["val_loss"]) for e in ev], val_acc=[float(e["val_acc"]) for e in ev],
        train_acc=[extra[int(e["step"])][1] for e in ev], train_eval_loss=[fin(extra[int(e["step"])][0]) for e in ev],
        diverged_at=result.diverged_step, seconds=result.wall_time)


def steps_to_reach(steps: Sequence[int], values: Sequence[float], target: float, cap: int) -> int:
    """First evaluated step whose value reaches ``target``; ``cap`` (the step budget) when it never does —
    a censored value, so a run that never gets there counts as needing at least the whole budget."""
    for s, v in zip(steps, values):
        if v >= target:
            return int(s)
    return int(cap)


# --------------------------------------------------------------------------------------------------------- plots

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def new_figure(ncols: int = 1, width: float = 5.2, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width * ncols, height), dpi=80, layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def band(ax, x: Sequence[float], runs: Sequence[Sequence[float]], label: str, color: str, style: str = "-",
         marker: str | None = None) -> None:
    """Mean over seeds as a line, min..max over seeds as a shaded band (runs may differ in length: truncated to
    the shortest, e.g. after a divergence)."""
    runs = [list(r) for r in runs if len(r)]
    if not runs:
        return
    n = min(min(len(r) for r in runs), len(x))
    arr = np.array([r[:n] for r in runs], dtype=np.float64)
    xs = np.asarray(x[:n], dtype=np.float64)
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, axis=0)
        lo, hi = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
    ax.plot(xs, mean, style, color=color, label=label, marker=marker, markersize=3)
    if arr.shape[0] > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0)


def per_seed(results: Sequence[dict], arm: str, key: str) -> list[list[float]]:
    return [r[key] for r in results if r["arm"] == arm]


def mean(values) -> float:
    vals = list(values.values()) if isinstance(values, dict) else list(values)
    return float(np.mean(vals)) if vals else math.nan


def seed_table(out, metrics: Sequence[str], title: str = "Per-seed values"):
    """A table of every (metric, arm) with its per-seed values and mean, from ``out.metrics``."""
    from .base import Table

    rows = []
    for metric in metrics:
        for arm, vals in out.metrics.get(metric, {}).items():
            rows.append((metric, arm, ", ".join(f"{vals[s]:.4g}" for s in sorted(vals)), f"{mean(vals):.4g}"))
    return Table(title, ("metric", "arm", "per seed", "mean"), tuple(rows))


def final_accuracy(result: dict) -> float:
    """Last validation accuracy of a run; a diverged run keeps its last evaluated accuracy (usually chance)."""
    return float(result["val_acc"][-1])


def unavailable(spec: str) -> str | None:
    """None if ``norm(spec, ...)`` can be built here, else the reason (a family layer not merged, ...)."""
    try:
        norm(spec, 8)
    except MissingDependency as exc:
        return str(exc)
    return None
