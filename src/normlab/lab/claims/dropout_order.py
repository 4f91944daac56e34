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
from .base import Claim, Context, Figure, Outcome, Quote

VAL = "final validation accuracy"
SHIFT = "variance shift: mean |log(test variance / running variance)| at the BN layers"
ARMS = {"dropout-after-bn": "last", "dropout-before-bn": "before"}


def _variance_shift(model, x) -> tuple[float, list[float]]:
    import torch

    inputs = []
    hooks = [n.register_forward_hook(lambda mod, inp, out: inputs.append(inp[0])) for n in model.norms]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was)
    per_layer = []
    for nrm, inp in zip(model.norms, inputs):
        ratio = inp.var(dim=0, unbiased=True) / nrm.running_var.clamp_min(1e-12)
        per_layer.append(float(ratio.clamp_min(1e-12).log().abs().mean()))
    return sum(per_layer) / len(per_layer), per_layer


def _unit(u: dict) -> dict:
    import torch

    torch.manual_seed(u["seed"])
    data = C.digits(u["seed"])
    model = C.MLP(784, u["widths"], norm_spec="bn", activation="relu", dropout=u["dropout"],
                  dropout_pos=ARMS[u["arm"]])
    h = C.train(model, data, steps=u["steps"], batch_size=u["batch_size"], lr=u["lr"], optimizer="adam",
                eval_every=u["eval_every"], seed=u["seed"])
    shift, per_layer = _variance_shift(model, data.x_val)
    return {**u, **h.to_dict(), "shift": shift, "shift_per_layer": per_layer}


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    units = [{"arm": arm, "seed": s, **cfg} for s in ctx.seeds for arm in ARMS]
    res = ctx.map(_unit, units)
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
    rule=Rule(metric=VAL, treatment="dropout-after-bn", control="dropout-before-bn", direction="greater"),
    secondary=(Rule(metric=SHIFT, treatment="dropout-before-bn", control="dropout-after-bn", direction="greater"),),
    interpretation=("The two arms also differ in how much dropout they apply (every block vs one); the variance-"
                    "shift rule isolates the mechanism Li et al. describe."),
    configs={"tiny": _cfg(8, 4), "quick": _cfg(600, 100), "full": _cfg(2000, 100)},
    run=run,
)
