"""Curves of stored runs: one line per configuration (runs that differ only in ``seed`` are pooled), the mean over
seeds with a band of +-1 standard deviation. matplotlib with the Agg backend; PNG or SVG by the file suffix."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .store import RunRecord, Store
from .train import EVAL_COLUMNS, STEP_COLUMNS

__all__ = ["plot_runs", "group_curves", "METRICS"]

METRICS = tuple(c for c in EVAL_COLUMNS if c not in ("step", "epoch", "time")) + tuple(
    f"step_{c}" for c in STEP_COLUMNS if c not in ("step", "epoch", "time")
)


def _curve(store: Store, rec: RunRecord, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    rows = store.steps(rec.key) if metric.startswith("step_") else store.evals(rec.key)
    col = metric[5:] if metric.startswith("step_") else metric
    xs = np.array([r[x] for r in rows], dtype=float)
    ys = np.array([r[col] for r in rows], dtype=float)
    return xs, ys


def group_curves(
    store: Store, records: Sequence[RunRecord], metric: str = "val_acc", x: str = "step"
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """``{label: (x, mean, std, n_runs)}``; runs of one label are averaged at the x values they share (a run that
    stopped early, e.g. diverged, contributes only where it has values)."""
    if metric not in METRICS:
        raise ValueError(f"plot: unknown metric {metric!r}; expected one of {list(METRICS)}")
    if x not in ("step", "epoch", "time"):
        raise ValueError(f"plot: unknown x axis {x!r}; expected 'step', 'epoch' or 'time'")
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[r.label()].append(r)
    out = {}
    for label, runs in groups.items():
        per_x: dict[float, list[float]] = defaultdict(list)
        per_row: dict[int, list[tuple[float, float]]] = defaultdict(list)  # x == "time": (time, value) by row
        for r in runs:
            xs, ys = _curve(store, r, metric, x)
            if x == "time":  # wall times differ between seeds: align on the step order instead
                for i, (xv, yv) in enumerate(zip(xs, ys)):
                    per_row[i].append((xv, yv))
                continue
            for xv, yv in zip(xs, ys):
                if math.isfinite(yv):
                    per_x[xv].append(yv)
        if x == "time":
            rows = sorted(per_row)
            xs = np.array([np.mean([p[0] for p in per_row[k]]) for k in rows])
            vals = [[p[1] for p in per_row[k] if math.isfinite(p[1])] for k in rows]
        else:
            keys = sorted(per_x)
            xs = np.array(keys, dtype=float)
            vals = [per_x[k] for k in keys]
        keep = [i for i, v in enumerate(vals) if v]
        mean = np.array([np.mean(vals[i]) for i in keep])
        std = np.array([np.std(vals[i]) for i in keep])
        out[label] = (xs[keep], mean, std, len(runs))
    return out


def plot_runs(
    store: Store,
    records: Sequence[RunRecord],
    *,
    metric: str = "val_acc",
    out: str | os.PathLike = "plot.png",
    x: str = "step",
    title: str | None = None,
    logy: bool = False,
) -> Path:
    """Plot ``metric`` against ``x`` for ``records`` into ``out`` (.png or .svg); returns the path."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"plot: output {out} must end in .png or .svg")
    if not records:
        raise ValueError("plot: no runs to plot")
    curves = group_curves(store, records, metric, x)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for label, (xs, mean, std, n) in sorted(curves.items()):
            (line,) = ax.plot(xs, mean, label=f"{label} (n={n})")
            if n > 1:
                ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title or f"{metric}: mean ± 1 std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
