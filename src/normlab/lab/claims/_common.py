"""Shared pieces of the claims' reports: the mean-and-band plot, figures, per-seed tables, and reading a lab run's
curves. Models, data and training are the lab's (``normlab.lab.models``, ``.data``, ``.train``); every unit of a
claim is a :class:`~normlab.lab.train.TrainConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------- run curves


def curve(result, column: str) -> list[float]:
    """One column of a run's evaluations (``"val_acc"``, ``"val_loss"``, ``"train_loss"``, ``"step"``), NaN for a
    value the store kept as null (a non-finite one)."""
    return [math.nan if e.get(column) is None else float(e[column]) for e in result.evals]


def num(v) -> float:
    """A probe value as a float (a stored non-finite value comes back as None: NaN)."""
    return math.nan if v is None else float(v)


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


# ------------------------------------------------------------------------------------------------- tuned arms


def record_arms(out, tuned, init: dict | None = None) -> None:
    """Put each arm's chosen learning rate and its search record (:func:`normlab.lab.tuning.tune`'s
    ``{arm: (lr, record)}``) into the outcome: ``out.arms[arm] = {"lr", "tuning", "init"}`` (for results.json's
    ``arms[]``; Outcome has no such field in base.py yet, so it is set as an attribute), a table and a note."""
    from .base import Table

    arms = dict(getattr(out, "arms", None) or {})
    rows = []
    for arm, (lr, rec) in tuned.items():
        arms[arm] = {"lr": lr, "tuning": rec, **({"init": init[arm]} if init and arm in init else {})}
        scores = ", ".join(f"{float(k):.3g}: " + ("diverged" if v is None else f"{v:.4g}")
                           for k, v in rec["scores"].items())
        rows.append((arm, f"{lr:.3g}", scores, rec["criterion"], ", ".join(map(str, rec["seeds"])),
                     str(rec["steps"]), (init or {}).get(arm, "")))
    out.arms = arms
    out.tables.append(Table("Per-arm learning rates: a declared search on the tuning split (tuning seeds, a held-out "
                            "part of the training split; the verdict's validation split and seeds are not used)",
                            ("arm", "chosen lr", "score per lr (mean over tuning seeds)", "criterion",
                             "tuning seeds", "steps per tuning run", "init"), tuple(rows)))
    out.notes.append("per-arm learning rates (tuned): " + ", ".join(f"{a} {lr:.3g}" for a, (lr, _) in tuned.items()))


def available(out, arms: Sequence[str], spec: Callable[[str], str] = lambda arm: arm) -> list[str]:
    """The arms whose norm (``spec(arm)``, a ``make_norm`` spec) can be built here, in order; each other arm goes
    into ``out.not_run`` with the reason."""
    from ..models import norm_available

    kept = []
    for arm in arms:
        why = norm_available(spec(arm))
        if why:
            out.not_run[arm] = why
        else:
            kept.append(arm)
    return kept


def search(cfg: Mapping[str, Any], criterion: str = "final_val_acc"):
    """The claim's declared learning-rate search from its level's configuration (``grid``, ``tune_seeds``,
    ``tune_steps``): :class:`normlab.lab.tuning.Search` on the tuning seeds 1000, 1001, ..."""
    from ..tuning import Search, tuning_seeds

    return Search(grid=tuple(cfg["grid"]), seeds=tuning_seeds(cfg["tune_seeds"]), steps=cfg["tune_steps"],
                  criterion=criterion)


def tuned_runs(ctx, arms: Sequence[str], config: Callable[..., Any], criterion: str = "final_val_acc"):
    """Tune every arm (``config(arm, seed, cfg)`` is its verdict config; the rate chosen by :func:`search`), then
    run every arm x verdict seed at its tuned rate (``config(arm, seed, cfg, lr)``). Returns ``(tuned, units,
    runs)``: ``{arm: (lr, record)}``, the units ``{"arm", "seed"}`` (seed-major) and their results, in order."""
    from ..tuning import tune

    cfg = ctx.config
    tuned = tune(ctx, {a: config(a, ctx.seeds[0], cfg) for a in arms}, search(cfg, criterion)) if arms else {}
    units = [{"arm": arm, "seed": s} for s in ctx.seeds for arm in arms]
    runs = ctx.map([config(u["arm"], u["seed"], cfg, tuned[u["arm"]][0]) for u in units])
    return tuned, units, runs


def final_accuracy_curves(out, ax, arms: Sequence[str], units, runs, tuned, metric: str,
                          label: Callable[[str], str] = str, style: Callable[[str], str] = lambda arm: "-") -> None:
    """Per arm: every seed's last validation accuracy into ``out`` under ``metric``, and its validation-accuracy
    curve over steps on ``ax`` (mean line, min..max band, labelled with the arm's tuned rate)."""
    for i, arm in enumerate(arms):
        rs = [(u, r) for u, r in zip(units, runs) if u["arm"] == arm]
        for u, r in rs:
            out.add(metric, arm, u["seed"], curve(r, "val_acc")[-1])
        band(ax, curve(rs[0][1], "step"), [curve(r, "val_acc") for _, r in rs],
             f"{label(arm)} (lr {tuned[arm][0]:.3g})", COLORS[i % len(COLORS)], style(arm))


def note_divergences(out, runs) -> None:
    """A note counting the runs that diverged (their last evaluation before the divergence is what they report)."""
    diverged = sum(r.diverged_step is not None for r in runs)
    if diverged:
        out.notes.append(f"{diverged} run(s) diverged; their last evaluation before the divergence is used")


def run_arms(ctx, arms: Sequence[str], config: Callable[..., Any], init: str,
             spec: Callable[[str], str] | None = None, criterion: str = "final_val_acc"):
    """A claim's usual start: a new :class:`~normlab.lab.claims.base.Outcome`; the arms that can run (with
    ``spec``, each arm's ``make_norm`` spec, the others go to ``out.not_run``; None: every arm); :func:`tuned_runs`;
    and each arm's rate, search and ``init`` (a sentence) recorded (:func:`record_arms`). Returns ``(out, arms,
    tuned, units, runs)``."""
    from .base import Outcome

    out = Outcome()
    kept = list(arms) if spec is None else available(out, arms, spec)
    tuned, units, runs = tuned_runs(ctx, kept, config, criterion)
    if tuned:
        record_arms(out, tuned, {a: init for a in kept})
    return out, kept, tuned, units, runs
