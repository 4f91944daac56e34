"""Declared per-arm learning-rate searches that the verdict never sees.

A claim compares arms (e.g. with and without BN). Sharing one untuned learning rate favours whichever arm that
rate happens to suit, so every arm gets its own rate, chosen by a search declared with the claim
(:class:`Search`: the grid, the step budget, the criterion, the tuning seeds, the tuning split) and run on data
and seeds the verdict never uses:

- *tuning seeds* start at :data:`TUNING_SEED_BASE` (1000); a search refuses a verdict seed;
- the *tuning split* is :func:`normlab.lab.data.tuning_split` of the verdict's data (``data_args
  tuning_fraction``): the verdict's training split only, a stratified part of it held out for scoring; the
  verdict's validation and test splits are not in it. Verdict runs must therefore share the tuning's
  ``split_seed`` (:func:`tune` checks this).

The grid runs through ``ctx.map`` (so it is stored and resumable like every unit). The chosen rate is the argmax
over the grid of the declared criterion averaged over tuning seeds; a rate that diverges on any tuning seed is
not eligible; ties go to the first rate of the grid. :func:`tune` returns, per arm, the rate and a JSON-able
record of the search (grid, criterion, per-rate and per-seed scores, seeds, split, budget, choice).

:func:`bisect_stable_lr` finds, per seed, the largest rate at which a run stays stable (does not diverge and
reaches a target): a scan of a declared grid, then bisection in log space above its largest stable rate, so
seeds can differ by less than a grid step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .train import RunResult, TrainConfig

__all__ = ["Search", "CRITERIA", "TUNING_SEED_BASE", "tuning_seeds", "log_grid", "tuning_configs", "score",
           "choose", "tune", "bisect_stable_lr"]

TUNING_SEED_BASE = 1000


def tuning_seeds(n: int) -> tuple[int, ...]:
    """The ``n`` declared tuning seeds ``1000, 1001, ...`` (verdict seeds are ``0 .. n_seeds - 1``)."""
    return tuple(TUNING_SEED_BASE + i for i in range(n))


def log_grid(low: float, high: float, n: int) -> tuple[float, ...]:
    """``n`` log-spaced rates from ``low`` to ``high`` (both included), rounded to 3 significant digits."""
    if not (0 < low < high) or n < 2:
        raise ValueError(f"log_grid: expected 0 < low < high and n >= 2, got low={low}, high={high}, n={n}")
    a, b = math.log10(low), math.log10(high)
    return tuple(float(f"{10 ** (a + (b - a) * i / (n - 1)):.3g}") for i in range(n))


def _f(v) -> float:
    return math.nan if v is None else float(v)  # a stored run keeps a non-finite value as None


def _final_val_acc(r: RunResult) -> float:
    return _f(r.evals[-1]["val_acc"])


def _mean_val_acc(r: RunResult) -> float:
    vals = [_f(e["val_acc"]) for e in r.evals[1:]] or [_f(r.evals[-1]["val_acc"])]
    return sum(vals) / len(vals)


def _neg_final_val_loss(r: RunResult) -> float:
    return -_f(r.evals[-1]["val_loss"])


# name -> (score of one run, higher is better; a sentence for the report)
CRITERIA: dict[str, tuple[Callable[[RunResult], float], str]] = {
    "final_val_acc": (_final_val_acc, "tuning-validation accuracy at the end of the budget"),
    "mean_val_acc": (_mean_val_acc, "tuning-validation accuracy averaged over the evaluations after step 0 (the "
                                    "area under the accuracy curve: rewards reaching a high accuracy early)"),
    "neg_final_val_loss": (_neg_final_val_loss, "minus the tuning-validation loss at the end of the budget"),
}


@dataclass(frozen=True)
class Search:
    """A declared learning-rate search: ``grid`` (rates), ``steps`` (the budget of one tuning run; 0 = the arm's
    own ``steps``), ``criterion`` (a key of :data:`CRITERIA`), ``seeds`` (tuning seeds, >= 1000) and
    ``fraction`` (the share of the verdict's training split held out to score the runs).

    Raises ValueError naming the field for an empty or non-positive grid, an unknown criterion, a seed below
    :data:`TUNING_SEED_BASE`, or a fraction outside (0, 1).
    """

    grid: tuple[float, ...]
    seeds: tuple[int, ...] = tuning_seeds(2)
    steps: int = 0
    criterion: str = "final_val_acc"
    fraction: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(float(g) for g in self.grid))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        bad_rate = any(not (math.isfinite(g) and g > 0) for g in self.grid)
        if not self.grid or bad_rate or len(set(self.grid)) != len(self.grid):
            raise ValueError(f"Search: grid must be distinct finite rates > 0, got {self.grid!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"Search: criterion must be one of {sorted(CRITERIA)}, got {self.criterion!r}")
        if not self.seeds or min(self.seeds) < TUNING_SEED_BASE or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Search: seeds must be distinct tuning seeds >= {TUNING_SEED_BASE}, got {self.seeds!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"Search: steps must be an int >= 0 (0 = the arm's own budget), got {self.steps!r}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"Search: fraction must lie in (0, 1), got {self.fraction!r}")

    def units(self) -> int:
        return len(self.grid) * len(self.seeds)


def tuning_configs(base: TrainConfig, search: Search) -> list[TrainConfig]:
    """One config per (rate, tuning seed), grid-major: ``base`` with that rate and seed, the tuning split
    (``data_args["tuning_fraction"]``, same ``split_seed``), the search's budget and no probes (the criterion
    reads the evaluations only)."""
    if "tuning_fraction" in base.data_args:
        raise ValueError("tuning_configs: the arm's base config already asks for a tuning split (data_args "
                         "tuning_fraction); give the verdict's config")
    steps = search.steps or base.steps
    every = base.eval_every if (base.eval_every and base.eval_every <= steps) else 0
    out = []
    for lr in search.grid:
        for seed in search.seeds:
            out.append(dataclasses.replace(
                base, lr=lr, seed=seed, data_args={**base.data_args, "tuning_fraction": search.fraction},
                steps=steps, eval_every=every or max(1, steps // 4), probes={}))
    return out


def score(result: RunResult, criterion: str) -> float | None:
    """The run's criterion value, or None when it diverged (not eligible) or the value is not finite."""
    if result.diverged_step is not None:
        return None
    v = CRITERIA[criterion][0](result)
    return v if math.isfinite(v) else None


def choose(search: Search, results: Sequence[RunResult], split: Mapping[str, Any] | None = None) -> tuple[float, dict]:
    """The rate of the grid with the highest mean criterion over tuning seeds, and the JSON-able record.

    ``results`` are in the order of :func:`tuning_configs`. A rate with a diverged (or non-finite) run on any seed
    scores None and is not eligible; when no rate is eligible, the smallest rate of the grid is chosen and the
    record says so. Ties go to the first rate of the grid.
    """
    n = len(search.seeds)
    if len(results) != search.units():
        raise ValueError(f"choose: expected {search.units()} results (grid x seeds), got {len(results)}")
    per_seed: dict[str, list[float | None]] = {}
    scores: dict[str, float | None] = {}
    for i, lr in enumerate(search.grid):
        vals = [score(r, search.criterion) for r in results[i * n:(i + 1) * n]]
        per_seed[repr(lr)] = vals
        scores[repr(lr)] = None if any(v is None for v in vals) else sum(vals) / n
    eligible = [(scores[repr(lr)], -i, lr) for i, lr in enumerate(search.grid) if scores[repr(lr)] is not None]
    chosen = max(eligible)[2] if eligible else min(search.grid)
    record = {"grid": list(search.grid), "criterion": search.criterion,
              "criterion_text": CRITERIA[search.criterion][1], "seeds": list(search.seeds),
              "steps": int(getattr(results[0].config, "steps", search.steps)) if results else search.steps,
              "split": dict(split or {}, tuning_fraction=search.fraction), "scores": scores,
              "per_seed": per_seed, "lr": chosen,
              "note": "" if eligible else "every rate diverged on some tuning seed: the smallest rate was taken"}
    return chosen, record


def tune(ctx, arms: Mapping[str, TrainConfig], search: Search | Mapping[str, Search]) -> dict[str, tuple[float, dict]]:
    """Run the declared search of every arm in one ``ctx.map`` and return ``{arm: (lr, record)}``.

    ``arms`` maps an arm name to its verdict config (any verdict seed: the seed is replaced); ``search`` is one
    :class:`Search` for every arm or one per arm. Raises ValueError when a tuning seed is one of ``ctx.seeds``.
    """
    searches = {a: (search[a] if isinstance(search, Mapping) else search) for a in arms}
    verdict = set(int(s) for s in ctx.seeds)
    for a, s in searches.items():
        clash = sorted(verdict & set(s.seeds))
        if clash:
            raise ValueError(f"tune: arm {a!r}: tuning seeds {clash} are verdict seeds; use seeds >= "
                             f"{TUNING_SEED_BASE} beyond the verdict's")
    configs: list[TrainConfig] = []
    spans = {}
    for a, base in arms.items():
        cs = tuning_configs(base, searches[a])
        spans[a] = (len(configs), len(configs) + len(cs))
        configs += cs
    results = ctx.map(configs)
    out = {}
    for a, base in arms.items():
        lo, hi = spans[a]
        out[a] = choose(searches[a], results[lo:hi], {"data": base.data, "split_seed": base.split_seed,
                                                      "data_args": dict(base.data_args)})
    return out


def bisect_stable_lr(ctx, bases: Sequence[TrainConfig], ok: Callable[[RunResult], bool], grid: Sequence[float],
                     rounds: int) -> tuple[list[float], list[list[tuple[float, bool]]]]:
    """Per config, the largest rate at which ``ok(run)`` holds: a scan of the declared ``grid`` (ascending), then
    bisection in log10 between the largest ok grid rate and the next grid rate.

    ``ok`` need not be monotone at the low end (a rate too small to reach a target in the budget fails too): the
    scan finds the largest ok rate of the grid, and the bisection refines only above it. Every round runs one rate
    per config still bracketed (one ``ctx.map`` per round): the log10 midpoint of [largest rate found ok, smallest
    rate above it found not ok]; the lower end is returned, within ``step / 2**rounds`` decades of the boundary
    (``step``: the grid's spacing there). A config ok at no grid rate returns ``grid[0] / 10**0.5`` (censored
    below the grid); one ok at the largest grid rate returns it (censored above). Returns (rates, per-config trail
    of (rate, ok)).
    """
    grid = [float(g) for g in grid]
    if len(grid) < 2 or any(not (0 < a < b) for a, b in zip(grid, grid[1:])) or rounds < 0:
        raise ValueError(f"bisect_stable_lr: expected an ascending grid of >= 2 rates > 0 and rounds >= 0, got "
                         f"{grid}, {rounds}")
    n = len(bases)
    trail: list[list[tuple[float, bool]]] = [[] for _ in range(n)]

    def run(pairs: Sequence[tuple[int, float]]) -> list[bool]:
        rs = ctx.map([dataclasses.replace(bases[i], lr=float(r)) for i, r in pairs])
        flags = [bool(ok(r)) for r in rs]
        for (i, rate), f in zip(pairs, flags):
            trail[i].append((float(rate), f))
        return flags

    scan = run([(i, g) for i in range(n) for g in grid])
    best = []  # index of the largest ok grid rate, -1 for none
    for i in range(n):
        flags = scan[i * len(grid):(i + 1) * len(grid)]
        best.append(max((k for k, f in enumerate(flags) if f), default=-1))
    lo = [math.log10(grid[b]) if b >= 0 else 0.0 for b in best]
    hi = [math.log10(grid[b + 1]) if 0 <= b < len(grid) - 1 else 0.0 for b in best]
    active = [i for i in range(n) if 0 <= best[i] < len(grid) - 1]
    for _ in range(rounds):
        if not active:
            break
        mids = [(lo[i] + hi[i]) / 2 for i in active]
        flags = run([(i, 10 ** m) for i, m in zip(active, mids)])
        for i, m, f in zip(active, mids, flags):
            if f:
                lo[i] = m
            else:
                hi[i] = m
    rates = [grid[0] / 10 ** 0.5 if best[i] < 0 else 10 ** lo[i] for i in range(n)]
    return rates, trail
