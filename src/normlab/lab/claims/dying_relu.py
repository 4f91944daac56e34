"""Claim 6, ``dying-relu``: BN prevents ReLU units from dying.

A ReLU MLP (He init) with and without BN before each ReLU, each arm at its own learning rate chosen by a declared
search (:mod:`normlab.lab.tuning`: tuning seeds 1000+, a held-out part of the training split; a shared large
rate would only show that the no-BN net's rate was too large for it). At sampled steps every
hidden unit is checked on a fixed probe set of 1,000 validation images (eval mode): a unit is dead when its ReLU
output is zero for every probe image. Per seed: the fraction of dead units at the end.
"""

from __future__ import annotations

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

DEAD = "fraction of dead ReLU units at the end"
VAL = "final validation accuracy"


ARMS = ("bn", "none")
SPLIT = 0  # one verdict validation split for every seed: the tuning split (its training part) never overlaps it


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    # A unit is dead when its ReLU input is <= 0 for every probe image: tools.ActivationRecorder's dead fraction of
    # the ReLU modules' inputs, eval mode, on the 1,000 validation images, at step 0, every probe_every, the end.
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu", "init": "he"}, optimizer="sgd",
                       momentum=0.9, lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"], eval_every=cfg["steps"],
                       drop_last=True,
                       probes={"dead": {"kind": "activations", "layers": "activations", "stats": ["dead"],
                                        "data": "val", "mode": "eval", "every": cfg["probe_every"]}})


def _trace(result) -> list[tuple[int, float]]:
    """(step, fraction of dead units over all hidden layers) per probe; every layer has the same width."""
    d = result.probes["dead"]
    return [(s, C.mean([C.num(v) for v in row])) for s, row in zip(d["steps"], d["dead_fraction"])]


def run(ctx: Context) -> Outcome:
    out, _, tuned, units, runs = C.run_arms(ctx, ARMS, _config, "he")
    res = [{**u, "trace": _trace(r), "val_acc": C.curve(r, "val_acc")[-1], "diverged_at": r.diverged_step}
           for u, r in zip(units, runs)]
    for r in res:
        out.add(DEAD, r["arm"], r["seed"], r["trace"][-1][1])
        out.add(VAL, r["arm"], r["seed"], r["val_acc"])
    fig, (ax,) = C.new_figure(1, width=6.0)
    for i, arm in enumerate(("bn", "none")):
        rs = [r for r in res if r["arm"] == arm]
        C.band(ax, [t[0] for t in rs[0]["trace"]], [[t[1] for t in r["trace"]] for r in rs],
               "with BN" if arm == "bn" else "without BN", C.COLORS[i])
    ax.set(title="dead ReLU units during training", xlabel="training step", ylabel="fraction dead", ylim=(0, 1))
    ax.legend()
    out.figures.append(Figure("dead-units", f"Fraction of hidden ReLU units whose output is zero on all 1,000 probe "
                              f"images (SGD momentum 0.9, per-arm tuned lr: BN {tuned['bn'][0]:.3g}, none "
                              f"{tuned['none'][0]:.3g}). Line: mean over seeds; band: min..max.",
                              fig))
    out.tables.append(C.seed_table(out, (DEAD, VAL)))
    diverged = sum(r["diverged_at"] is not None for r in res)
    if diverged:
        out.notes.append(f"{diverged} run(s) diverged; their dead fraction is measured at the divergence step")
    out.measured = (f"dead units at the end: BN {C.mean(out.metrics[DEAD]['bn']):.1%} vs none "
                    f"{C.mean(out.metrics[DEAD]['none']):.1%}")
    return out


def _cfg(steps, probe_every, grid, tune_steps, tune_seeds):
    return {"widths": [100, 100, 100, 100], "steps": steps, "probe_every": probe_every, "batch_size": 64,
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="dying-relu",
    title="BN prevents dying ReLUs",
    articles=(
        Quote("Solves dying ReLU problem: ReLUs often die out during training the deep neural networks and many "
              "neurons stop contributing. But, with batch normalization, we can regulate the output of each hidden "
              "layer, which prevents this issue in deep neural networks.", "seed article 001"),
    ),
    papers=("No quantitative anchor in the BN paper; the mechanism argued is that a normalized pre-activation has "
            "zero mean and unit variance over the batch, so a unit is negative for every input only if its learned "
            "beta/gamma push it there."),
    measures=("784-100x4-10 ReLU MLP (He init), BN before each ReLU or none, SGD with momentum 0.9, each arm at its "
              "own learning rate (declared search on tuning seeds and a tuning split; criterion: final tuning-"
              "validation accuracy); "
              "fraction of hidden units with zero output on all of 1,000 probe images, sampled during training; "
              "verdict on the value at the end."),
    # Margins, declared before the tuned runs: a healthy no-BN ReLU net at a sensible rate has 1-2.5% dead units
    # (the audit's side runs), so BN "preventing" dying must remove at least 2 points of units; 1 point of
    # accuracy (~ the standard error of one accuracy on 1,000 validation images) is the smallest accuracy gap worth
    # reporting. Accuracy is not in the article's sentence: exploratory.
    rule=Rule(metric=DEAD, treatment="bn", control="none", direction="less", margin=0.02),
    secondary=(Rule(metric=VAL, treatment="bn", control="none", direction="greater", margin=0.01),),
    configs={"tiny": _cfg(6, 3, [0.01, 0.1], 4, 1), "quick": _cfg(500, 50, [0.01, 0.03, 0.1, 0.3], 250, 2),
             "full": _cfg(2000, 100, [0.003, 0.01, 0.03, 0.1, 0.3], 1000, 3)},
    run=run,
)
