"""The training engine: one function, :func:`train`, driven by a :class:`TrainConfig`.

Data stays in memory as tensors; each epoch draws one seeded permutation, gathers the training set once in that
order, and then every minibatch is a slice (a view) of it, so the loop costs what a hand-written loop costs.
Per optimizer step it records loss, accuracy, gradient norm, learning rate and wall time; every ``eval_every``
steps (default: at every epoch end) it evaluates on the validation split. A non-finite loss, gradient norm or
validation loss ends the run as *diverged*, keeping the metrics of the last good step; it never raises.

Determinism: the same config and seed give the same run (``torch.manual_seed(seed)`` before the model is built,
a separate seeded generator for the order of examples; the data split uses ``split_seed``).

Distributed: when ``torch.distributed`` is initialized (or ``WORLD_SIZE > 1`` in the environment, as under
``torchrun``; the gloo backend is used on CPU), the model is wrapped in DistributedDataParallel and every global
minibatch of ``batch_size`` is split into equal contiguous shards, one per rank; step metrics are averaged
over ranks, and the buffers (BN running statistics) are broadcast from rank 0 before every evaluation, as DDP does
before every forward, so every rank returns the same :class:`RunResult`. Batch statistics are each rank's own
(unless ``sync_bn=True``: then they are pooled over ranks and a k-process run equals a one-process run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Dataset, load_dataset
from .models import build_model

__all__ = [
    "TrainConfig",
    "RunResult",
    "TrainState",
    "Callback",
    "train",
    "make_optimizer",
    "apply_trainable",
    "lr_at",
    "evaluate",
    "cached_dataset",
    "OPTIMIZERS",
    "SCHEDULES",
    "STEP_COLUMNS",
    "EVAL_COLUMNS",
]

log = logging.getLogger("normlab.lab")

OPTIMIZERS = ("adam", "sgd")
TRAINABLE = ("all", "norms", "head", "random")
SCHEDULES = ("constant", "step", "exponential", "cosine")
STEP_COLUMNS = ("step", "epoch", "loss", "acc", "grad_norm", "lr", "time")
EVAL_COLUMNS = ("step", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "time")


@dataclass
class TrainConfig:
    """Everything that determines a run's result (its hash is the run key in the store).

    Data: ``data`` names a set of :func:`normlab.lab.data.load_dataset`, ``data_args`` are its keywords (e.g.
    ``{"root": "~/mnist"}``), ``split_seed`` seeds the stratified split.
    Model: ``model`` names a builder of :mod:`normlab.lab.models`, ``norm`` is the ``make_norm`` spec,
    ``model_args`` the builder's other options (depth, width, init, init_scale, dropout, ...).
    Optimization: ``optimizer`` "adam" (``adam_eps``, torch's default 1e-8; Keras' is 1e-7) | "sgd" (``momentum``,
    ``nesterov``), ``weight_decay``, ``grad_clip``
    (max global L2 norm, 0 = off). Learning rate ``lr`` with ``schedule``:
      constant; step: ``lr * lr_decay ** (step // lr_decay_every)``; exponential: ``lr * lr_decay **
      (step / lr_decay_every)``; cosine: ``lr * (1 + cos(pi * step / total)) / 2``; all after a linear warm-up
      over ``warmup_steps``.
    Length: ``epochs`` passes over the training split, or exactly ``steps`` optimizer steps when ``steps > 0``.
    ``batch_size`` is the global batch; ``drop_last`` drops a final short batch (a final batch of one example
    is always dropped: batch statistics of one example are undefined). ``eval_every`` = k evaluates every k
    steps (0 = at the end of every epoch); evaluation also runs at step 0 and at the end.
    Distributed: ``sync_bn=True`` pools batch statistics over all processes
    (``normlab.nn.convert_sync_batchnorm``), so a run on k processes equals one process on the global batch; it
    changes nothing in a single process.
    ``trainable``: which parameters the optimizer updates, "all", "norms" (the normalization layers' affine
    parameters only; Frankle et al. 2020), "head" (the last Linear layer only: a linear probe of the features) or
    "random" (as many entries as "norms" would train, chosen at random, seeded by ``seed``, among the other
    parameters' entries: the control of "norms"; needs ``weight_decay=0``); the others stay at their initial
    values.
    ``batch_classes``: 0 draws every epoch's batches from one uniform permutation; k >= 1 makes batches of few
    classes (:func:`normlab.lab.data.few_class_order`: each batch is k chunks of ``batch_size / k`` examples of
    one class each; needs ``batch_size`` divisible by k): the "not ideally constructed" batches of Lian & Liu 2019.
    ``probes``: what to measure besides the curves, name -> spec (see :mod:`normlab.lab.probes`); the results are
    ``RunResult.probes[name]``.
    ``reset_stats_every_epoch``: at the start of every epoch, ``reset_running_stats()`` on every module that has
    running statistics (the BatchNorm family, BLN), so with ``momentum=None`` (a cumulative average) the
    population statistics used at an evaluation are the average over the current epoch's batches: Batch Layer
    Normalization's per-epoch statistics (Ziaee & Cano 2022). An evaluation right after a reset, before any batch
    of the new epoch, cannot happen (evaluations follow a step).
    """

    data: str = "mnist5k"
    data_args: dict = field(default_factory=dict)
    split_seed: int = 0
    model: str = "seed_mlp"
    norm: str = "bn"
    model_args: dict = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    adam_eps: float = 1e-8
    nesterov: bool = False
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    schedule: str = "constant"
    lr_decay: float = 0.1
    lr_decay_every: int = 1000
    warmup_steps: int = 0
    batch_size: int = 32
    epochs: int = 1
    steps: int = 0
    drop_last: bool = False
    eval_every: int = 0
    eval_batch_size: int = 1000
    seed: int = 0
    sync_bn: bool = False
    trainable: str = "all"
    batch_classes: int = 0
    probes: dict = field(default_factory=dict)
    reset_stats_every_epoch: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the allowed values and the value received."""

        def bad(key: str, allowed: str) -> None:
            raise ValueError(f"TrainConfig: {key}={getattr(self, key)!r} is not allowed; expected {allowed}")

        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"one of {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"one of {list(SCHEDULES)}")
        if self.trainable not in TRAINABLE:
            bad("trainable", f"one of {list(TRAINABLE)}")
        for key in ("batch_size", "eval_batch_size", "lr_decay_every"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(key, "an int >= 1")
        for key in ("epochs", "steps", "eval_every", "warmup_steps", "seed", "split_seed", "batch_classes"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(key, "an int >= 0")
        if self.epochs == 0 and self.steps == 0:
            bad("epochs", "an int >= 1 when steps == 0 (a run needs a length)")
        for key in ("nesterov", "drop_last", "sync_bn", "reset_stats_every_epoch"):
            if not isinstance(getattr(self, key), bool):
                bad(key, "true or false")
        for key in ("lr", "momentum", "weight_decay", "grad_clip", "lr_decay"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                bad(key, "a finite number >= 0")
        v = self.adam_eps
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            bad("adam_eps", "a finite number > 0")
        if self.batch_classes and self.batch_size % self.batch_classes:
            bad("batch_classes", f"a divisor of batch_size={self.batch_size} (or 0: uniform batches)")
        if self.trainable == "random" and self.weight_decay:
            bad("weight_decay", "0 with trainable='random' (decay would move the entries that must stay frozen)")
        if not isinstance(self.norm, str):
            bad("norm", "a make_norm spec string such as 'bn' or 'none'")
        for key in ("data_args", "model_args"):
            if not isinstance(getattr(self, key), dict):
                bad(key, "a table (dict) of keyword arguments")
        from .probes import validate_probes

        validate_probes(self.probes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {unknown}; expected some of {sorted(names)}")
        return cls(**d)

    def key(self) -> str:
        """Run key: the first 16 hex digits of the SHA-256 of the canonical JSON of the whole config."""
        import hashlib

        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunResult:
    """What a run produced.

    ``step_rows``: one tuple per optimizer step, columns :data:`STEP_COLUMNS` (step counts from 1, ``time`` is
    seconds since the start). ``evals``: dicts with :data:`EVAL_COLUMNS` (``train_*`` average the steps since the
    previous evaluation; step 0 is the initial model). ``final``: the last good evaluation plus ``test_loss`` /
    ``test_acc`` when the data has a test split, and ``steps``. ``diverged``: a non-finite loss/gradient/validation
    loss stopped the run at ``diverged_step``; everything recorded before it is kept. ``model`` is the trained
    module (not stored). ``probes``: what the config's probes measured, name -> JSON-able result (see
    :mod:`normlab.lab.probes`).
    """

    config: TrainConfig
    step_rows: list[tuple]
    evals: list[dict]
    final: dict[str, float]
    diverged: bool = False
    diverged_step: int | None = None
    wall_time: float = 0.0
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    probes: dict = field(default_factory=dict)

    @property
    def steps(self) -> list[dict]:
        return [dict(zip(STEP_COLUMNS, r)) for r in self.step_rows]

    def history(self, column: str) -> list[float]:
        """One column of the per-step metrics, e.g. ``history("loss")``."""
        if column not in STEP_COLUMNS:
            raise ValueError(f"RunResult.history: unknown column {column!r}; expected one of {list(STEP_COLUMNS)}")
        i = STEP_COLUMNS.index(column)
        return [r[i] for r in self.step_rows]

    @property
    def key(self) -> str:
        return self.config.key()


@dataclass
class TrainState:
    """What callbacks see. ``x``/``y`` are the current (local) minibatch; set ``stop = True`` to end the run."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    step: int = 0
    epoch: int = 0
    x: Tensor | None = None
    y: Tensor | None = None
    stop: bool = False
    rank: int = 0
    world_size: int = 1


class Callback:
    """Hook points of :func:`train`; override any subset. A plain callable is used as ``on_step``.

    ``on_step`` runs after the optimizer step with that step's metrics (a dict of :data:`STEP_COLUMNS`);
    ``on_eval`` after each evaluation. Attach e.g. an activation recorder in ``on_train_start`` and detach it in
    ``on_train_end`` (which also runs when the run diverges or raises).
    """

    def on_train_start(self, state: TrainState) -> None: ...

    def on_step(self, state: TrainState, metrics: dict) -> None: ...

    def on_eval(self, state: TrainState, metrics: dict) -> None: ...

    def on_train_end(self, state: TrainState, result: RunResult | None) -> None: ...


class _FnCallback(Callback):
    def __init__(self, fn: Callable[[TrainState, dict], None]) -> None:
        self.fn = fn

    def on_step(self, state: TrainState, metrics: dict) -> None:
        self.fn(state, metrics)


class _ProbeCallback(Callback):
    """Drives :class:`normlab.lab.probes.Prober` from the engine's hook points."""

    def __init__(self, prober) -> None:
        self.prober = prober

    def on_train_start(self, state: TrainState) -> None:
        self.prober.start()

    def on_step(self, state: TrainState, metrics: dict) -> None:
        self.prober.step(state.step, state.x, state.y)

    def on_eval(self, state: TrainState, metrics: dict) -> None:
        self.prober.on_eval(int(metrics["step"]))


def apply_trainable(net: nn.Module, which: str, seed: int = 0) -> nn.Module:
    """Freeze every parameter except the normalization layers' (``"norms"``) or the last Linear's (``"head"``);
    ``"all"`` changes nothing; ``"random"`` trains as many entries as ``"norms"`` would, drawn uniformly (seeded
    by ``seed``, independent of torch's global generator) among the entries of the non-normalization parameters,
    by a gradient mask (a masked entry's gradient is exactly 0, so Adam and SGD with momentum leave it unchanged;
    the normalization parameters are frozen). Returns ``net``; ValueError when the model has no such parameter."""
    from ..tools._common import is_norm

    if which == "all":
        return net
    if which == "random":
        return _random_trainable(net, seed)
    if which == "norms":
        keep = {id(p) for m in net.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    else:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        keep = {id(p) for p in linears[-1].parameters()} if linears else set()
    if not keep:
        raise ValueError(f"train: trainable={which!r} but the model has no such parameters")
    for p in net.parameters():
        p.requires_grad_(id(p) in keep)
    return net


def _random_trainable(net: nn.Module, seed: int) -> nn.Module:
    from ..tools._common import is_norm

    norm_ids = {id(p) for m in net.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    params = list(net.parameters())
    n = sum(p.numel() for p in params if id(p) in norm_ids)
    others = [p for p in params if id(p) not in norm_ids]
    total = sum(p.numel() for p in others)
    if n == 0 or total < n:
        raise ValueError(f"train: trainable='random' needs normalization parameters to count ({n}) and at least as "
                         f"many other parameter entries ({total})")
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=gen)[:n]] = True
    offset = 0
    for p in params:
        if id(p) in norm_ids:
            p.requires_grad_(False)
            continue
        mask = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        p.requires_grad_(bool(mask.any()))
        if mask.any():
            m = mask.to(p.dtype)
            p.register_hook(lambda g, m=m: g * m)
    return net


# ------------------------------------------------------------------------------------------------------ pieces
def _freeze(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


@lru_cache(maxsize=4)
def _cached(name: str, split_seed: int, frozen_args: str) -> Dataset:
    return load_dataset(name, split_seed=split_seed, **json.loads(frozen_args))


def cached_dataset(config: TrainConfig) -> Dataset:
    """The config's data set, loaded once per process (runs of a sweep share it; the engine never mutates it)."""
    return _cached(config.data, config.split_seed, _freeze(config.data_args))


def make_optimizer(config: TrainConfig, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )


def lr_at(config: TrainConfig, step: int, total: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``; see :class:`TrainConfig`."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    s = step - config.warmup_steps
    if config.schedule == "step":
        return config.lr * config.lr_decay ** (s // config.lr_decay_every)
    if config.schedule == "exponential":
        return config.lr * config.lr_decay ** (s / config.lr_decay_every)
    if config.schedule == "cosine":
        span = max(total - config.warmup_steps, 1)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(s, span) / span))
    return config.lr


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        loss_sum, correct = 0.0, 0
        for i in range(0, len(y), batch_size):
            logits = model(x[i : i + batch_size])
            yb = y[i : i + batch_size]
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(1) == yb).sum())
        n = max(len(y), 1)
        return loss_sum / n, correct / n
    finally:
        model.train(was_training)


def _grad_norm(params: list[Tensor]) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _dist_setup() -> tuple[int, int]:
    """(rank, world_size); initializes a gloo process group when launched by torchrun with WORLD_SIZE > 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _progress_bar(progress: str, total: int, rank: int):
    if rank != 0 or progress == "none" or (progress == "auto" and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True, mininterval=0.25)


# ------------------------------------------------------------------------------------------------------- train
def _reset_running_stats(net: nn.Module) -> int:
    """``reset_running_stats()`` on every module of ``net`` that tracks running statistics; returns how many."""
    n = 0
    for m in net.modules():
        if callable(getattr(m, "reset_running_stats", None)) and getattr(m, "running_mean", None) is not None:
            m.reset_running_stats()  # type: ignore[operator]
            n += 1
    return n


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    dataset: Dataset | None = None,
    callbacks: Sequence[Callback | Callable] = (),
    progress: str = "auto",
    record_grad_norm: bool = True,
    threads: int | None = None,
) -> RunResult:
    """Train as ``config`` says and return a :class:`RunResult` (diverged runs return, they do not raise).

    ``model``/``dataset`` override the ones the config names (the config is still the run's identity, so pass
    them only when the config describes them). ``progress``: "auto" (a tqdm bar when stderr is a terminal,
    otherwise log lines on the ``normlab.lab`` logger at each evaluation), "bar", or "none". ``threads`` sets
    torch's intra-op thread count for the run (restored afterwards); small models on a busy machine run fastest
    with 1. ``record_grad_norm=False`` skips the per-step gradient norm (recorded as NaN).
    """
    if threads is None:
        return _train(config, model, dataset, callbacks, progress, record_grad_norm)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"train: threads must be an int >= 1 or None, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(config, model, dataset, callbacks, progress, record_grad_norm)
    finally:
        torch.set_num_threads(before)


def _train(config, model, dataset, callbacks, progress, record_grad_norm) -> RunResult:
    if progress not in ("auto", "bar", "none"):
        raise ValueError(f"train: progress={progress!r} is not allowed; expected 'auto', 'bar' or 'none'")
    config.validate()
    cbs = [c if isinstance(c, Callback) else _FnCallback(c) for c in callbacks]
    for c in callbacks:
        if not (isinstance(c, Callback) or callable(c)):
            raise TypeError(f"train: callbacks must be Callback instances or callables, got {type(c).__name__}")
    step_cbs = [c for c in cbs if type(c).on_step is not Callback.on_step]

    rank, world = _dist_setup()
    if config.batch_size % world:
        raise ValueError(f"train: batch_size={config.batch_size} must be divisible by the world size {world}")
    ds = dataset if dataset is not None else cached_dataset(config)
    torch.manual_seed(config.seed)
    net = model if model is not None else build_model(
        config.model, ds.input_shape, ds.num_classes, norm=config.norm, **config.model_args
    )
    apply_trainable(net, config.trainable, config.seed)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params)
    fwd: nn.Module = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if config.sync_bn:
            from ..nn import convert_sync_batchnorm

            net = convert_sync_batchnorm(net)
        fwd = DistributedDataParallel(net)
    order_gen = torch.Generator().manual_seed(config.seed)

    x_all, y_all = ds.x_train, ds.y_train
    n = len(y_all)
    bs = config.batch_size
    full, rest = divmod(n, bs)
    per_epoch = full + (1 if rest > 1 and not config.drop_last else 0)
    if per_epoch == 0:
        raise ValueError(f"train: the training split has {n} examples, fewer than one batch of {bs}")
    total = config.steps if config.steps > 0 else config.epochs * per_epoch
    varying_lr = config.schedule != "constant" or config.warmup_steps > 0

    state = TrainState(config, net, optimizer, ds, rank=rank, world_size=world)
    rows: list[tuple] = []
    evals: list[dict] = []
    diverged_step: int | None = None
    bar = _progress_bar(progress, total, rank)
    result: RunResult | None = None
    t0 = time.perf_counter()
    since_eval: list[float] = [0.0, 0.0, 0]  # loss sum, acc sum, steps since the last evaluation

    def run_eval(step: int, epoch: int) -> bool:
        if world > 1:  # each rank's last forward updated its own running statistics: use rank 0's, as DDP does
            import torch.distributed as dist

            for buf in net.buffers():
                dist.broadcast(buf, 0)
        val_loss, val_acc = evaluate(net, ds.x_val, ds.y_val, config.eval_batch_size) if len(ds.y_val) else (
            float("nan"), float("nan"))
        k = since_eval[2]
        rec = {
            "step": step,
            "epoch": epoch,
            "train_loss": since_eval[0] / k if k else float("nan"),
            "train_acc": since_eval[1] / k if k else float("nan"),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "time": time.perf_counter() - t0,
        }
        since_eval[:] = [0.0, 0.0, 0]
        if len(ds.y_val) and not math.isfinite(val_loss):
            return False
        evals.append(rec)
        for c in cbs:
            c.on_eval(state, rec)
        if bar is None and rank == 0:
            log.info("step %d epoch %d train_loss %.4f val_loss %.4f val_acc %.4f", step, epoch, rec["train_loss"],
                     val_loss, val_acc)
        return True

    prober = None
    if config.probes:
        from .probes import Prober

        prober = Prober(config, net, ds, evaluate)
        cbs.append(_ProbeCallback(prober))
        step_cbs.append(cbs[-1])
    for c in cbs:
        c.on_train_start(state)
    try:
        net.train()
        run_eval(0, 0)
        step, epoch = 0, 0
        while step < total and diverged_step is None and not state.stop:
            if config.batch_classes:
                from .data import few_class_order

                perm = few_class_order(y_all, config.batch_size, config.batch_classes, order_gen)
            else:
                perm = torch.randperm(n, generator=order_gen)
            xs, ys = x_all[perm], y_all[perm]  # one gather per epoch; the batches below are views
            if config.reset_stats_every_epoch:
                _reset_running_stats(net)
            epoch += 1
            state.epoch = epoch
            for b in range(per_epoch):
                if step >= total or state.stop:
                    break
                lo = b * bs
                hi = min(lo + bs, n)
                if world > 1:
                    lo, hi = lo + rank * ((hi - lo) // world), lo + (rank + 1) * ((hi - lo) // world)
                xb, yb = xs[lo:hi], ys[lo:hi]
                if varying_lr:
                    lr = lr_at(config, step, total)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                else:
                    lr = config.lr
                optimizer.zero_grad(set_to_none=True)
                logits = fwd(xb)
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                if config.grad_clip > 0:
                    gnorm_t = nn.utils.clip_grad_norm_(params, config.grad_clip)
                elif record_grad_norm:
                    gnorm_t = _grad_norm(params)
                else:
                    gnorm_t = None
                correct_t = (logits.detach().argmax(1) == yb).sum()
                if world > 1:
                    import torch.distributed as dist

                    packed = torch.stack([loss.detach().double(), correct_t.double() / len(yb)])
                    dist.all_reduce(packed)
                    loss_v, acc_v = (packed / world).tolist()
                else:
                    loss_v, acc_v = loss.item(), correct_t.item() / len(yb)
                gnorm = gnorm_t.item() if gnorm_t is not None else float("nan")
                step += 1
                if not math.isfinite(loss_v) or (gnorm_t is not None and not math.isfinite(gnorm)):
                    diverged_step = step
                    break
                optimizer.step()
                state.step = step
                row = (step, epoch, loss_v, acc_v, gnorm, lr, time.perf_counter() - t0)
                rows.append(row)
                since_eval[0] += loss_v
                since_eval[1] += acc_v
                since_eval[2] += 1
                if step_cbs:
                    state.x, state.y = xb, yb
                    metrics = dict(zip(STEP_COLUMNS, row))
                    for c in step_cbs:
                        c.on_step(state, metrics)
                if bar is not None:
                    bar.update(1)
                    if step % 50 == 0:
                        bar.set_postfix(loss=f"{loss_v:.4f}", epoch=epoch, refresh=False)
                if config.eval_every and step % config.eval_every == 0 and step < total:
                    if not run_eval(step, epoch):
                        diverged_step = step
                        break
            if diverged_step is None and not config.eval_every and step < total and not state.stop:
                if not run_eval(step, epoch):
                    diverged_step = step
        if diverged_step is None and (not evals or evals[-1]["step"] != step):
            if not run_eval(step, epoch):
                diverged_step = step

        final = {k: v for k, v in evals[-1].items() if k not in ("time",)} if evals else {}
        final["steps"] = rows[-1][0] if rows else 0
        if diverged_step is None and len(ds.y_test):
            final["test_loss"], final["test_acc"] = evaluate(net, ds.x_test, ds.y_test, config.eval_batch_size)
        probes = prober.finish(state.step, diverged_step) if prober is not None else {}
        result = RunResult(
            config, rows, evals, final, diverged_step is not None, diverged_step, time.perf_counter() - t0, net,
            probes,
        )
        return result
    finally:
        if prober is not None:
            prober.close()
        if bar is not None:
            bar.close()
        for c in cbs:
            c.on_train_end(state, result)
