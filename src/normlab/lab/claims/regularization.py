"""Claim 4, ``regularization``: BN regularizes (like dropout), narrowing the train/validation gap.

A ReLU MLP is trained to overfit a small training set (1,000 images) in six arms: neither, BN, dropout, both, a
noise-free BN (Full Normalization, Lian & Liu 2019: the dataset's moments in value, the batch's in gradient, so the
forward pass carries no mini-batch noise) and LN (no batch statistics at all). Every arm is evaluated at inference
with population statistics (its batch norms recalibrated on the whole training set: ``normlab.lab.probes``
``population``, pooled); a network without batch norm is evaluated as it is. Per seed: validation loss and accuracy
(co-primary, declared before the runs), the generalization gap (validation minus training loss, eval mode). Every
arm (He init) runs at its own learning rate from a declared search (tuning seeds 1000+, a held-out part of the small
training set; criterion: final tuning-validation accuracy).
"""

from __future__ import annotations

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

VAL_LOSS = "final validation loss (population statistics)"
GAP = "validation - training loss gap at the end (eval mode)"
ACC_GAP = "train - validation accuracy gap at the end"
VAL = "final validation accuracy (population statistics)"
ARMS = {"neither": ("none", 0.0), "bn": ("bn", 0.0), "dropout": ("none", 0.5), "bn+dropout": ("bn", 0.5),
        "bn_noisefree": ("fn", 0.0), "ln": ("ln", 0.0)}


SPLIT = 0  # one verdict validation split for every seed: the tuning split (its training part) never overlaps it


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    spec, p = ARMS[arm]
    return TrainConfig(data="mnist5k", data_args={"train_size": cfg["n_train"]}, split_seed=SPLIT, seed=seed,
                       model="mlp", norm=spec,
                       model_args={"widths": cfg["widths"], "activation": "relu", "dropout": p, "init": "he"},
                       optimizer="adam", lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"],
                       eval_every=cfg["eval_every"], drop_last=True,
                       probes={"train_eval": {"kind": "eval_train", "n": cfg["n_train"]},
                               # inference with population statistics of the whole (small) training set, pooled
                               "population": {"kind": "population", "n": cfg["n_train"], "batch": 200,
                                              "average": "pooled", "every": 0, "first": False}})


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out, _, tuned, units, runs = C.run_arms(ctx, list(ARMS), _config, "he")
    res = [{**u, "steps": C.curve(r, "step"), "val_loss": C.curve(r, "val_loss"), "val_acc": C.curve(r, "val_acc"),
            "train_eval_loss": [C.num(v) for v in r.probes["train_eval"]["loss"]],
            "train_acc": [C.num(v) for v in r.probes["train_eval"]["acc"]],
            "pop_loss": C.num(r.probes["population"]["val_loss"][-1]),
            "pop_acc": C.num(r.probes["population"]["val_acc"][-1])} for u, r in zip(units, runs)]
    for r in res:
        out.add(GAP, r["arm"], r["seed"], r["val_loss"][-1] - r["train_eval_loss"][-1])
        out.add(ACC_GAP, r["arm"], r["seed"], r["train_acc"][-1] - r["val_acc"][-1])
        out.add(VAL, r["arm"], r["seed"], r["pop_acc"])
        out.add(VAL_LOSS, r["arm"], r["seed"], r["pop_loss"])
    fig, axes = C.new_figure(2)
    for i, arm in enumerate(ARMS):
        rs = [r for r in res if r["arm"] == arm]
        C.band(axes[0], rs[0]["steps"], [[a - b for a, b in zip(r["val_loss"], r["train_eval_loss"])] for r in rs],
               arm, C.COLORS[i])
        C.band(axes[1], rs[0]["steps"], [r["val_loss"] for r in rs], arm, C.COLORS[i])
    axes[0].set(title="validation - training loss (eval mode, running averages)", xlabel="training step", ylabel="gap")
    axes[1].set(title="validation loss", xlabel="training step", ylabel="cross-entropy")
    axes[0].legend()
    out.figures.append(Figure("gap", f"Generalization gap and validation loss on a {cfg['n_train']}-image training "
                              "set (Adam, per-arm tuned rates). Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (VAL_LOSS, VAL, GAP, ACC_GAP)))
    g = {a: C.mean(out.metrics[VAL_LOSS][a]) for a in ARMS}
    out.measured = "final validation loss: " + ", ".join(f"{a} {v:.3f}" for a, v in g.items())
    return out


def _cfg(steps, eval_every, grid, tune_steps, tune_seeds):
    return {"steps": steps, "eval_every": eval_every, "batch_size": 32, "n_train": 1000, "widths": [256, 256],
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="regularization",
    title="BN acts as a regularizer (smaller train/validation gap)",
    articles=(
        Quote("Batch Normalization also plays a role in reducing overfitting. It introduces a slight regularization "
              "effect by adding a bit of noise to the hidden layer activations, akin to the noise introduced by "
              "Dropout.", "seed article 000"),
        Quote("Introduces regularization: Batch normalization all provides some sort of regularization to the neural "
              "network which increases the generalization capabilities on the network.", "seed article 001"),
        Quote("Regularization Effect: Despite being primarily a normalization technique, BatchNorm also has a "
              "regularization effect similar to dropout because it imparts some level of noise due to mini-batch "
              "variations.", "seed article 004"),
    ),
    papers=("Ioffe & Szegedy 2015: in Inception with BN, dropout could be removed or reduced (the regularizing "
            "effect comes from each example being normalized with its mini-batch's statistics)."),
    measures=("784-256-256-10 ReLU MLP (He init) trained to overfit 1,000 training images (Adam at per-arm rates "
              "from a declared search, batch 32); arms: "
              "neither, BN (after each Linear), dropout 0.5 (after each ReLU), both, noise-free BN (Full "
              "Normalization) and LN. Co-primary: validation loss and accuracy at the end, every batch norm "
              "recalibrated to the training set's population statistics. Gap = training accuracy minus "
              "validation accuracy; loss gap = validation minus training cross-entropy; both in eval mode, at the "
              "end."),
    # Margins (declared before the runs): 0.02 nats of validation-minus-training loss gap (below that a change of
    # overfitting is invisible in a loss curve); 0.01 of accuracy (1 point: the smallest accuracy gain worth
    # reporting, ~ the standard error of one accuracy on 1,000 validation images). Validation accuracy is
    # co-primary (the regularizing effect must show on held-out data): confirmatory; the dropout and accuracy-gap
    # comparisons are context, exploratory.
    # Item 4 of issue 12 (declared before the six-arm runs): validation loss and accuracy are co-primary (Holm over
    # the two): 0.02 nats of validation loss (the loss-gap margin) and 1 point of accuracy. The mechanism (the
    # articles: the regularization comes from mini-batch noise) is tested against the noise-free BN and LN arms,
    # which keep normalization without batch noise: BN below each by 0.02 nats, exploratory. The loss gap, first
    # the primary, is now an exploratory secondary.
    rule=Rule(metric=VAL_LOSS, treatment="bn", control="neither", direction="less", margin=0.02),
    secondary=(
        Rule(metric=VAL, treatment="bn", control="neither", direction="greater", margin=0.01, confirmatory=True),
        Rule(metric=VAL_LOSS, treatment="bn", control="bn_noisefree", direction="less", margin=0.02),
        Rule(metric=VAL_LOSS, treatment="bn", control="ln", direction="less", margin=0.02),
        Rule(metric=GAP, treatment="bn", control="neither", direction="less", margin=0.02),
        Rule(metric=GAP, treatment="dropout", control="neither", direction="less", margin=0.02),
        Rule(metric=GAP, treatment="bn+dropout", control="bn", direction="less", margin=0.02),
        Rule(metric=ACC_GAP, treatment="bn", control="neither", direction="less", margin=0.01),
    ),
    interpretation=("The primary metric was first the accuracy gap; a pilot run showed training accuracy saturating "
                    "at 100% in every arm, which leaves the accuracy gap blind to overfitting, so the loss gap "
                    "became primary and the accuracy gap is kept as a secondary rule. Issue 12 then made "
                    "validation loss and accuracy co-primary (declared before the runs with the noise-free BN and "
                    "LN arms); the loss gap is an exploratory secondary. If BN beats no norm but not the noise-free "
                    "BN or LN, its benefit here is normalization, not mini-batch noise."),
    configs={"tiny": _cfg(10, 5, [1e-3, 3e-3], 4, 1), "quick": _cfg(600, 100, [3e-4, 1e-3, 3e-3], 300, 2),
             "full": _cfg(1500, 100, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], 600, 2)},
    run=run,
)
