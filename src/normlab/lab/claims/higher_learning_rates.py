"""Claim 2, ``higher-learning-rates``: BN lets a network train at learning rates that make it diverge without BN.

A 4-hidden-layer ReLU MLP (He init) with and without BN, plain SGD, a fixed step budget. Per seed and arm: the
largest learning rate whose run reaches the target validation accuracy without diverging, found by bisection in
log10 above the largest stable rate of a declared grid (:func:`normlab.lab.tuning.bisect_stable_lr`), so seeds
can differ by less than a grid step (log10 units).
"""

from __future__ import annotations

import math
from typing import Any

from ..train import TrainConfig
from ..tuning import bisect_stable_lr
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote, Table

TARGET = 0.85
PRIMARY = f"log10 of the largest learning rate reaching {TARGET:.0%} validation accuracy"
ARMS = ("bn", "none")


def _config(arm: str, seed: int, lr: float, cfg: dict) -> TrainConfig:
    return TrainConfig(data="mnist5k", split_seed=0, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu", "init": "he"}, optimizer="sgd",
                       lr=lr, batch_size=cfg["batch_size"], steps=cfg["steps"], eval_every=cfg["steps"],
                       drop_last=True)


def _ok(result) -> bool:
    return result.diverged_step is None and float(result.evals[-1]["val_acc"]) >= TARGET


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    units: list[dict[str, Any]] = [{"arm": arm, "seed": s} for s in ctx.seeds for arm in ARMS]
    grid = cfg["grid"]
    rates, trails = bisect_stable_lr(ctx, [_config(u["arm"], u["seed"], grid[0], cfg) for u in units], _ok, grid,
                                     cfg["rounds"])
    out = Outcome()
    for u, rate in zip(units, rates):
        out.add(PRIMARY, u["arm"], u["seed"], math.log10(rate))
    width = max(math.log10(b / a) for a, b in zip(grid, grid[1:])) / 2 ** cfg["rounds"]
    # results.json's arms[]: the rate this claim reports per arm is its largest stable one (geometric mean over
    # seeds), and the search that found it is the per-seed bisection.
    out.arms = {a: {"lr": 10 ** C.mean(out.metrics[PRIMARY][a]),
                    "tuning": {"method": "grid scan, then bisection in log10 above the largest stable grid rate, "
                                         "per seed", "grid": list(grid),
                               "rounds": cfg["rounds"], "resolution_decades": width,
                               "criterion": f"no divergence and final validation accuracy >= {TARGET}",
                               "per_seed": {str(u["seed"]): [[r, f] for r, f in t]
                                            for u, t in zip(units, trails) if u["arm"] == a}},
                    "init": "he"} for a in ARMS}
    fig, (ax,) = C.new_figure(1, width=6.0)
    for i, arm in enumerate(ARMS):
        for j, t in enumerate(t for u, t in zip(units, trails) if u["arm"] == arm):
            ax.scatter([r for r, _ in t], [1.04 + 0.02 * i if f else -0.04 - 0.02 * i for _, f in t], s=14,
                       color=C.COLORS[i], marker="o" if arm == "bn" else "s",
                       label=("with BN" if arm == "bn" else "without BN") if j == 0 else None)
        ax.axvline(10 ** C.mean(out.metrics[PRIMARY][arm]), color=C.COLORS[i], ls="--", lw=1)
    ax.set(xscale="log", xlabel="learning rate (SGD)", ylabel="run stable (1) / not (0)", ylim=(-0.2, 1.2),
           title=f"Bisection of the largest rate reaching {TARGET:.0%} in {cfg['steps']} steps")
    ax.legend()
    out.figures.append(Figure("lr-bisection", "Every rate tried by the per-seed bisection (top: reached the target "
                              "without diverging; bottom: did not). Dashed: the geometric mean over seeds of the "
                              "largest stable rate.", fig))
    out.tables.append(C.seed_table(out, (PRIMARY,)))
    out.tables.append(Table("Bisection trails (rate: stable?)", ("arm", "seed", "trail"),
                            tuple((u["arm"], str(u["seed"]), ", ".join(f"{r:.3g}:{'y' if f else 'n'}" for r, f in t))
                                  for u, t in zip(units, trails))))
    out.notes.append(f"bisection resolution: {width:.3f} decades (grid {grid}, then {cfg['rounds']} bisection rounds); "
                     f"a value {math.log10(grid[0]) - 0.5:.2f} means no grid rate worked, "
                     f"{math.log10(grid[-1]):.2f} that the largest did (censored)")
    b, n = (10 ** C.mean(out.metrics[PRIMARY][a]) for a in ARMS)
    out.measured = f"largest rate reaching {TARGET:.0%}: BN ~{b:.3g} vs none ~{n:.3g} (geometric mean over seeds)"
    return out


def _cfg(grid, rounds, steps):
    return {"grid": grid, "rounds": rounds, "steps": steps, "batch_size": 64,
            "widths": [100, 100, 100, 100]}


CLAIM = Claim(
    id="higher-learning-rates",
    title="BN allows higher learning rates",
    articles=(
        Quote("One of the primary advantages of Batch Normalization is that it allows for higher learning rates.",
              "seed article 000 (Dagshub glossary)"),
        Quote("if we normalize the output of each layer, we can safely use higher learning rate due to which we can "
              "drastically reduce the training period.", "seed article 001"),
        Quote("Higher Learning Rates: BatchNorm allows the use of higher learning rates, which can accelerate "
              "training and result in more effective optimization.", "seed article 004"),
    ),
    papers=("Ioffe & Szegedy 2015: Inception with BN trained with a 5x (and 30x) larger learning rate reached 72.2% "
            "in 2.1M steps vs 31.0M for the baseline; the same 5x rate without BN diverged (per the anchors)."),
    measures=("Plain SGD, batch 64, fixed step budget, a 784-100-100-100-100-10 ReLU MLP (He init) with BN before "
              "each ReLU vs without; per seed the largest rate whose final validation accuracy reaches "
              f"{TARGET:.0%} without diverging: a scan of a decade grid, then bisection in log10 above its "
              "largest stable rate (log10 units; censored below/above the grid)."),
    # Margin, declared before the bisection runs: 0.25 decade (a factor ~1.8). A gain smaller than that is inside
    # the factor-of-3 grid practitioners sweep, so it would not let anyone use a "higher learning rate"; the quick
    # bisection resolves 0.125 decade.
    rule=Rule(metric=PRIMARY, treatment="bn", control="none", direction="greater", margin=0.25, unit=" decades"),
    interpretation=("The bisection assumes a run is stable at every rate between the largest stable grid rate and "
                    "its bisected boundary; the trail of every seed is in the tables."),
    configs={"tiny": _cfg([0.1, 3.0], 1, 10), "quick": _cfg([0.01, 0.1, 1.0, 10.0], 3, 300),
             "full": _cfg([0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0], 4, 800)},
    run=run,
)
