"""Claim 19, ``running-average-normalization``: normalizing with running averages instead of batch statistics
solves small batches.

A ReLU MLP (He init) trained with mini-batches of ``batch_size`` (4 at --quick) and, before each ReLU, one of:
BN (batch statistics), the naive running-average normalization the article describes (``"ran"``,
:class:`~normlab.nn.RunningAverageNorm`: normalizes with the running averages in training too, no gradient through
them), and MABN proper (``"mabn"``, Yan et al. 2020, :class:`~normlab.nn.MovingAverageBatchNorm`). Each arm at its
own learning rate chosen by a declared search (tuning seeds 1000+, a held-out part of the training split). Per
seed: the final validation accuracy.
"""

from __future__ import annotations

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

VAL = "final validation accuracy"
ARMS = ("ran", "bn", "mabn")
LABEL = {"ran": "running-average norm (naive)", "bn": "BN (batch statistics)", "mabn": "MABN (Yan et al.)"}
SPLIT = 0


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu", "init": "he"}, optimizer="sgd",
                       momentum=0.9, lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"], eval_every=cfg["eval_every"], drop_last=True)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out, arms, tuned, units, runs = C.run_arms(ctx, ARMS, _config, "he", str)
    fig, (ax,) = C.new_figure(1, width=6.0)
    C.final_accuracy_curves(out, ax, arms, units, runs, tuned, VAL, LABEL.__getitem__)
    ax.set(title=f"batch size {cfg['batch_size']}", xlabel="training step", ylabel="validation accuracy")
    ax.legend()
    out.figures.append(Figure("small-batch-curves", f"Validation accuracy with mini-batches of {cfg['batch_size']} "
                              "(SGD momentum 0.9, per-arm tuned lr). Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (VAL,)))
    C.note_divergences(out, runs)
    out.measured = f"batch {cfg['batch_size']}, final validation accuracy: " + ", ".join(
        f"{a} {C.mean(out.metrics[VAL][a]):.2%}" for a in arms)
    return out


def _cfg(batch_size, steps, eval_every, grid, tune_steps, tune_seeds, widths=(100, 100, 100)):
    return {"widths": list(widths), "batch_size": batch_size, "steps": steps, "eval_every": eval_every,
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="running-average-normalization",
    title="Normalizing with running averages solves small batches",
    articles=(
        Quote("One solution to this problem is to use a variant of Batch Normalization that computes the statistics "
              "over a larger number of examples. This can be done by maintaining a running average of the mean and "
              "variance and using this running average for normalization instead of the mini-batch statistics. "
              "This is known as Moving Average Batch Normalization.", "seed article 000 (000_9dab5e9a010b2c52.txt)"),
    ),
    papers=("Ioffe & Szegedy (2015, Sec. 2) warn that normalizing with statistics computed outside the gradient "
            "step lets the parameters grow without bound (the gradient ignores the normalization). Yan et al. "
            "(2020, 'Towards Stabilizing Batch Statistics in Backward Propagation of Batch Normalization', ICLR) "
            "define MABN: moving averages in forward *and* backward, with a centring-free (RMS) normalization and "
            "weight centralization; it is not the naive scheme the article describes."),
    measures=("784-100x3-10 ReLU MLP (He init), batch size 4 at --quick (2 at --full), BN, the naive running-average "
              "normalization, or MABN before each ReLU; SGD with momentum 0.9, each arm at its own learning rate "
              "(declared search on tuning seeds and a tuning split; criterion: final tuning-validation accuracy); "
              "final validation accuracy."),
    # Margin declared before running: 1 point of accuracy (~ the standard error of one accuracy on 1,000
    # validation images); "solves small batches" must at least beat BN at the same small batch by that much.
    rule=Rule(metric=VAL, treatment="ran", control="bn", direction="greater", margin=0.01),
    secondary=(Rule(metric=VAL, treatment="mabn", control="bn", direction="greater", margin=0.01),
               Rule(metric=VAL, treatment="ran", control="mabn", direction="greater", margin=0.01,
                    kind="noninferiority")),
    interpretation=("One small batch size on a small MLP: BN's small-batch trouble grows with depth and at batch 2; "
                    "the --full level runs batch 2."),
    configs={"tiny": _cfg(4, 6, 3, [0.01, 0.1], 4, 1, (16, 16)),
             "quick": _cfg(4, 400, 100, [0.001, 0.003, 0.01, 0.03], 200, 2),
             "full": _cfg(2, 3000, 500, [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1], 1500, 3)},
    run=run,
    order=19,
)
