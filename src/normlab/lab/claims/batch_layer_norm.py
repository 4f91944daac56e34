"""Claim 12, ``batch-layer-norm``: batch-layer normalization (BLN) converges faster than BN and LN.

The same MLP (He init) with BLN, BN and LN (and no norm as a reference), same seeds, optimizer and steps, each arm
at its own learning rate chosen by a declared search (tuning seeds 1000+, a held-out part of the training split,
criterion: the same area under the tuning-validation accuracy curve). Convergence speed
is the mean validation accuracy over the evaluations during training (the normalized area under the accuracy
curve: higher = reached good accuracy sooner); the final accuracy is reported too.
"""

from __future__ import annotations

from ..models import norm_available
from ..train import TrainConfig
from ..tuning import Search, tune, tuning_seeds
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

AUC = "mean validation accuracy over training (area under the curve)"
VAL = "final validation accuracy"
NORMS = ("bln", "bn", "ln", "none")
LABEL = {"bln": "batch-layer norm", "bn": "BN", "ln": "LN", "none": "no norm"}


SPLIT = 0  # one verdict validation split for every seed: the tuning split (its training part) never overlaps it


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu", "init": "he"}, optimizer="sgd",
                       momentum=0.9, lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"], eval_every=cfg["eval_every"],
                       drop_last=True)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out = Outcome()
    arms = []
    for arm in NORMS:
        why = norm_available(arm)
        if why:
            out.not_run[arm] = why
        else:
            arms.append(arm)
    tuned = tune(ctx, {a: _config(a, ctx.seeds[0], cfg) for a in arms},
                 Search(grid=tuple(cfg["grid"]), seeds=tuning_seeds(cfg["tune_seeds"]), steps=cfg["tune_steps"],
                        criterion="mean_val_acc"))
    C.record_arms(out, tuned, {a: "he" for a in arms})
    units = [{"arm": a, "seed": s} for s in ctx.seeds for a in arms]
    runs = ctx.map([_config(u["arm"], u["seed"], cfg, tuned[u["arm"]][0]) for u in units])
    res = [{**u, "steps": C.curve(r, "step"), "val_acc": C.curve(r, "val_acc")} for u, r in zip(units, runs)]
    for r in res:
        out.add(AUC, r["arm"], r["seed"], C.mean(r["val_acc"][1:]))
        out.add(VAL, r["arm"], r["seed"], r["val_acc"][-1])
    fig, (ax,) = C.new_figure(1, width=6.4)
    for i, arm in enumerate(arms):
        rs = [r for r in res if r["arm"] == arm]
        C.band(ax, rs[0]["steps"], [r["val_acc"] for r in rs], LABEL[arm], C.COLORS[i],
               "--" if arm == "none" else "-")
    ax.set(title="validation accuracy during training", xlabel="training step", ylabel="accuracy", ylim=(0, 1))
    ax.legend()
    out.figures.append(Figure("convergence", f"Validation accuracy vs steps (SGD momentum 0.9, per-arm tuned lr: "
                              + ", ".join(f"{a} {tuned[a][0]:.3g}" for a in arms) + f"; batch "
                              f"{cfg['batch_size']}). Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (AUC, VAL)))
    out.measured = "accuracy AUC: " + ", ".join(f"{a} {C.mean(out.metrics[AUC][a]):.3f}" for a in arms)
    return out


def _cfg(steps, eval_every, grid, tune_steps, tune_seeds):
    return {"steps": steps, "eval_every": eval_every, "batch_size": 32, "widths": [100, 100], "grid": grid,
            "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="batch-layer-norm",
    title="Batch-layer normalization converges faster than BN and LN",
    articles=(
        Quote("BLN was discovered to have quicker convergence than conventional batch and layer normalization "
              "strategies in each Convolutional and Recurrent Neural Networks.", "seed article 002 (machine-"
              "translated: 'BLN was found to have faster convergence than traditional batch and layer "
              "normalization methods in both convolutional and recurrent neural networks')"),
    ),
    papers=("Ziaee & Cano 2022 (arXiv:2209.08898): out = gamma * [(1/B - 1e-4) * x_feature-normalized + (1 - 1/B - "
            "1e-4) * x_batch-normalized] / sqrt(d) + beta, eps 1e-3; population statistics are per-epoch averages. "
            "No quantitative table was found for the convergence claim."),
    measures=("784-100-100-10 ReLU MLP (He init) with BLN, BN, LN or no norm before each ReLU; SGD momentum 0.9, "
              "batch 32, each arm at its own rate (declared search on tuning seeds and a tuning split); mean eval-mode "
              "validation accuracy over the evaluations (every 25 steps) and final "
              "accuracy."),
    # Margins (declared before the runs): 0.01 (1 accuracy point) on the accuracy averaged over training and on
    # the final accuracy: the smallest improvement over BN or LN worth adopting a new layer for. BLN vs LN is the
    # article's other half ("combines the advantages of both"): confirmatory.
    rule=Rule(metric=AUC, treatment="bln", control="bn", direction="greater", margin=0.01),
    secondary=(Rule(metric=AUC, treatment="bln", control="ln", direction="greater", margin=0.01, confirmatory=True),
               Rule(metric=VAL, treatment="bln", control="bn", direction="greater", margin=0.01)),
    configs={"tiny": _cfg(8, 4, [0.01, 0.1], 4, 1), "quick": _cfg(600, 25, [0.006, 0.02, 0.06], 300, 2),
             "full": _cfg(2500, 50, [0.002, 0.006, 0.02, 0.06, 0.2], 1000, 3)},
    run=run,
)
