"""Claim 1, ``faster-convergence``: with BN a network reaches a given accuracy in fewer steps.

Two models, each trained with and without BN from the same seed (same initial weights of the shared layers, same
mini-batch order, same optimizer and learning rate): Ioffe & Szegedy's Fig. 1 network (3 x 100 sigmoid units, BN
before each sigmoid, SGD) and the seed article's Keras model (Dense(128, ReLU) -> BN -> Dense(10), Adam, batch 32),
whose train/validation loss curves with and without BN are the article's figure.
"""

from __future__ import annotations

from ..verdict import Rule
from . import _common as C
from ..train import TrainConfig
from .base import Claim, Context, Figure, Outcome, Quote, Table

TARGET = 0.90
PRIMARY = f"ioffe_mlp: steps to {TARGET:.0%} validation accuracy"
SEED_STEPS = f"seed_mlp: steps to {TARGET:.0%} validation accuracy"
SEED_LOSS = "seed_mlp: final validation loss"


def _config(model: str, arm: str, seed: int, mc: dict) -> TrainConfig:
    # ioffe_mlp: the paper's small Gaussian initial weights N(0, 0.1^2) on every Linear
    args = {"init": "normal", "init_std": 0.1} if model == "ioffe_mlp" else {}
    return TrainConfig(data="mnist5k", split_seed=seed, seed=seed, model=model, norm=arm, model_args=args,
                       optimizer=mc["optimizer"], lr=mc["lr"], batch_size=mc["batch_size"], steps=mc["steps"],
                       eval_every=mc["eval_every"], drop_last=True)


def steps_to_reach(steps, values, target: float, cap: int) -> int:
    """First evaluated step whose value reaches ``target``; ``cap`` (the step budget) when it never does —
    a censored value, so a run that never gets there counts as needing at least the whole budget."""
    for s, v in zip(steps, values):
        if v >= target:
            return int(s)
    return int(cap)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    units = []
    for model in ("ioffe_mlp", "seed_mlp"):
        for seed in ctx.seeds:
            for arm in ("bn", "none"):
                units.append({"model": model, "arm": arm, "seed": seed})
    runs = ctx.map([_config(u["model"], u["arm"], u["seed"], cfg[u["model"]]) for u in units])
    res = [{**u, "steps": C.curve(r, "step"), "val_acc": C.curve(r, "val_acc"), "val_loss": C.curve(r, "val_loss"),
            "train_loss": C.curve(r, "train_loss"), "diverged_at": r.diverged_step} for u, r in zip(units, runs)]
    out = Outcome()
    for r in res:
        key = PRIMARY if r["model"] == "ioffe_mlp" else SEED_STEPS
        out.add(key, r["arm"], r["seed"], steps_to_reach(r["steps"], r["val_acc"], TARGET, r["steps"][-1] + 1
                                                         if r["diverged_at"] is not None else cfg[r["model"]]["steps"]))
        if r["model"] == "seed_mlp":
            out.add(SEED_LOSS, r["arm"], r["seed"], r["val_loss"][-1])
    # Fig 1a-style: validation accuracy vs steps, both models.
    fig, axes = C.new_figure(2)
    for ax, model in zip(axes, ("ioffe_mlp", "seed_mlp")):
        for i, arm in enumerate(("bn", "none")):
            rs = [r for r in res if r["model"] == model and r["arm"] == arm]
            C.band(ax, rs[0]["steps"], [r["val_acc"] for r in rs], "with BN" if arm == "bn" else "without BN",
                   C.COLORS[i])
        ax.axhline(TARGET, color="gray", lw=0.8, ls=":")
        ax.set(title=f"{model}: validation accuracy", xlabel="training step", ylabel="accuracy", ylim=(0, 1))
        ax.legend(loc="lower right")
    out.figures.append(Figure("val-accuracy", "Validation accuracy vs training steps with and without BN "
                              f"(dotted: the {TARGET:.0%} target). Line: mean over seeds; band: min..max.", fig))
    # The seed article's Keras figure: train (dashed) and validation (solid) loss, with and without BN, per epoch.
    fig, (ax,) = C.new_figure(1, width=6.4, height=4.0)
    sc = cfg["seed_mlp"]
    per_epoch = (4000 // sc["batch_size"])
    for i, arm in enumerate(("none", "bn")):
        rs = [r for r in res if r["model"] == "seed_mlp" and r["arm"] == arm]
        epochs = [s / per_epoch for s in rs[0]["steps"]]
        name = "With BN" if arm == "bn" else "No BN"
        color = C.COLORS[1] if arm == "bn" else C.COLORS[0]
        C.band(ax, epochs[1:], [r["train_loss"][1:] for r in rs], f"{name} - Training Loss", color, "--")
        C.band(ax, epochs, [r["val_loss"] for r in rs], f"{name} - Validation Loss", color, "-")
    ax.set(title="Training and Validation Loss: With and Without Batch Normalization", xlabel="epoch",
           ylabel="cross-entropy")
    ax.legend()
    out.figures.append(Figure("keras-loss", "The seed article's figure, remeasured: seed_mlp (Dense(128, ReLU) -> "
                              "[BN] -> Dense(10)), Adam, batch 32, on the MNIST 5k subset. Training loss is the mean "
                              "mini-batch loss since the previous evaluation (Keras' 'loss').", fig))
    rows = []
    for metric in (PRIMARY, SEED_STEPS, SEED_LOSS):
        for arm in ("bn", "none"):
            vals = out.metrics[metric][arm]
            rows.append((metric, arm, ", ".join(f"{vals[s]:.4g}" for s in sorted(vals))))
    out.tables.append(Table("Per-seed values", ("metric", "arm", "per seed"), tuple(rows)))
    bn, nb = (out.metrics[PRIMARY][a] for a in ("bn", "none"))
    out.measured = (f"ioffe_mlp steps to {TARGET:.0%}: BN {_mean(bn):.0f} vs none {_mean(nb):.0f} "
                    f"(budget {cfg['ioffe_mlp']['steps']})")
    return out


def _mean(d: dict) -> float:
    return sum(d.values()) / max(len(d), 1)


def _cfg(ioffe_steps: int, seed_steps: int, eval_every: int) -> dict:
    return {
        "ioffe_mlp": {"steps": ioffe_steps, "batch_size": 60, "lr": 0.5, "optimizer": "sgd", "eval_every": eval_every},
        "seed_mlp": {"steps": seed_steps, "batch_size": 32, "lr": 1e-3, "optimizer": "adam",
                     "eval_every": 125 if seed_steps >= 250 else eval_every},
    }


CLAIM = Claim(
    id="faster-convergence",
    title="BN makes training converge faster",
    articles=(
        Quote("it significantly speeds up the training process of neural networks while boosting the performance of "
              "it.", "seed article 003 (Batch Normalization tips)"),
        Quote("We are able to observe Batch normalization results in quicker convergence and decrease validation "
              "loss", "seed article 002 (machine-translated; 'leads to faster convergence and lower validation "
              "loss'), about its Keras with/without-BN figure"),
        Quote("Faster Convergence: By normalizing the inputs to each layer, BatchNorm reduces the distribution shift "
              "throughout the network, leading to faster training times.", "seed article 004"),
    ),
    papers=("Ioffe & Szegedy 2015, Fig. 1: MNIST, 3 x 100 sigmoid FC, small Gaussian init, 50k steps, batch 60: the "
            "BN network reaches higher test accuracy, faster (no numbers in the text). Inception: 72.2% reached in "
            "13.3M steps with BN vs 31.0M without (2.1M with BN and 5x learning rate)."),
    measures=(f"Steps until the validation accuracy first reaches {TARGET:.0%} (evaluated every few steps; a run "
              "that never reaches it counts as the whole step budget), for ioffe_mlp (SGD, batch 60, lr 0.5, init "
              "N(0, 0.1^2)) and seed_mlp (Adam 1e-3, batch 32), each with and without BN, same seed per pair."),
    rule=Rule(metric=PRIMARY, treatment="bn", control="none", direction="less", unit=" steps"),
    secondary=(
        Rule(metric=SEED_STEPS, treatment="bn", control="none", direction="less", unit=" steps"),
        Rule(metric=SEED_LOSS, treatment="bn", control="none", direction="less"),
    ),
    interpretation=("Only one learning rate per model is used (declared above); a different rate could change the "
                    "size of the gap — see higher-learning-rates for the sweep."),
    configs={"tiny": _cfg(30, 30, 10), "quick": _cfg(1200, 1250, 25), "full": _cfg(5000, 1250, 25)},
    run=run,
)
