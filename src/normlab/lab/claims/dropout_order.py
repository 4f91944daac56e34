"""Claim 9, ``dropout-order``: dropout placed before BN hurts ("variance shift"); put it after the BN layers.

Li et al. 2019: during training, dropout scales the variance of what follows it; BN's running variance records
that training-time variance, while at test time dropout is off — the variance BN sees shifts and its normalization
is wrong. The article's remedy is an order within every block: BN before dropout. Headline arms, same dropout rate
and the same number of dropout layers (one per block): the article's Linear -> BN -> ReLU -> Dropout against
Linear -> Dropout -> BN -> ReLU. Secondary arms: Li et al.'s remedy (dropout only after the last BN) and no
dropout. Every arm (He init) runs at its own learning rate from a declared search (tuning seeds 1000+, a held-out
part of the training split). Per seed: validation accuracy, and the variance shift mean_units
|log(Var_test(BN input) / running_var)| over all BN layers.
"""

from __future__ import annotations

import math

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

VAL = "final validation accuracy"
SHIFT = "variance shift: mean |log(test variance / running variance)| at the BN layers"
# arm -> (dropout rate factor, models.mlp's dropout_position)
ARMS = {"bn-relu-dropout": (1, "after"), "dropout-bn-relu": (1, "before"), "dropout-last (Li)": (1, "last"),
        "no-dropout": (0, "after")}
SPLIT = 0  # one verdict validation split for every seed: the tuning split (its training part) never overlaps it


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    # Variance shift at the end: tools.ActivationRecorder on every BN layer, eval mode, the validation images.
    factor, position = ARMS[arm]
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm="bn",
                       model_args={"widths": cfg["widths"], "activation": "relu", "dropout": cfg["dropout"] * factor,
                                   "dropout_position": position, "init": "he"},
                       optimizer="adam", lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"],
                       eval_every=cfg["eval_every"], drop_last=True,
                       probes={"shift": {"kind": "activations", "layers": "norms", "stats": ["variance_shift"],
                                         "data": "val", "mode": "eval", "first": False, "last": True}})


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out, _, tuned, units, runs = C.run_arms(ctx, list(ARMS), _config, "he")
    res = []
    for u, r in zip(units, runs):
        per_layer = [C.num(v) for v in r.probes["shift"]["variance_shift"][-1]]
        res.append({**u, "steps": C.curve(r, "step"), "val_acc": C.curve(r, "val_acc"), "shift": C.mean(per_layer),
                    "shift_per_layer": per_layer})
    for r in res:
        out.add(VAL, r["arm"], r["seed"], r["val_acc"][-1])
        out.add(SHIFT, r["arm"], r["seed"], r["shift"])
    fig, axes = C.new_figure(2)
    for i, arm in enumerate(ARMS):
        rs = [r for r in res if r["arm"] == arm]
        C.band(axes[0], rs[0]["steps"], [r["val_acc"] for r in rs], arm, C.COLORS[i])
        layers = list(range(1, len(rs[0]["shift_per_layer"]) + 1))
        C.band(axes[1], layers, [[math.exp(v) for v in r["shift_per_layer"]] for r in rs], arm, C.COLORS[i],
               marker="o")
    axes[0].set(title="validation accuracy (eval mode)", xlabel="training step", ylim=(0, 1))
    axes[1].set(title="variance shift per BN layer", xlabel="BN layer", ylabel="exp(mean |log var ratio|)")
    axes[0].legend()
    out.figures.append(Figure("dropout-order", f"Dropout {cfg['dropout']} after every block's BN -> ReLU, before every "
                              "BN, only after the last BN (Li et al.), and none (Adam, per-arm tuned rates). "
                              "Right: geometric-mean factor between the test-time variance of each BN's "
                              "input and its running variance (1 = no shift). Line: mean over seeds; band: min..max.",
                              fig))
    out.tables.append(C.seed_table(out, (VAL, SHIFT)))
    out.measured = (f"val acc: BN -> ReLU -> dropout {C.mean(out.metrics[VAL]['bn-relu-dropout']):.3f} vs dropout -> "
                    f"BN {C.mean(out.metrics[VAL]['dropout-bn-relu']):.3f}; variance shift "
                    f"{C.mean(out.metrics[SHIFT]['bn-relu-dropout']):.3f} vs "
                    f"{C.mean(out.metrics[SHIFT]['dropout-bn-relu']):.3f}")
    return out


def _cfg(steps, eval_every, grid, tune_steps, tune_seeds):
    return {"steps": steps, "eval_every": eval_every, "batch_size": 64, "dropout": 0.5, "widths": [128, 128, 128],
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="dropout-order",
    title="Dropout before BN causes a train/test variance shift; apply BN before dropout",
    articles=(
        Quote("if Batch Normalization is applied after Dropout, it may not be able to accurately normalize the "
              "activations.", "seed article 000"),
        Quote("One solution to this problem is to apply Batch Normalization before Dropout. This ensures that the "
              "normalization is not affected by the Dropout.", "seed article 000"),
    ),
    papers=("Li et al. 2019 (arXiv:1801.05134): dropout before BN produces a 'variance shift' between training and "
            "inference that hurts test accuracy; remedy: apply dropout after all BN layers (or a variance-stable "
            "dropout such as their Uout)."),
    measures=("784-128-128-128-10 ReLU MLP (He init) with BN in every block and dropout 0.5 in every block, "
              "after BN -> ReLU (the article's order) or before BN; secondary arms: dropout only after the last BN "
              "(Li et al.'s remedy) and no dropout; Adam, batch 64, per-arm rates from a declared search. "
              "Eval-mode validation accuracy and the variance shift "
              "mean |log(test-time variance of the BN input / running variance)| over units and BN layers."),
    # Margins (declared before the runs): 0.01 of accuracy (1 point); variance shift in mean |log variance ratio|:
    # 0.05 (a 5% mismatch of the variance BN divides by, the smallest Li et al. would call a shift).
    # The variance shift is the article's mechanism ("may not be able to accurately normalize"): confirmatory.
    rule=Rule(metric=VAL, treatment="bn-relu-dropout", control="dropout-bn-relu", direction="greater",
              margin=0.01),
    secondary=(Rule(metric=SHIFT, treatment="dropout-bn-relu", control="bn-relu-dropout", direction="greater",
                    margin=0.05, confirmatory=True),
               Rule(metric=VAL, treatment="dropout-last (Li)", control="bn-relu-dropout", direction="greater",
                    margin=0.01),
               Rule(metric=VAL, treatment="bn-relu-dropout", control="no-dropout", direction="greater",
                    margin=0.01)),
    interpretation=("The headline arms apply the same dropout in every block and differ only in its place "
                    "relative to BN. Li et al.'s remedy (less dropout) and no dropout are context."),
    configs={"tiny": _cfg(8, 4, [1e-3, 3e-3], 4, 1), "quick": _cfg(600, 100, [3e-4, 1e-3, 3e-3], 300, 2),
             "full": _cfg(2000, 100, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], 1000, 3)},
    run=run,
)
