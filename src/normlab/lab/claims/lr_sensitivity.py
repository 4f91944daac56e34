"""Claim 16, ``lr-sensitivity``: with BN the learning rate becomes less sensitive.

A ReLU MLP (He init) with BN before each ReLU or without any norm is trained at every rate of a declared
log-spaced grid (SGD with momentum 0.9), every seed at every rate. Per (arm, seed): the width of the near-best
range, i.e. how many decades of the grid reach a final validation accuracy within ``tolerance`` of that seed's
best rate (the number of such grid rates times the grid's spacing in decades; a diverged run is never near-best).
No per-arm tuning: the sweep covers every rate of the grid for both arms, which is what the sentence is about.
"""

from __future__ import annotations

import math
from typing import Any

from ..train import TrainConfig
from ..tuning import log_grid
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote, Table

WIDTH = "width of the near-best learning-rate range (decades)"
BEST = "best final validation accuracy over the grid"
ARMS = ("bn", "none")
SPLIT = 0


def _grid(cfg: dict) -> tuple[float, ...]:
    return log_grid(cfg["low"], cfg["high"], cfg["points"])


def _spacing(cfg: dict) -> float:
    return (math.log10(cfg["high"]) - math.log10(cfg["low"])) / (cfg["points"] - 1)


def _config(arm: str, seed: int, lr: float, cfg: dict) -> TrainConfig:
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu", "init": "he"}, optimizer="sgd",
                       momentum=0.9, lr=lr, batch_size=cfg["batch_size"], steps=cfg["steps"],
                       eval_every=cfg["steps"], drop_last=True)


def near_best_width(accs: list[float | None], spacing: float, tolerance: float) -> float:
    """Decades of the grid whose accuracy is within ``tolerance`` of the best: count x ``spacing``. ``None`` (a
    diverged run) or NaN is never near-best; no finite accuracy at all gives 0."""
    finite = [a for a in accs if a is not None and math.isfinite(a)]
    if not finite:
        return 0.0
    best = max(finite)
    return spacing * sum(a >= best - tolerance for a in finite)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    grid, spacing = _grid(cfg), _spacing(cfg)
    units: list[dict[str, Any]] = [{"arm": a, "seed": s, "lr": lr} for s in ctx.seeds for a in ARMS for lr in grid]
    runs = ctx.map([_config(u["arm"], u["seed"], u["lr"], cfg) for u in units])
    acc: dict[tuple[str, int], list[float | None]] = {}
    for u, r in zip(units, runs):
        v = None if r.diverged_step is not None else C.curve(r, "val_acc")[-1]
        acc.setdefault((u["arm"], u["seed"]), []).append(v)
    out = Outcome()
    for (arm, seed), accs in acc.items():
        out.add(WIDTH, arm, seed, near_best_width(accs, spacing, cfg["tolerance"]))
        out.add(BEST, arm, seed, max((a for a in accs if a is not None and math.isfinite(a)), default=math.nan))
    fig, (ax,) = C.new_figure(1, width=6.0)
    for i, arm in enumerate(ARMS):
        C.band(ax, list(grid), [[math.nan if a is None else a for a in acc[(arm, s)]] for s in ctx.seeds],
               "with BN" if arm == "bn" else "without BN", C.COLORS[i], marker="o")
    ax.set(xscale="log", title="final accuracy across the learning-rate grid", xlabel="learning rate",
           ylabel="validation accuracy")
    ax.legend()
    out.figures.append(Figure("lr-grid", f"Final validation accuracy at every rate of the grid (SGD momentum 0.9, "
                              f"{cfg['steps']} steps). Line: mean over seeds; band: min..max; a diverged run is "
                              f"left out of the line and never counts as near-best.", fig))
    rows = tuple((arm, f"{lr:.3g}", ", ".join("diverged" if acc[(arm, s)][j] is None else f"{acc[(arm, s)][j]:.4f}"
                                               for s in ctx.seeds))
                 for arm in ARMS for j, lr in enumerate(grid))
    out.tables.append(Table("Final validation accuracy per rate and seed", ("arm", "lr", "per seed"), rows))
    out.tables.append(C.seed_table(out, (WIDTH, BEST)))
    out.notes.append(f"grid: {len(grid)} rates from {grid[0]:.3g} to {grid[-1]:.3g}, {spacing:.3g} decades apart; "
                     f"near-best = within {cfg['tolerance']:.0%} accuracy of the seed's best rate")
    out.measured = (f"near-best range: BN {C.mean(out.metrics[WIDTH]['bn']):.2f} decades vs none "
                    f"{C.mean(out.metrics[WIDTH]['none']):.2f}")
    return out


def _cfg(steps, points, low=1e-3, high=3.16, widths=(100, 100, 100), tolerance=0.02):
    return {"widths": list(widths), "steps": steps, "batch_size": 64, "low": low, "high": high, "points": points,
            "tolerance": tolerance}


CLAIM = Claim(
    id="lr-sensitivity",
    title="With BN the learning rate becomes less sensitive",
    articles=(
        Quote("Consequently, networks can be trained more robustly, and the learning rate hyperparameter becomes less "
              "sensitive, making the optimization process smoother.", "seed article 000 (000_9dab5e9a010b2c52.txt)"),
    ),
    papers=("Ioffe & Szegedy (2015, Sec. 3.3): BN makes back-propagation through a layer invariant to the scale of "
            "its weights, so larger rates do not blow up; Bjorck et al. (2018, 'Understanding Batch Normalization') "
            "show BN networks train over a wider range of rates. No paper states a width in decades."),
    measures=("784-100x3-10 ReLU MLP (He init), BN before each ReLU or none, SGD with momentum 0.9 at every rate of "
              "a log-spaced grid (1e-3 to 3.16, half a decade apart at --quick), every seed at every rate; per "
              "seed the width in decades of the rates whose final validation accuracy is within 2 points of that "
              "seed's best."),
    # Margin declared before running: one grid step (half a decade at --quick and --full), the resolution of the
    # measure; a smaller difference is one rate more or less, which the grid cannot tell from noise.
    rule=Rule(metric=WIDTH, treatment="bn", control="none", direction="greater", margin=0.5, unit=" decades"),
    secondary=(Rule(metric=BEST, treatment="bn", control="none", direction="greater", margin=0.01),),
    interpretation=("The width depends on the tolerance (2 points), the training budget and the grid's range; a "
                    "rate range that is wide after a short budget may narrow with longer training."),
    configs={"tiny": _cfg(4, 3, 0.01, 1.0, (16, 16)), "quick": _cfg(200, 8), "full": _cfg(1000, 8)},
    run=run,
    order=16,
)
