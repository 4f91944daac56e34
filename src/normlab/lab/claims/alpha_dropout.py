"""Claim 21, ``alpha-dropout``: a dropout that keeps mean and variance (Alpha Dropout) avoids the dropout/BN
conflict.

A ReLU MLP (He init) with dropout (rate 0.5) placed before each BN (Linear -> dropout -> BN -> ReLU: the order in
which dropout's train/test variance shift reaches BN, Li et al. 2019), with standard dropout (``nn.Dropout``) or
Alpha Dropout (``nn.AlphaDropout``, Klambauer et al. 2017; the lab's ``dropout_kind="alpha"``); each arm at its own
learning rate chosen by a declared search (tuning seeds 1000+, a held-out part of the training split). Per seed:
the final validation accuracy and the variance shift at the BN layers (mean |log(test variance / running
variance)| over units, eval mode, the validation images: the lab's ``activations`` probe).
"""

from __future__ import annotations

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

VAL = "final validation accuracy"
SHIFT = "variance shift: mean |log(test variance / running variance)| at the BN layers"
ARMS = ("alpha", "standard")
SPLIT = 0


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm="bn",
                       model_args={"widths": cfg["widths"], "activation": "relu", "dropout": cfg["dropout"],
                                   "dropout_position": "before", "dropout_kind": arm, "init": "he"},
                       optimizer="adam", lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"], eval_every=cfg["eval_every"], drop_last=True,
                       probes={"shift": {"kind": "activations", "layers": "norms", "stats": ["variance_shift"],
                                         "data": "val", "mode": "eval", "first": False, "last": True}})


def run(ctx: Context) -> Outcome:
    out, _, tuned, units, runs = C.run_arms(ctx, ARMS, _config, "he")
    fig, (ax,) = C.new_figure(1, width=6.0)
    C.final_accuracy_curves(out, ax, list(ARMS), units, runs, tuned, VAL,
                            lambda arm: f"{'Alpha' if arm == 'alpha' else 'standard'} dropout before BN")
    for u, r in zip(units, runs):
        out.add(SHIFT, u["arm"], u["seed"], C.mean([C.num(v) for v in r.probes["shift"]["variance_shift"][-1]]))
    ax.set(title="dropout before BN: standard vs Alpha", xlabel="training step", ylabel="validation accuracy")
    ax.legend()
    out.figures.append(Figure("alpha-curves", "Validation accuracy of the ReLU MLP with dropout 0.5 before each BN, "
                              "standard or Alpha Dropout (Adam, per-arm tuned lr). Line: mean over seeds; band: "
                              "min..max.", fig))
    out.tables.append(C.seed_table(out, (VAL, SHIFT)))
    out.measured = (f"final validation accuracy: Alpha {C.mean(out.metrics[VAL]['alpha']):.2%} vs standard "
                    f"{C.mean(out.metrics[VAL]['standard']):.2%}; variance shift: Alpha "
                    f"{C.mean(out.metrics[SHIFT]['alpha']):.3f} vs standard "
                    f"{C.mean(out.metrics[SHIFT]['standard']):.3f}")
    return out


def _cfg(steps, eval_every, grid, tune_steps, tune_seeds, widths=(128, 128, 128)):
    return {"steps": steps, "eval_every": eval_every, "batch_size": 64, "dropout": 0.5, "widths": list(widths),
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="alpha-dropout",
    title="Alpha Dropout avoids the dropout/BN conflict",
    articles=(
        Quote("Another solution is to use a variant of Dropout that does not change the mean and variance, such as "
              "Alpha Dropout.", "seed article 000 (000_9dab5e9a010b2c52.txt)"),
    ),
    papers=("Klambauer et al. (2017, 'Self-Normalizing Neural Networks', NeurIPS) design Alpha Dropout to keep the "
            "mean and variance of *SELU* activations (zero mean, unit variance inputs); Li et al. (2019, "
            "'Understanding the Disharmony between Dropout and Batch Normalization by Variance Shift', CVPR) "
            "explain the conflict as the variance shift between training and inference."),
    measures=("784-128x3-10 ReLU MLP (He init), dropout 0.5 before each BN (standard or Alpha), Adam, each arm at "
              "its own learning rate (declared search on tuning seeds and a tuning split; criterion: final tuning-"
              "validation accuracy); final validation accuracy and the variance shift at the BN layers."),
    # Margins declared before running: 1 point of accuracy (~ the standard error of one accuracy on 1,000
    # validation images) for "avoids the conflict" in what a user sees; the variance shift (the conflict's
    # mechanism) must fall by at least 0.05 in mean |log ratio| (5% in variance), exploratory.
    rule=Rule(metric=VAL, treatment="alpha", control="standard", direction="greater", margin=0.01),
    secondary=(Rule(metric=SHIFT, treatment="alpha", control="standard", direction="less", margin=0.05),),
    interpretation=("Alpha Dropout keeps mean and variance only for standardized inputs; here it acts on Linear "
                    "outputs of a ReLU net, the setting the article has in mind (BN after dropout), not SELU's."),
    configs={"tiny": _cfg(6, 3, [1e-3, 3e-3], 4, 1, (16, 16)),
             "quick": _cfg(300, 100, [1e-3, 3e-3, 1e-2, 3e-2], 150, 2),
             "full": _cfg(2000, 200, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2], 1000, 3)},
    run=run,
    order=21,
)
