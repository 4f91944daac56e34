"""Claim 22, ``replaces-dropout``: BN can work as well as dropout, in some cases removing the need for it.

A ReLU MLP (He init) on 5,000 MNIST images (where regularization matters), three arms: BN before each ReLU and no
dropout; no norm with dropout 0.5 after each ReLU; BN and dropout together. Each arm at its own learning rate
chosen by a declared search (tuning seeds 1000+, a held-out part of the training split). Per seed: the final
validation accuracy.
"""

from __future__ import annotations

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

VAL = "final validation accuracy"
ARMS = {"bn": ("bn", 0.0), "dropout": ("none", 1.0), "bn+dropout": ("bn", 1.0)}  # arm -> (norm, dropout factor)
SPLIT = 0


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    norm, factor = ARMS[arm]
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm=norm,
                       model_args={"widths": cfg["widths"], "activation": "relu", "init": "he",
                                   "dropout": cfg["dropout"] * factor},
                       optimizer="adam", lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"], eval_every=cfg["eval_every"], drop_last=True)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out, _, tuned, units, runs = C.run_arms(ctx, list(ARMS), _config, "he")
    fig, (ax,) = C.new_figure(1, width=6.0)
    C.final_accuracy_curves(out, ax, list(ARMS), units, runs, tuned, VAL)
    ax.set(title="BN instead of dropout", xlabel="training step", ylabel="validation accuracy")
    ax.legend()
    out.figures.append(Figure("curves", f"Validation accuracy: BN without dropout, dropout {cfg['dropout']} without a "
                              "norm, and both (Adam, per-arm tuned lr). Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (VAL,)))
    out.measured = "final validation accuracy: " + ", ".join(f"{a} {C.mean(out.metrics[VAL][a]):.2%}" for a in ARMS)
    return out


def _cfg(steps, eval_every, grid, tune_steps, tune_seeds, widths=(256, 256)):
    return {"steps": steps, "eval_every": eval_every, "batch_size": 64, "dropout": 0.5, "widths": list(widths),
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="replaces-dropout",
    title="BN can replace dropout",
    articles=(
        Quote("This leads to higher learning rates and less careful initialization, and acts as a form of "
              "regularization, in some cases eliminating the need for Dropout.",
              "seed article 000 (000_9dab5e9a010b2c52.txt)"),
        Quote("In some circumstances, it has been proven to work in addition to dropout, which is a typical "
              "regularization approach.", "seed article 002 (002_2ca648713b604fad.txt; machine-translated: 'it "
              "has been shown to work as well as dropout')"),
    ),
    papers=("Ioffe & Szegedy (2015, Sec. 4.2.1) removed dropout from the BN-Inception network without losing "
            "accuracy ('removing Dropout from Modified BN-Inception speeds up training, without increasing "
            "overfitting'); no general equivalence is claimed."),
    measures=("784-256x2-10 ReLU MLP (He init), BN and no dropout vs no norm and dropout 0.5 (and both), Adam, "
              "each arm at its own learning rate (declared search on tuning seeds and a tuning split; criterion: "
              "final tuning-validation accuracy); final validation accuracy."),
    # Margin declared before running: 1 point of accuracy (~ the standard error of one accuracy on 1,000
    # validation images). "Works as well as dropout" = BN without dropout is at most 1 point below dropout
    # without BN (non-inferiority); "removing the need" (adding dropout to BN gains more than 1 point) is the
    # exploratory secondary rule, predicted *not* to hold.
    rule=Rule(metric=VAL, treatment="bn", control="dropout", direction="greater", margin=0.01,
              kind="noninferiority"),
    secondary=(Rule(metric=VAL, treatment="bn+dropout", control="bn", direction="greater", margin=0.01),),
    interpretation=("One small MLP on 5,000 images; 'in some cases' cannot be refuted by one case, only "
                    "illustrated."),
    configs={"tiny": _cfg(6, 3, [1e-3, 3e-3], 4, 1, (16, 16)),
             "quick": _cfg(300, 100, [3e-4, 1e-3, 3e-3, 1e-2], 150, 2),
             "full": _cfg(2000, 200, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2], 1000, 3)},
    run=run,
    order=22,
)
