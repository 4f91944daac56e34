"""Claim 9, ``dropout-order``: dropout placed before BN hurts ("variance shift"); put it after the BN layers.

Li et al. 2019: during training, dropout scales the variance of what follows it; BN's running variance records
that training-time variance, while at test time dropout is off — the variance BN sees shifts and its normalization
is wrong. Two arms with the same dropout rate: dropout before every BN (Linear -> Dropout -> BN -> ReLU) and
dropout only after the last BN (before the classifier). Per seed: validation accuracy, and the variance shift
mean_units |log(Var_test(BN input) / running_var)| over all BN layers.
"""

from __future__ import annotations

import math

from ..verdict import Rule
from . import _common as C
from ..train import TrainConfig
from .base import Claim, Context, Figure, Outcome, Quote

VAL = "final validation accuracy"
SHIFT = "variance shift: mean |log(test variance / running variance)| at the BN layers"
ARMS = {"dropout-after-bn": "last", "dropout-before-bn": "before"}


def _config(arm: str, seed: int, cfg: dict) -> TrainConfig:
    # Variance shift at the end: tools.ActivationRecorder on every BN layer, eval mode, the validation images.
    return TrainConfig(data="mnist5k", split_seed=seed, seed=seed, model="mlp", norm="bn",
                       model_args={"widths": cfg["widths"], "activation": "relu", "dropout": cfg["dropout"],
                                   "dropout_position": ARMS[arm]},
                       optimizer="adam", lr=cfg["lr"], batch_size=cfg["batch_size"], steps=cfg["steps"],
                       eval_every=cfg["eval_every"], drop_last=True,
                       probes={"shift": {"kind": "activations", "layers": "norms", "stats": ["variance_shift"],
                                         "data": "val", "mode": "eval", "first": False, "last": True}})


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    units = [{"arm": arm, "seed": s} for s in ctx.seeds for arm in ARMS]
    runs = ctx.map([_config(u["arm"], u["seed"], cfg) for u in units])
    res = []
    for u, r in zip(units, runs):
        per_layer = [C.num(v) for v in r.probes["shift"]["variance_shift"][-1]]
        res.append({**u, "steps": C.curve(r, "step"), "val_acc": C.curve(r, "val_acc"), "shift": C.mean(per_layer),
                    "shift_per_layer": per_layer})
    out = Outcome()
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
    out.figures.append(Figure("dropout-order", f"Dropout {cfg['dropout']} before every BN vs only after the last BN "
                              "(Adam). Right: geometric-mean factor between the test-time variance of each BN's "
                              "input and its running variance (1 = no shift). Line: mean over seeds; band: min..max.",
                              fig))
    out.tables.append(C.seed_table(out, (VAL, SHIFT)))
    out.measured = (f"val acc: dropout after BN {C.mean(out.metrics[VAL]['dropout-after-bn']):.3f} vs before "
                    f"{C.mean(out.metrics[VAL]['dropout-before-bn']):.3f}; variance shift "
                    f"{C.mean(out.metrics[SHIFT]['dropout-after-bn']):.3f} vs "
                    f"{C.mean(out.metrics[SHIFT]['dropout-before-bn']):.3f}")
    return out


def _cfg(steps, eval_every):
    return {"steps": steps, "eval_every": eval_every, "batch_size": 64, "lr": 1e-3, "dropout": 0.5,
            "widths": [128, 128, 128]}


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
    measures=("784-128-128-128-10 ReLU MLP with BN in every block and dropout 0.5, either before every BN or only "
              "after the last one; Adam 1e-3, batch 64. Eval-mode validation accuracy and the variance shift "
              "mean |log(test-time variance of the BN input / running variance)| over units and BN layers."),
    # Margins (declared before the runs): 0.01 of accuracy (1 point); variance shift in mean |log variance ratio|:
    # 0.05 (a 5% mismatch of the variance BN divides by, the smallest Li et al. would call a shift).
    rule=Rule(metric=VAL, treatment="dropout-after-bn", control="dropout-before-bn", direction="greater",
              margin=0.01),
    secondary=(Rule(metric=SHIFT, treatment="dropout-before-bn", control="dropout-after-bn", direction="greater",
                    margin=0.05),),
    interpretation=("The two arms also differ in how much dropout they apply (every block vs one); the variance-"
                    "shift rule isolates the mechanism Li et al. describe."),
    configs={"tiny": _cfg(8, 4), "quick": _cfg(600, 100), "full": _cfg(2000, 100)},
    run=run,
)
