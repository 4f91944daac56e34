"""Claim 2, ``higher-learning-rates``: BN lets a network train at learning rates that make it diverge without BN.

A learning-rate sweep (plain SGD, same seeds, same steps) of a 4-hidden-layer ReLU MLP with and without BN. Per
seed: the largest rate whose run reaches the target validation accuracy (in log10 units), and the accuracy at
every rate.
"""

from __future__ import annotations

import math

from ..verdict import Rule
from . import _common as C
from ..train import TrainConfig
from .base import Claim, Context, Figure, Outcome, Quote

TARGET = 0.85
PRIMARY = f"log10 of the largest learning rate reaching {TARGET:.0%} validation accuracy"
MEAN_ACC = "validation accuracy averaged over the learning-rate grid"


def _config(arm: str, seed: int, lr: float, cfg: dict) -> TrainConfig:
    return TrainConfig(data="mnist5k", split_seed=seed, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu"}, optimizer="sgd", lr=lr,
                       batch_size=cfg["batch_size"], steps=cfg["steps"], eval_every=cfg["steps"], drop_last=True)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    lrs = cfg["lrs"]
    units = [{"arm": arm, "seed": s, "lr": lr} for s in ctx.seeds for arm in ("bn", "none") for lr in lrs]
    runs = ctx.map([_config(u["arm"], u["seed"], u["lr"], cfg) for u in units])
    res = [{**u, "val_acc": C.curve(r, "val_acc")[-1], "diverged_at": r.diverged_step} for u, r in zip(units, runs)]
    out = Outcome()
    floor = math.log10(min(lrs)) - 0.5  # no rate on the grid trains: below the grid
    for arm in ("bn", "none"):
        for s in ctx.seeds:
            rs = [r for r in res if r["arm"] == arm and r["seed"] == s]
            good = [r["lr"] for r in rs if r["diverged_at"] is None and r["val_acc"] >= TARGET]
            out.add(PRIMARY, arm, s, math.log10(max(good)) if good else floor)
            out.add(MEAN_ACC, arm, s, C.mean([r["val_acc"] for r in rs]))
    diverged = {arm: sum(r["diverged_at"] is not None for r in res if r["arm"] == arm) for arm in ("bn", "none")}
    fig, (ax,) = C.new_figure(1, width=6.0)
    for i, arm in enumerate(("bn", "none")):
        runs = [[next(r["val_acc"] for r in res if r["arm"] == arm and r["seed"] == s and r["lr"] == lr)
                 for lr in lrs] for s in ctx.seeds]
        C.band(ax, lrs, runs, "with BN" if arm == "bn" else "without BN", C.COLORS[i], marker="o")
    ax.axhline(TARGET, color="gray", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="learning rate (SGD)", ylabel="final validation accuracy", ylim=(0, 1),
           title=f"Accuracy after {cfg['steps']} steps vs learning rate")
    ax.legend()
    out.figures.append(Figure("lr-sweep", "Final validation accuracy per learning rate (diverged runs keep their last "
                              "evaluated accuracy). Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (PRIMARY, MEAN_ACC)))
    out.notes.append(f"diverged runs (non-finite loss, stopped by the engine): with BN {diverged['bn']}, without {diverged['none']} "
                     f"of {len(lrs) * len(ctx.seeds)} each")
    b, n = (10 ** C.mean(out.metrics[PRIMARY][a]) for a in ("bn", "none"))
    out.measured = f"largest rate reaching {TARGET:.0%}: BN ~{b:.3g} vs none ~{n:.3g} (geometric mean over seeds)"
    return out


def _cfg(lrs, steps):
    return {"lrs": lrs, "steps": steps, "batch_size": 64, "widths": [100, 100, 100, 100]}


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
    measures=("Learning-rate sweep (plain SGD, batch 64, fixed step budget) of a 784-100-100-100-100-10 ReLU MLP "
              "with BN before each ReLU vs without; per seed the largest rate whose final validation accuracy "
              f"reaches {TARGET:.0%} without diverging (log10; below the grid if none does), and the accuracy "
              "averaged over the grid."),
    rule=Rule(metric=PRIMARY, treatment="bn", control="none", direction="greater", unit=" decades"),
    secondary=(Rule(metric=MEAN_ACC, treatment="bn", control="none", direction="greater"),),
    interpretation="The grid is a factor ~3 apart, so one grid step is ~0.5 decade; the effect is quantized.",
    configs={"tiny": _cfg([0.1, 3.0], 10), "quick": _cfg([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], 300),
             "full": _cfg([0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0], 800)},
    run=run,
)
