"""Claim 3, ``careless-init``: with BN the result depends less on the scale of the initial weights.

The same ReLU MLP, with and without BN, is trained from Gaussian initial weights N(0, std^2) over a grid of stds
spanning four orders of magnitude (same seeds, optimizer and steps). Per seed: the spread (max - min) of the final
validation accuracy over the grid, and the worst accuracy on the grid.

The claim is about the init, so the init is not tuned away: each arm's learning rate is chosen once by a declared
search (:mod:`normlab.lab.tuning`: tuning seeds 1000+, a held-out part of the training split, criterion final
tuning-validation accuracy) at the standard init for ReLU (He), and that rate is kept at every init scale of the
grid (a practitioner picks a rate for the usual init, then is "careless" about the init).
"""

from __future__ import annotations

from ..train import TrainConfig
from ..tuning import tune
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

SPREAD = "spread (max - min) of final validation accuracy over init scales"
WORST = "worst final validation accuracy over init scales"


SPLIT = 0  # one verdict validation split for every seed: the tuning split (its training part) never overlaps it
ARMS = ("bn", "none")


def _config(arm: str, seed: int, std: float | None, cfg: dict, lr: float | None = None) -> TrainConfig:
    # std None: the standard He init (where the rate is tuned); otherwise every Linear weight N(0, std^2), biases 0
    init = {"init": "he"} if std is None else {"init": "normal", "init_std": std}
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu", **init},
                       optimizer="sgd", momentum=0.9, lr=cfg["grid"][0] if lr is None else lr,
                       batch_size=cfg["batch_size"], steps=cfg["steps"],
                       eval_every=cfg["steps"], drop_last=True)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    stds = cfg["init_stds"]
    tuned = tune(ctx, {a: _config(a, ctx.seeds[0], None, cfg) for a in ARMS}, C.search(cfg))
    units = [{"arm": arm, "seed": s, "init_std": sd} for s in ctx.seeds for arm in ARMS for sd in stds]
    runs = ctx.map([_config(u["arm"], u["seed"], u["init_std"], cfg, tuned[u["arm"]][0]) for u in units])
    res = [{**u, "val_acc": C.curve(r, "val_acc")[-1]} for u, r in zip(units, runs)]
    out = Outcome()
    C.record_arms(out, tuned, {a: "he (rate tuned here); the verdict sweeps N(0, std^2)" for a in ARMS})
    curves: dict[str, list[list[float]]] = {}
    for arm in ("bn", "none"):
        curves[arm] = []
        for s in ctx.seeds:
            accs = [next(r["val_acc"] for r in res if r["arm"] == arm and r["seed"] == s and r["init_std"] == sd)
                    for sd in stds]
            curves[arm].append(accs)
            out.add(SPREAD, arm, s, max(accs) - min(accs))
            out.add(WORST, arm, s, min(accs))
    fig, (ax,) = C.new_figure(1, width=6.0)
    for i, arm in enumerate(("bn", "none")):
        C.band(ax, stds, curves[arm], "with BN" if arm == "bn" else "without BN", C.COLORS[i], marker="o")
    ax.set(xscale="log", xlabel="initial weight std (every Linear layer)", ylabel="final validation accuracy",
           ylim=(0, 1), title=f"Accuracy after {cfg['steps']} steps vs init scale")
    ax.legend()
    out.figures.append(Figure("init-sweep", "Final validation accuracy per initial weight scale, with and without BN "
                              "(SGD with momentum 0.9, each arm at its own rate tuned at the He init: BN "
                              f"{tuned['bn'][0]:.3g}, none {tuned['none'][0]:.3g}). Line: mean over seeds; band: "
                              "min..max.", fig))
    out.tables.append(C.seed_table(out, (SPREAD, WORST)))
    out.measured = (f"accuracy spread over init scales: BN {C.mean(out.metrics[SPREAD]['bn']):.3f} vs none "
                    f"{C.mean(out.metrics[SPREAD]['none']):.3f}")
    return out


def _cfg(stds, steps, grid, tune_steps, tune_seeds):
    return {"init_stds": stds, "steps": steps, "batch_size": 64, "widths": [100, 100, 100, 100], "grid": grid,
            "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="careless-init",
    title="BN makes training less sensitive to weight initialization",
    articles=(
        Quote("This leads to higher learning rates and less careful initialization, and acts as a form of "
              "regularization, in some cases eliminating the need for Dropout.", "seed article 000"),
        Quote("Batch normalization makes weight initialization simpler by permitting us to be much less cautious when "
              "selecting our initial starting weights especially when creating deeper networks.",
              "seed article 002 (machine-translated from 'Easier Weight Initialization')"),
    ),
    papers=("Ioffe & Szegedy 2015 (Sec. 3.3): BN makes back-propagation through a layer invariant to the scale of "
            "its parameters, BN(Wu) = BN((aW)u), so larger weights lead to smaller gradients and stable growth."),
    measures=("A 784-100-100-100-100-10 ReLU MLP (BN before each ReLU, or none) initialized with N(0, std^2) "
              "weights for std in a grid over 4 decades, trained with SGD+momentum at each arm's own rate (declared "
              "search at the standard He init on tuning seeds and a tuning split); per seed the "
              "spread (max - min) of final validation accuracy over the grid and the worst accuracy."),
    # Margins (declared before the runs; accuracy in fractions): 0.02 (2 points) of spread and of worst-case
    # accuracy across init scales: a smaller gain in robustness to the init scale would not let anyone be "less
    # careful" about it. The worst-scale rule tests the same sentence ("less careful about initialization"):
    # confirmatory.
    rule=Rule(metric=SPREAD, treatment="bn", control="none", direction="less", margin=0.02),
    secondary=(Rule(metric=WORST, treatment="bn", control="none", direction="greater", margin=0.02,
                    confirmatory=True),),
    configs={"tiny": _cfg([0.01, 1.0], 10, [0.01, 0.1], 3, 1),
             "quick": _cfg([0.001, 0.01, 0.05, 0.2, 1.0], 250, [0.003, 0.01, 0.03, 0.1], 150, 1),
             "full": _cfg([0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0], 800,
                          [0.001, 0.003, 0.01, 0.03, 0.1, 0.3], 400, 2)},
    run=run,
)
