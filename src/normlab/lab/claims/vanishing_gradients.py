"""Claim 5, ``vanishing-gradients``: BN keeps gradients from vanishing (or exploding) through a deep network.

Two depth sweeps of MLPs (width 64), each with its activation's standard init: ReLU + He and tanh + Glorot, with
BN before each activation or none, each (family, arm) at its own learning rate chosen by a declared search at the
deepest depth (tuning seeds and a tuning split the verdict never sees). Two separate questions:

- *vanishing*: at sampled steps the weight-gradient norm of every Linear is measured on the current mini-batch;
  per seed, ``log10(||grad W_last hidden|| / ||grad W_1||)`` averaged over the samples: by how many decades the
  gradient at the input end is smaller than at the output end (0 = the same size; negative = larger);
- *exploding*: from the per-step gradient norm of the whole network, ``log10(max / median)`` over the run: how far
  the gradient spikes above its typical size (0 = never above the median).

Rules at the deepest depth; the figure shows the sweep.
"""

from __future__ import annotations

import math
import statistics

from ..train import TrainConfig
from ..tuning import tune
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

FAMILIES = {"tanh": ("tanh", "xavier"), "relu": ("relu", "he")}  # family -> (activation, its standard init)
ARMS = ("bn", "none")
SPLIT = 0  # one verdict validation split: the tuning split (its training part) never overlaps it
VANISH = "{f}: decades by which the first layer's weight gradient is smaller than the last hidden layer's (depth {d})"
EXPLODE = "{f}: log10(max / median) of the gradient norm over training (depth {d})"
VAL = "{f}: final validation accuracy (depth {d})"


def _config(family: str, depth: int, arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    # Weight-gradient norms of every Linear, recorded by tools.ActivationRecorder on the training steps themselves
    # (step k: the gradient of the training loss on that step's mini-batch, with the weights after k updates).
    act, init = FAMILIES[family]
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="mlp", norm=arm,
                       model_args={"depth": depth, "width": cfg["width"], "activation": act, "init": init},
                       optimizer="sgd", lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"], eval_every=cfg["steps"], drop_last=True,
                       probes={"grads": {"kind": "gradients", "layers": "weights", "every": cfg["probe_every"]}})


def _samples(result) -> list[dict]:
    """Per sampled step, the weight-gradient norms of the hidden Linear layers (the classifier dropped)."""
    g = result.probes["grads"]
    return [{"step": s, "norms": [C.num(v) for v in row[:-1]]} for s, row in zip(g["steps"], g["weight_grad_norm"])]


def _vanishing(norms: list[float]) -> float:
    first, last = max(norms[0], 1e-30), max(norms[-1], 1e-30)
    return math.log10(last / first)


def _exploding(result) -> float:
    g = [v for v in result.history("grad_norm") if v is not None and math.isfinite(v) and v > 0]
    if result.diverged_step is not None or not g:
        return 6.0  # a diverged run exploded: counted as a million-fold spike (censored)
    return math.log10(max(g) / statistics.median(g))


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    deep = max(cfg["depths"])
    tuned = tune(ctx, {f"{f}/{a}": _config(f, deep, a, ctx.seeds[0], cfg) for f in FAMILIES for a in ARMS},
                 C.search(cfg))
    units = [{"family": f, "depth": d, "arm": a, "seed": s} for f in FAMILIES for d in cfg["depths"] for s in ctx.seeds
             for a in ARMS]
    runs = ctx.map([_config(u["family"], u["depth"], u["arm"], u["seed"], cfg, tuned[f"{u['family']}/{u['arm']}"][0])
                    for u in units])
    res = [{**u, "samples": _samples(r), "explode": _exploding(r), "val_acc": C.curve(r, "val_acc")[-1]}
           for u, r in zip(units, runs)]
    out = Outcome()
    C.record_arms(out, tuned, {f"{f}/{a}": FAMILIES[f][1] for f in FAMILIES for a in ARMS})
    for r in res:
        f, d = r["family"], r["depth"]
        out.add(VANISH.format(f=f, d=d), r["arm"], r["seed"], C.mean([_vanishing(p["norms"]) for p in r["samples"]]))
        out.add(EXPLODE.format(f=f, d=d), r["arm"], r["seed"], r["explode"])
        out.add(VAL.format(f=f, d=d), r["arm"], r["seed"], r["val_acc"])
    for f in FAMILIES:  # the rules' metrics: the deepest depth of the level, under one name at every level
        for m in (VANISH, EXPLODE, VAL):
            for a in ARMS:
                for seed, v in out.metrics[m.format(f=f, d=deep)][a].items():
                    out.add(m.format(f=f, d="deepest"), a, seed, v)
    fig, axes = C.new_figure(3, width=4.4)
    for j, f in enumerate(FAMILIES):
        for i, arm in enumerate(ARMS):
            name = f"{f}, {'with BN' if arm == 'bn' else 'without BN'}"
            color = C.COLORS[2 * j + i]
            marker = "o" if arm == "bn" else "s"
            for ax, metric in zip(axes[:2], (VANISH, EXPLODE)):
                C.band(ax, cfg["depths"], [[out.metrics[metric.format(f=f, d=d)][arm][s] for d in cfg["depths"]]
                                           for s in ctx.seeds], name, color, marker=marker)
            rs = [r for r in res if r["family"] == f and r["arm"] == arm and r["depth"] == deep]
            C.band(axes[2], list(range(1, deep + 1)),
                   [[math.log10(max(n, 1e-30)) for n in r["samples"][-1]["norms"]] for r in rs], name, color,
                   marker=marker)
    axes[0].set(title="vanishing (per depth)", xlabel="hidden layers",
                ylabel="log10(||g_last|| / ||g_1||), mean over steps")
    axes[1].set(title="exploding (per depth)", xlabel="hidden layers", ylabel="log10(max / median grad norm)")
    axes[2].set(title=f"per-layer gradient norm, depth {deep}, last sample", xlabel="hidden layer (1 = input side)",
                ylabel="log10 ||dL/dW||")
    for ax in axes:
        ax.legend(fontsize=7)
    out.figures.append(Figure("grad-norms", f"Depth sweep (width {cfg['width']}, SGD, per-arm tuned rates) of ReLU + "
                              "He and tanh + Glorot MLPs with and without BN. Left: vanishing measure; middle: "
                              "exploding measure; right: per-layer weight-gradient norms at the deepest depth. "
                              "Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, [m.format(f=f, d=d) for m in (VANISH, EXPLODE, VAL) for f in FAMILIES
                                         for d in cfg["depths"]]))
    out.notes.append(f"'deepest' in a rule's metric means depth {deep} (hidden layers) at this level")
    vanish = {a: C.mean(out.metrics[VANISH.format(f="tanh", d=deep)][a]) for a in ARMS}
    out.measured = f"tanh depth {deep}, vanishing (decades): BN {vanish['bn']:.2f} vs none {vanish['none']:.2f}"
    return out


def _cfg(depths, steps, probe_every, grid, tune_steps, tune_seeds):
    return {"depths": depths, "width": 64, "steps": steps, "probe_every": probe_every, "batch_size": 64,
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


CLAIM = Claim(
    id="vanishing-gradients",
    title="BN solves vanishing and exploding gradients",
    articles=(
        Quote("Solves Vanishing and Exploding Gradient issues: Unstable gradients like vanishing gradients and "
              "exploding gradients are the common issues which occur while training a neural network. By "
              "normalizing the outputs of each layer, we can significantly deal with this issue.", "seed article 001"),
        Quote("Batch Normalization also has a beneficial effect on the gradient flow through the network, by reducing "
              "the dependence of gradients on the scale of the parameters or of their initial values.",
              "seed article 000"),
    ),
    papers=("Ioffe & Szegedy 2015: BN keeps sigmoid inputs out of the saturated regime, so saturating nonlinearities "
            "become trainable. Later work (Yang et al. 2019, 'A mean field theory of batch normalization') shows "
            "deep BN networks can have *exploding* gradients at initialization — hence the two-sided measure here."),
    measures=("Depth sweeps of width-64 MLPs, ReLU + He init and tanh + Glorot init, BN before each activation or "
              "none, SGD at per-(family, arm) rates chosen by a declared search at the deepest depth. Vanishing: "
              "log10 of the last-hidden-layer over first-layer weight-gradient norm, on sampled training steps, "
              "averaged. Exploding: log10(max / median) of the whole network's per-step gradient norm over the run "
              "(a diverged run counts as 6). Rules at the deepest depth."),
    # Margins (declared before the runs): 0.5 decade of vanishing (a factor ~3 between the two ends: less than
    # that, no learning-rate choice is forced by it) and 0.3 decade of exploding (a spike of 2x the typical
    # gradient: below that no one would call the gradients unstable); 0.01 of accuracy (1 point). The article's
    # sentence names both problems in both families: every vanishing and exploding rule is confirmatory.
    rule=Rule(metric=VANISH.format(f="tanh", d="deepest"), treatment="bn", control="none", direction="less", margin=0.5,
              unit=" decades"),
    secondary=(
        Rule(metric=VANISH.format(f="relu", d="deepest"), treatment="bn", control="none", direction="less", margin=0.5,
             unit=" decades", confirmatory=True),
        Rule(metric=EXPLODE.format(f="tanh", d="deepest"), treatment="bn", control="none", direction="less", margin=0.3,
             unit=" decades", confirmatory=True),
        Rule(metric=EXPLODE.format(f="relu", d="deepest"), treatment="bn", control="none", direction="less", margin=0.3,
             unit=" decades", confirmatory=True),
        *(Rule(metric=VAL.format(f=f, d="deepest"), treatment="bn", control="none", direction="greater", margin=0.01)
          for f in ("tanh", "relu")),
    ),
    interpretation=("With the standard init of each activation, a plain deep net may not vanish or explode at all; "
                    "then BN has nothing to solve here and the rules say 'not supported' or inconclusive, not "
                    "that BN harms. Yang et al. 2019 predict BN's own gradients explode with depth at init."),
    configs={"tiny": _cfg([3, 6], 6, 3, [0.01, 0.1], 4, 1), "quick": _cfg([5, 20], 200, 20, [0.01, 0.1, 1.0], 100, 1),
             "full": _cfg([5, 10, 20, 40], 500, 50, [0.003, 0.01, 0.03, 0.1, 0.3, 1.0], 200, 2)},
    run=run,
)
