"""Shared pieces of the claims' reports: the mean-and-band plot, figures, per-seed tables, and reading a lab run's
curves. Models, data and training are the lab's (``normlab.lab.models``, ``.data``, ``.train``); every unit of a
claim is a :class:`~normlab.lab.train.TrainConfig`.
"""

from __future__ import annotations

import math
from typing import Sequence

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
