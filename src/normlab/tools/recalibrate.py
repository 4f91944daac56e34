"""Precise batch-norm statistics (PreciseBN; Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

Training leaves each batch norm with an exponential moving average of batch statistics, dominated by the last
few hundred batches and taken while the weights were still moving. PreciseBN replaces it, with the weights fixed,
by the population statistics of the layer's input over many batches B_1..B_K (n_k values per channel each):

    mu_pop      = sum_k n_k mu_k / N                                              (N = sum_k n_k)
    sigma2_pop  = sum_k n_k (sigma2_k + (mu_k - mu_pop)^2) / N                  (pooled moments, exact)

i.e. the mean of the batch means and the variance of all the values seen, with every value weighted equally (for
equal-sized batches: every batch weighted equally). The average batch variance alone would miss the spread of
the batch means. The running variance then gets Bessel's correction N / (N - 1) when the layer keeps an unbiased
running variance (torch's convention, normlab's default) and stays biased otherwise (``running_var_unbiased=False``).
For MABN, which normalizes by the second moment without centring, the running variance becomes the population
second moment sigma2_pop + mu_pop^2.

During the passes every batch norm normalizes with batch statistics, as in training, so that each layer sees the
inputs it saw during training. Accumulation is in float64 with the exact pooled-moments merge (no E[x^2] - E[x]^2).
Synchronized layers (``convert_sync_batchnorm``, ``torch.nn.SyncBatchNorm``) pool the statistics of every process
of their ``process_group`` the same way, so each process's shard of the data counts and all processes end with the
same running statistics; every process must then call ``recalibrate`` (as with the layers' own forward).

Layers with statistics per time step (``TimeStepBatchNorm``, Cooijmans et al. 2017) get one population per step t
and channel: the values of step t of every batch, whether the layer is called on whole sequences or step by step
(``layer(x_t, step=t)`` inside a recurrent cell); steps at or beyond ``max_steps`` keep no statistics of their own
(at inference they reuse step ``max_steps - 1``), as in the layer's own update.

``average="batches"`` replaces the pooled moments by the plain average over the K batches of each batch's own
estimates, the estimator of Cooijmans et al. (Sec. 3, "averaging the minibatch estimates over the training set"):

    mu = (1/K) sum_k mu_k,      sigma2 = (1/K) sum_k s2_k

with ``s2_k`` the batch variance as the layer's running update records it (unbiased, or biased for
``running_var_unbiased=False``; for MABN the batch second moment). It ignores the spread of the batch means.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any

import torch
from torch import Tensor, nn

from .. import _stats
from ._common import as_batch_norm, has_running_stats, is_batch_norm, norm_axis

__all__ = ["recalibrate"]


class _PooledMoments:
    """Per-channel count, mean and biased variance (float64), pooled exactly batch by batch with
    ``_stats.merge_moments`` (the merge ghost batches and synchronized layers use)."""

    def __init__(self) -> None:
        self.stats: _stats.Moments | None = None

    def add(self, x: Tensor, axis: int, mask: Tensor | None = None) -> None:
        x = x.detach().to(torch.float64)
        batch = _stats.moments(x, _stats.reduce_dims(x.ndim, axis), mask=mask)
        count = torch.as_tensor(batch.count, dtype=torch.float64, device=x.device).expand_as(batch.mean)
        if self.stats is None:
            self.stats = _stats.Moments(batch.mean, batch.var, count)
            return
        self.stats = _stats.merge_moments(
            torch.stack([self.stats.mean, batch.mean]), torch.stack([self.stats.var, batch.var]),
            torch.stack([torch.as_tensor(self.stats.count), count]),
        )

    def pool_processes(self, norm: nn.Module, num_features: int) -> None:
        """Pool over the processes of a synchronized layer: each process saw its shard of the data. Every
        process takes part, also one that no batch reached (it brings count 0)."""
        stats = self.stats
        if stats is None:
            zeros = torch.zeros(num_features, dtype=torch.float64, device=as_batch_norm(norm).running_mean.device)
            stats = _stats.Moments(zeros, zeros, zeros)
        self.stats = _stats.all_merge_moments(stats, norm.process_group)

    def seen(self) -> Tensor | None:
        """Per channel: did any value arrive?"""
        return None if self.stats is None else torch.as_tensor(self.stats.count) > 0

    def result(self, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, variance, second moment E[x^2]) per channel; only after a batch was added."""
        assert self.stats is not None, "result() before any batch"
        mean, var, count = self.stats
        return mean, _stats.unbiased(var, count) if unbiased else var, var + mean**2


class _BatchAverage:
    """Per-channel plain average over batches of each batch's mean, variance estimate and second moment (float64);
    a channel that got no value in a batch (all masked) skips that batch."""

    def __init__(self, unbiased: bool) -> None:
        self.unbiased = unbiased
        self.sums: list[Tensor] | None = None  # mean, variance estimate, second moment, number of batches

    def add(self, x: Tensor, axis: int, mask: Tensor | None = None) -> None:
        x = x.detach().to(torch.float64)
        batch = _stats.moments(x, _stats.reduce_dims(x.ndim, axis), mask=mask)
        count = torch.as_tensor(batch.count, dtype=torch.float64, device=x.device).expand_as(batch.mean)
        ok = count > 0
        estimate = _stats.unbiased(batch.var, count) if self.unbiased else batch.var
        parts = [batch.mean, estimate, batch.var + batch.mean**2]
        parts = [torch.where(ok, p, torch.zeros_like(p)) for p in parts] + [ok.to(torch.float64)]
        self.sums = parts if self.sums is None else [a + b for a, b in zip(self.sums, parts)]

    @property
    def stats(self):  # the same "anything seen?" test as _PooledMoments
        return self.sums

    def seen(self) -> Tensor | None:
        return None if self.sums is None else self.sums[3] > 0

    def result(self, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
        assert self.sums is not None, "result() before any batch"
        k = self.sums[3].clamp_min(1)
        return self.sums[0] / k, self.sums[1] / k, self.sums[2] / k


def _synchronized(norm: nn.Module) -> bool:
    """Layers whose statistics are pooled over ``torch.distributed`` processes (normlab's or torch's)."""
    return bool(getattr(norm, "sync_statistics", False)) or isinstance(norm, nn.SyncBatchNorm)


def _centred(norm: nn.Module) -> bool:
    """Whether the layer's running statistics are a mean and a centred variance (its declared ``centred``; torch's
    layers are); else ``running_var`` is the second moment E[x^2] and ``running_mean`` stays 0 (MABN)."""
    return bool(getattr(norm, "centred", True))


def _per_step(norm: nn.Module) -> bool:
    """Running statistics of shape (max_steps, C): one population per time step (TimeStepBatchNorm)."""
    return as_batch_norm(norm).running_mean.ndim == 2


def _step_inputs(norm: nn.Module, args: tuple, kwargs: dict) -> list[tuple[int, Tensor, int]]:
    """(step, values of that step, channel axis) of one call of a per-time-step layer, steps < max_steps only."""
    x = args[0] if args else kwargs.get("x", kwargs.get("input"))
    if not isinstance(x, Tensor):
        return []
    step = args[1] if len(args) > 1 else kwargs.get("step")
    c = norm_axis(norm) % x.ndim
    # TimeStepBatchNorm's public max_steps and time_axis (getattr: nn.Module's attributes are untyped)
    max_steps = int(getattr(norm, "max_steps"))  # noqa: B009
    if step is not None:  # one step inside a cell's loop
        return [(int(step), x, c)] if int(step) < max_steps else []
    t = int(getattr(norm, "time_axis")) % x.ndim  # noqa: B009
    c_in_step = c - 1 if c > t else c
    return [(k, x.select(t, k), c_in_step) for k in range(min(x.shape[t], max_steps))]


def _statistics_input(norm: nn.Module, args: tuple, kwargs: dict) -> tuple[Tensor | None, Tensor | None]:
    """The input of a batch-norm call and its validity mask (padding must not count), as the layer declares them
    (``statistics_input``); torch's layers take every position of their first argument."""
    declared = getattr(norm, "statistics_input", None)
    if declared is not None:
        return declared(args, kwargs)
    x = args[0] if args else kwargs.get("x", kwargs.get("input"))
    return (x, None) if isinstance(x, Tensor) else (None, None)


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])  # (input, target) as a DataLoader yields
    if isinstance(batch, Mapping):
        return model(**batch)
    raise TypeError(
        f"recalibrate: cannot feed a batch of type {type(batch).__name__} to the model; expected a Tensor, an "
        f"(input, target) tuple/list or a dict of keyword arguments, or pass forward=lambda model, batch: ..."
    )


def _progress(iterable: Iterable, total: int | None, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is part of the lab extra; without it there is simply no bar
        return iterable
    return tqdm(iterable, total=total, desc="recalibrate", unit="batch", leave=False)


class _BadBatch(ValueError):
    """A batch recalibrate refuses (named with its index by the caller)."""


def _norms_to_recalibrate(model: nn.Module, num_batches: int | None, average: str) -> list[tuple[str, nn.Module]]:
    """Check recalibrate's arguments and return ``(name, layer)`` for every batch norm of ``model`` with running
    statistics. Raises TypeError for a model that is not an ``nn.Module``, ValueError for a bad ``num_batches`` or
    ``average``, for ``average="batches"`` over synchronized layers, and for a model without such a layer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate: expected a torch.nn.Module, got {type(model).__name__}")
    if average not in ("pooled", "batches"):
        raise ValueError(f"recalibrate: average must be 'pooled' or 'batches', got {average!r}")
    bad_count = not isinstance(num_batches, int) or isinstance(num_batches, bool) or num_batches < 1
    if num_batches is not None and bad_count:
        raise ValueError(f"recalibrate: num_batches must be a positive int or None (all batches), got {num_batches!r}")
    norms = [(name, m) for name, m in model.named_modules() if is_batch_norm(m) and has_running_stats(m)]
    if average == "batches":
        synced = [name for name, m in norms if _synchronized(m)]
        if synced:
            raise ValueError(f"recalibrate: average='batches' does not pool over processes; {synced} are synchronized "
                             "layers (use average='pooled')")
    if not norms:
        raise ValueError(
            "recalibrate: the model has no batch norm with running statistics (torch.nn.BatchNorm*d, SyncBatchNorm "
            "or normlab.nn.BatchNormBase with track_running_stats=True)"
        )
    return norms


class _Populations:
    """The population statistics being gathered: one accumulator per layer, or per layer and time step for
    per-step layers (``_PooledMoments`` or, for ``average="batches"``, ``_BatchAverage``). :meth:`record` is the
    forward pre-hook that feeds them; ``reached`` names the batch norm the current batch reached last (to say
    where a failing batch failed)."""

    def __init__(self, norms: list[tuple[str, nn.Module]], average: str) -> None:
        self.average = average
        self.acc: dict[int, Any] = {id(m): ({} if _per_step(m) else self.new(m)) for _, m in norms}
        self.names = {id(m): name or "<model>" for name, m in norms}
        self.reached = ""

    def new(self, m: nn.Module) -> _PooledMoments | _BatchAverage:
        if self.average == "batches":
            return _BatchAverage(getattr(m, "running_var_unbiased", True) and _centred(m))
        return _PooledMoments()

    def record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Add one call's input (its valid positions; per step for per-step layers). Raises ``_BadBatch`` for a
        non-finite value, which would silently turn the population statistics into NaN."""
        self.reached = self.names[id(module)]
        if _per_step(module):
            for t, xt, axis in _step_inputs(module, args, kwargs):
                self.acc[id(module)].setdefault(t, self.new(module)).add(xt, axis)
            return
        x, mask = _statistics_input(module, args, kwargs)
        if x is not None:
            finite = torch.isfinite(x) if x.is_floating_point() else None
            if mask is not None and finite is not None:
                finite = finite | ~mask  # padded positions never enter the statistics
            if finite is not None and not bool(finite.all()):
                bad = int((~finite).sum())
                raise _BadBatch(f"the input of batch norm {self.names[id(module)]!r} holds {bad} non-finite value(s) "
                                f"of {x.numel()}")
            self.acc[id(module)].add(x, norm_axis(module), mask)


def _feed(model: nn.Module, norms: list[tuple[str, nn.Module]], populations: _Populations, batches: Iterable,
          num_batches: int | None, forward: Callable[[nn.Module, Any], Any], progress: bool) -> None:
    """Run the batches through ``model`` under ``torch.no_grad()``, every batch norm normalizing with batch
    statistics (as in training) while :meth:`_Populations.record` reads its input. Afterwards, also on error, the
    layers' ``training`` flags and every buffer of the model are put back: the passes run the model as it is, so
    any layer may touch its buffers (num_batches_tracked, running averages, MABN's histories, other stateful
    layers). Raises ValueError (running statistics unchanged) for a bad or failing batch, or too few batches."""
    total = num_batches
    if total is None and isinstance(batches, Sized):
        total = len(batches)
    saved_buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = [(m, m.training) for _, m in norms]
    handles = []
    try:
        for _, m in norms:
            m.train()  # batch statistics normalize, as in training
            handles.append(m.register_forward_pre_hook(populations.record, with_kwargs=True))
        seen = 0
        with torch.no_grad():
            for batch in _progress(batches, total, progress):
                if num_batches is not None and seen >= num_batches:
                    break
                try:
                    forward(model, batch)
                except _BadBatch as exc:
                    raise ValueError(f"recalibrate: batch {seen}: {exc}; running statistics unchanged") from None
                except Exception as exc:  # the model's own error, told with where it happened
                    if str(exc).startswith("recalibrate:"):
                        raise  # already ours (a batch it cannot feed)
                    reached = populations.reached
                    where = f" (last batch norm reached: {reached!r})" if reached else ""
                    raise ValueError(f"recalibrate: batch {seen} failed in the model{where}: "
                                     f"{type(exc).__name__}: {exc}; running statistics unchanged") from exc
                populations.reached = ""
                seen += 1
        if seen == 0:
            raise ValueError("recalibrate: batches yielded no batch; running statistics unchanged")
        if num_batches is not None and seen < num_batches:
            raise ValueError(
                f"recalibrate: asked for num_batches={num_batches} but batches held only {seen}; "
                f"running statistics unchanged"
            )
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.train(training)
        with torch.no_grad():
            buffers = dict(model.named_buffers())
            for name, value in saved_buffers.items():
                buffers[name].copy_(value)


def _write(m: nn.Module, acc, running_mean: Tensor, running_var: Tensor) -> bool:
    """Copy one population into running_mean/running_var (views of the layer's buffers); False if empty."""
    if acc.stats is None or not bool(acc.seen().any()):
        return False
    seen = acc.seen()  # a channel no valid value reached (all masked) keeps its statistics
    unbiased = getattr(m, "running_var_unbiased", True)  # torch's layers keep the unbiased variance
    mean, var, second = acc.result(unbiased)
    if not _centred(m):  # MABN: running_var is the second moment E[x^2], running_mean stays 0
        running_var.copy_(torch.where(seen, second, running_var.to(second.dtype)))
        return True
    running_mean.copy_(torch.where(seen, mean, running_mean.to(mean.dtype)))
    running_var.copy_(torch.where(seen, var, running_var.to(var.dtype)))
    return True


def _write_populations(norms: list[tuple[str, nn.Module]], populations: _Populations) -> tuple[list[str], list[str]]:
    """Write every layer's population into its running statistics (pooled over the processes first for a
    synchronized layer, identical on every process); return the layers no batch reached and, for per-step
    layers, the steps no batch reached (they keep their statistics)."""
    missed: list[str] = []
    missed_steps: list[str] = []
    with torch.no_grad():
        for name, m in norms:
            acc, bn = populations.acc[id(m)], as_batch_norm(m)
            if _per_step(m):
                max_steps = int(getattr(m, "max_steps"))  # noqa: B009 (TimeStepBatchNorm's public max_steps)
                if _synchronized(m):  # per-step layers pool over processes too
                    for t in range(max_steps):
                        acc.setdefault(t, _PooledMoments()).pool_processes(m, bn.num_features)
                done = [t for t, a in sorted(acc.items()) if _write(m, a, bn.running_mean[t], bn.running_var[t])]
                if not done:
                    missed.append(name or type(m).__name__)
                elif len(done) < max_steps:
                    left = sorted(set(range(max_steps)) - set(done))
                    missed_steps.append(f"{name or type(m).__name__} (steps {left})")
                continue
            if _synchronized(m):  # population statistics of every process's shard, identical on every process
                acc.pool_processes(m, bn.num_features)
            if not _write(m, acc, bn.running_mean, bn.running_var):
                missed.append(name)
    return missed, missed_steps


def recalibrate(
    model: nn.Module,
    batches: Iterable,
    num_batches: int | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    progress: bool = True,
    average: str = "pooled",
) -> nn.Module:
    """Set the running statistics of every batch norm in ``model`` to its exact population statistics over
    ``batches`` (PreciseBN). Changes ``model`` in place and returns it.

    ``batches`` yields inputs (a Tensor, an ``(input, target)`` pair, or a dict of keyword arguments; any other
    form with ``forward(model, batch)``); ``num_batches`` stops after that many (``None``: all of them) and must
    not exceed what ``batches`` holds. Handles torch's ``BatchNorm*d``/``SyncBatchNorm`` and every
    ``normlab.nn.BatchNormBase`` layer that keeps running statistics. Runs under ``torch.no_grad()``.

    Only the running mean and variance of these layers change: their ``training`` flags and every buffer of the
    model (``num_batches_tracked``, MABN's histories, other layers' statistics, ...) are restored afterwards, and
    on any error (a bad batch, too few batches) the running statistics are left as they were. A layer that no
    batch reached keeps its statistics, with a warning. ``MaskedBatchNorm`` counts only the valid positions of its
    ``mask``/``lengths``; layers with statistics per time step (``TimeStepBatchNorm``) get one population per step
    (steps no batch reached keep theirs, with a warning).

    ``average``: ``"pooled"`` (the exact population moments, see the module docstring) or ``"batches"`` (the
    plain average of the per-batch estimates, Cooijmans et al.'s recurrent-BN inference statistics; not for
    synchronized layers). Raises ValueError for a bad argument or when no batch arrives.
    """
    norms = _norms_to_recalibrate(model, num_batches, average)
    populations = _Populations(norms, average)
    _feed(model, norms, populations, batches, num_batches, forward or _default_forward, progress)
    missed, missed_steps = _write_populations(norms, populations)
    if missed:
        warnings.warn(
            f"recalibrate: no batch reached {', '.join(missed)}; their statistics are unchanged", stacklevel=2
        )
    if missed_steps:
        warnings.warn(
            f"recalibrate: no batch reached some time steps of {', '.join(missed_steps)}; their statistics are "
            "unchanged", stacklevel=2,
        )
    return model
