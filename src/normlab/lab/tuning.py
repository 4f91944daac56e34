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

*Censored grids.* A rate chosen at an edge of its grid says only that the best rate lies at or beyond that edge.
So the search extends the grid there (:attr:`Search.extend`, declared with the search and part of the protocol):
while the chosen rate is the largest (smallest) rate evaluated and strictly better than every other one, one more
rate is evaluated one grid step further (the grid's own ratio at that edge: ``grid[-1] / grid[-2]`` up,
``grid[1] / grid[0]`` down), at most ``extend`` times per arm and never beyond the hard bounds
(:attr:`Search.bounds`). The record gives the evaluated grid, the extensions, and ``censored: true`` (the side,
``"below"`` in ``censored_side``) when the best rate is still at an edge after the cap or at a bound.

:func:`bisect_stable_lr` finds, per seed, the largest rate at which a run stays stable (does not diverge and
reaches a target): a scan of a declared grid, then bisection in log space above its largest stable rate, so
seeds can differ by less than a grid step. Its grid is extended the same way: up while the largest rate tried is
still stable, down while no rate tried is (:func:`stable_lr_censored` names the configs still censored).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .train import RunResult, TrainConfig

__all__ = ["Search", "CRITERIA", "TUNING_SEED_BASE", "tuning_seeds", "log_grid", "tuning_configs", "score",
           "choose", "tune", "bisect_stable_lr", "stable_lr_censored", "EXTEND", "LR_BOUNDS", "EXTENSION_RULE"]

TUNING_SEED_BASE = 1000
#: Default cap on grid extensions per arm (per search), and the hard bounds no extension crosses.
EXTEND = 3
LR_BOUNDS = (1e-6, 10.0)


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
    own ``steps``), ``criterion`` (a key of :data:`CRITERIA`), ``seeds`` (tuning seeds, >= 1000),
    ``fraction`` (the share of the verdict's training split held out to score the runs), ``extend`` (how many
    rates at most are added beyond an edge of the grid when the best rate sits there; 0 = never) and ``bounds``
    (``(low, high)``: no added rate lies outside them; the declared grid itself must lie inside; None:
    :data:`LR_BOUNDS` widened to contain the grid).

    Raises ValueError naming the field for an empty, one-rate or non-positive grid, an unknown criterion, a seed below
    :data:`TUNING_SEED_BASE`, a fraction outside (0, 1), a negative ``extend`` or bounds not containing the grid.
    """

    grid: tuple[float, ...]
    seeds: tuple[int, ...] = tuning_seeds(2)
    steps: int = 0
    criterion: str = "final_val_acc"
    fraction: float = 0.2
    extend: int = EXTEND
    bounds: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(float(g) for g in self.grid))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        bad_rate = any(not (math.isfinite(g) and g > 0) for g in self.grid)
        if not self.grid or bad_rate or len(set(self.grid)) != len(self.grid):
            raise ValueError(f"Search: grid must be distinct finite rates > 0, got {self.grid!r}")
        if len(self.grid) < 2:
            # one rate has no grid step: the choice is at both edges and cannot be extended, so "not censored"
            # would be a claim the search cannot make
            raise ValueError(f"Search: grid must hold at least 2 rates (a one-rate grid cannot tell whether its "
                             f"rate is censored on either side), got {self.grid!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"Search: criterion must be one of {sorted(CRITERIA)}, got {self.criterion!r}")
        if not self.seeds or min(self.seeds) < TUNING_SEED_BASE or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Search: seeds must be distinct tuning seeds >= {TUNING_SEED_BASE}, got {self.seeds!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"Search: steps must be an int >= 0 (0 = the arm's own budget), got {self.steps!r}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"Search: fraction must lie in (0, 1), got {self.fraction!r}")
        if not (isinstance(self.extend, int) and not isinstance(self.extend, bool) and self.extend >= 0):
            raise ValueError(f"Search: extend must be an int >= 0 (0 = never extend the grid), got {self.extend!r}")
        lo, hi = _bounds_for(self.grid, self.bounds)
        if not (0 < lo <= min(self.grid) and max(self.grid) <= hi and math.isfinite(hi)):
            raise ValueError(f"Search: bounds must be (low, high) with 0 < low <= every grid rate <= high < inf, got "
                             f"{self.bounds!r} for grid {self.grid!r}")
        object.__setattr__(self, "bounds", (lo, hi))

    def declaration(self) -> dict[str, Any]:
        """The search as declared (JSON data): what the protocol hashes and the record repeats."""
        return {"grid": list(self.grid), "seeds": list(self.seeds), "steps": self.steps, "criterion": self.criterion,
                "fraction": self.fraction, "extend": self.extend, "bounds": list(_bounds_for(self.grid, self.bounds)),
                "extension_rule": EXTENSION_RULE}

    def units(self) -> int:
        return len(self.grid) * len(self.seeds)


EXTENSION_RULE = ("while the chosen rate is the largest (smallest) rate evaluated and strictly better than every "
                  "other, evaluate one more rate one grid step beyond it (ratio grid[-1]/grid[-2] up, grid[1]/grid[0] "
                  "down), at most `extend` times, never outside `bounds`; censored if the best is still at an edge")


def _bounds_for(grid: Sequence[float], bounds: tuple[float, float] | None) -> tuple[float, float]:
    """Declared bounds, or (None) :data:`LR_BOUNDS` widened to contain the grid: a default never cuts a grid."""
    if bounds is None:
        return min(LR_BOUNDS[0], min(grid)), max(LR_BOUNDS[1], max(grid))
    lo, hi = (float(b) for b in bounds)
    return lo, hi


def _round3(x: float) -> float:
    return float(f"{x:.3g}")


def _step_beyond(grid: Sequence[float], rates: Sequence[float], side: str, bounds: tuple[float, float]) -> float | None:
    """The next rate beyond the evaluated ``rates`` on ``side`` ("above"/"below") by the declared grid's ratio
    at that edge, or None when it would leave ``bounds`` (or the grid has one rate: no ratio)."""
    g = sorted(grid)
    if len(g) < 2:
        return None
    if side == "above":
        nxt = _round3(max(rates) * g[-1] / g[-2])
        return nxt if nxt <= bounds[1] * (1 + 1e-9) and nxt > max(rates) else None
    nxt = _round3(min(rates) * g[0] / g[1])
    return nxt if nxt >= bounds[0] * (1 - 1e-9) and nxt < min(rates) else None


def _edge(rates: Sequence[float], scores: Mapping[str, float | None], chosen: float) -> str | None:
    """"above"/"below" when ``chosen`` is the largest/smallest rate evaluated and strictly better than every other
    eligible rate (a flat or tied edge is not censored: an interior rate is as good); else None."""
    if len(rates) < 2:
        return None
    best = scores.get(repr(chosen))
    others = [v for r, v in ((r, scores.get(repr(r))) for r in rates) if r != chosen and v is not None]
    if best is None:  # nothing eligible: every rate diverged, so the stable region lies below
        return "below" if chosen == min(rates) else None
    if any(v >= best for v in others):
        return None
    if chosen == max(rates):
        return "above"
    if chosen == min(rates):
        return "below"
    return None


def tuning_configs(base: TrainConfig, search: Search, rates: Sequence[float] | None = None) -> list[TrainConfig]:
    """One config per (rate, tuning seed), grid-major: ``base`` with that rate and seed, the tuning split
    (``data_args["tuning_fraction"]``, same ``split_seed``), the search's budget and no probes (the criterion
    reads the evaluations only). ``rates`` defaults to the search's grid (an extension passes its new rates)."""
    if "tuning_fraction" in base.data_args:
        raise ValueError("tuning_configs: the arm's base config already asks for a tuning split (data_args "
                         "tuning_fraction); give the verdict's config")
    steps = search.steps or base.steps
    every = base.eval_every if (base.eval_every and base.eval_every <= steps) else 0
    out = []
    for lr in (search.grid if rates is None else rates):
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


def choose(search: Search, results: Sequence[RunResult], split: Mapping[str, Any] | None = None,
           rates: Sequence[float] | None = None) -> tuple[float, dict]:
    """The rate with the highest mean criterion over tuning seeds, and the JSON-able record.

    ``results`` are in the order of :func:`tuning_configs` over ``rates`` (default: the search's grid; an
    extended search passes the grid followed by its added rates). A rate with a diverged (or non-finite) run on
    any seed scores None and is not eligible; when no rate is eligible, the smallest rate is chosen and the record
    says so. Ties go to the first rate (grid order). The record's ``edge`` is "above"/"below" when the choice is
    at that edge of the evaluated rates and strictly better than the rest (see :func:`tune` for the extension).
    """
    rates = list(search.grid if rates is None else (float(r) for r in rates))
    n = len(search.seeds)
    if len(results) != len(rates) * n:
        raise ValueError(f"choose: expected {len(rates) * n} results (rates x seeds), got {len(results)}")
    per_seed: dict[str, list[float | None]] = {}
    scores: dict[str, float | None] = {}
    for i, lr in enumerate(rates):
        vals = [score(r, search.criterion) for r in results[i * n:(i + 1) * n]]
        per_seed[repr(lr)] = vals
        scores[repr(lr)] = None if any(v is None for v in vals) else sum(v for v in vals if v is not None) / n
    eligible = [(s, -i, lr) for i, lr in enumerate(rates) if (s := scores[repr(lr)]) is not None]
    chosen = max(eligible)[2] if eligible else min(rates)
    record = {"grid": list(search.grid), "criterion": search.criterion,
              "criterion_text": CRITERIA[search.criterion][1], "seeds": list(search.seeds),
              "steps": int(getattr(results[0].config, "steps", search.steps)) if results else search.steps,
              "split": dict(split or {}, tuning_fraction=search.fraction), "scores": scores,
              "per_seed": per_seed, "lr": chosen, "evaluated": sorted(rates),
              "edge": _edge(rates, scores, chosen),
              "note": "" if eligible else "every rate diverged on some tuning seed: the smallest rate was taken"}
    return chosen, record


def tune(ctx, arms: Mapping[str, TrainConfig], search: Search | Mapping[str, Search]) -> dict[str, tuple[float, dict]]:
    """Run the declared search of every arm and return ``{arm: (lr, record)}``.

    ``arms`` maps an arm name to its verdict config (any verdict seed: the seed is replaced); ``search`` is one
    :class:`Search` for every arm or one per arm. The grids of all arms run in one ``ctx.map``; then, while some
    arm's best rate is at an edge of what it evaluated (strictly better than the rest), one rate beyond that edge
    is added for each such arm (one ``ctx.map`` per round, at most ``Search.extend`` rounds, never outside
    ``Search.bounds``). The record adds ``evaluated`` (every rate run, ascending), ``extensions`` (the added
    rates in order), ``extended`` (bool), ``censored`` (True when the best rate is still at an edge after the cap
    or at a bound), ``censored_side`` ("above"/"below"/None) and ``declaration`` (the search as declared).
    Raises ValueError when a tuning seed is one of ``ctx.seeds``.
    """
    searches = {a: (search[a] if isinstance(search, Mapping) else search) for a in arms}
    verdict = set(int(s) for s in ctx.seeds)
    for a, s in searches.items():
        clash = sorted(verdict & set(s.seeds))
        if clash:
            raise ValueError(f"tune: arm {a!r}: tuning seeds {clash} are verdict seeds; use seeds >= "
                             f"{TUNING_SEED_BASE} beyond the verdict's")
    rates = {a: list(searches[a].grid) for a in arms}
    results: dict[str, list[RunResult]] = {a: [] for a in arms}
    added: dict[str, list[float]] = {a: [] for a in arms}
    pending = {a: list(searches[a].grid) for a in arms}
    out: dict[str, tuple[float, dict]] = {}
    for round_ in range(1 + max((s.extend for s in searches.values()), default=0)):
        configs: list[TrainConfig] = []
        spans = {}
        for a, new in pending.items():
            cs = tuning_configs(arms[a], searches[a], new)
            spans[a] = (len(configs), len(configs) + len(cs))
            configs += cs
        if configs:
            got = ctx.map(configs)
            for a, (lo, hi) in spans.items():
                results[a] += list(got[lo:hi])
        pending = {}
        for a, base in arms.items():
            split = {"data": base.data, "split_seed": base.split_seed, "data_args": dict(base.data_args)}
            out[a] = choose(searches[a], results[a], split, rates[a])
            side = out[a][1]["edge"]
            if side is None or round_ >= searches[a].extend:
                continue
            nxt = _step_beyond(searches[a].grid, rates[a], side, _bounds_for(searches[a].grid, searches[a].bounds))
            if nxt is not None:
                pending[a] = [nxt]
                rates[a].append(nxt)
                added[a].append(nxt)
        if not pending:
            break
    for a in arms:
        lr, rec = out[a]
        side = rec.pop("edge")
        rec.update(extensions=added[a], extended=bool(added[a]), censored=side is not None, censored_side=side,
                   declaration=searches[a].declaration())
    return out


def bisect_stable_lr(ctx, bases: Sequence[TrainConfig], ok: Callable[[RunResult], bool], grid: Sequence[float],
                     rounds: int, extend: int = EXTEND, bounds: tuple[float, float] | None = None,
                     ) -> tuple[list[float], list[list[tuple[float, bool]]]]:
    """Per config, the largest rate at which ``ok(run)`` holds: a scan of the declared ``grid`` (ascending),
    extended where it is censored, then bisection in log10 between the largest ok rate and the next rate above.

    ``ok`` need not be monotone at the low end (a rate too small to reach a target in the budget fails too): the
    scan finds the largest ok rate of the grid, and the bisection refines only above it. A config ok at the
    largest rate tried gets one more rate above it (the grid's top ratio ``grid[-1] / grid[-2]``), one ok at no
    rate tried one more below it (``grid[0] / grid[1]``), at most ``extend`` times and never outside ``bounds``
    (one ``ctx.map`` per extension round; ``bounds`` None: :data:`LR_BOUNDS` widened to contain the grid).
    Every bisection round runs one rate per config still bracketed (one
    ``ctx.map`` per round): the log10 midpoint of [largest rate found ok, smallest rate above it found not ok];
    the lower end is returned, within ``step / 2**rounds`` decades of the boundary (``step``: the spacing there).
    A config still ok at no rate tried returns the smallest rate tried divided by ``10**0.5`` (censored below);
    one still ok at the largest rate tried returns it (censored above); :func:`stable_lr_censored` tells which.
    Returns (rates, per-config trail of (rate, ok)).
    """
    grid = [float(g) for g in grid]
    if len(grid) < 2 or any(not (0 < a < b) for a, b in zip(grid, grid[1:])) or rounds < 0:
        raise ValueError(f"bisect_stable_lr: expected an ascending grid of >= 2 rates > 0 and rounds >= 0, got "
                         f"{grid}, {rounds}")
    lims = _bounds_for(grid, bounds)
    if not (isinstance(extend, int) and extend >= 0) or not (0 < lims[0] <= grid[0] and grid[-1] <= lims[1]):
        raise ValueError(f"bisect_stable_lr: expected extend >= 0 and bounds containing the grid, got {extend}, "
                         f"{bounds}")
    n = len(bases)
    trail: list[list[tuple[float, bool]]] = [[] for _ in range(n)]

    def run(pairs: Sequence[tuple[int, float]]) -> list[bool]:
        rs = ctx.map([dataclasses.replace(bases[i], lr=float(r)) for i, r in pairs])
        flags = [bool(ok(r)) for r in rs]
        for (i, rate), f in zip(pairs, flags):
            trail[i].append((float(rate), f))
        return flags

    run([(i, g) for i in range(n) for g in grid])

    def state(i: int) -> tuple[float | None, float | None]:
        """(largest ok rate tried, smallest not-ok rate tried above it) of config i."""
        oks = [r for r, f in trail[i] if f]
        best = max(oks) if oks else None
        above = [r for r, f in trail[i] if not f and (best is None or r > best)]
        return best, (min(above) if above else None)

    for _ in range(extend):
        pairs = []
        for i in range(n):
            best, above = state(i)
            tried = [r for r, _ in trail[i]]
            side = "below" if best is None else ("above" if above is None else None)
            nxt = _step_beyond(grid, tried, side, lims) if side else None
            if nxt is not None:
                pairs.append((i, nxt))
        if not pairs:
            break
        run(pairs)
    lo, hi, active = [0.0] * n, [0.0] * n, []
    for i in range(n):
        best, above = state(i)
        if best is not None and above is not None:
            lo[i], hi[i] = math.log10(best), math.log10(above)
            active.append(i)
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
    rates = []
    for i in range(n):
        best, above = state(i)
        if best is None:
            rates.append(min(r for r, _ in trail[i]) / 10 ** 0.5)
        elif above is None:
            rates.append(best)
        else:
            rates.append(10 ** lo[i])
    return rates, trail


def stable_lr_censored(trails: Sequence[Sequence[tuple[float, bool]]]) -> list[str | None]:
    """Per config of :func:`bisect_stable_lr`, "above" when the largest rate tried was still ok (the stable rate
    lies beyond the extended grid), "below" when no rate tried was ok, else None."""
    out: list[str | None] = []
    for t in trails:
        oks = [r for r, f in t if f]
        if not oks:
            out.append("below")
        elif max(oks) >= max(r for r, _ in t):
            out.append("above")
        else:
            out.append(None)
    return out
