"""Claim 5, ``vanishing-gradients``: BN keeps gradients from vanishing (or exploding) through a deep network.

A 20-hidden-layer sigmoid MLP with and without BN. At sampled steps the gradient norm of every Linear weight is
measured on the current mini-batch. Per seed: the imbalance |log10(||grad W_1|| / ||grad W_20||)| between the first
and the last hidden layer, averaged over the sampled steps (0 = the same gradient size at both ends).
"""

from __future__ import annotations

import math

from ..verdict import Rule
from . import _common as C
from ..train import TrainConfig
from .base import Claim, Context, Figure, Outcome, Quote

IMBALANCE = "|log10(grad norm of layer 1 / grad norm of the last hidden layer)|, mean over sampled steps"
VAL = "final validation accuracy"


def _config(arm: str, seed: int, cfg: dict) -> TrainConfig:
    # Weight-gradient norms of every Linear, recorded by tools.ActivationRecorder on the training steps themselves
    # (step k: the gradient of the training loss on that step's mini-batch, with the weights after k updates).
    return TrainConfig(data="mnist5k", split_seed=seed, seed=seed, model="mlp", norm=arm,
                       model_args={"depth": cfg["depth"], "width": cfg["width"], "activation": cfg["activation"]},
                       optimizer="sgd", lr=cfg["lr"], batch_size=cfg["batch_size"], steps=cfg["steps"],
                       eval_every=cfg["steps"], drop_last=True,
                       probes={"grads": {"kind": "gradients", "layers": "weights", "every": cfg["probe_every"]}})


def _samples(result) -> list[dict]:
    """Per sampled step, the weight-gradient norms of the hidden Linear layers (the classifier dropped)."""
    g = result.probes["grads"]
    return [{"step": s, "norms": [C.num(v) for v in row[:-1]]} for s, row in zip(g["steps"], g["weight_grad_norm"])]


def _imbalance(norms: list[float]) -> float:
    first, last = max(norms[0], 1e-30), max(norms[-1], 1e-30)
    return abs(math.log10(first / last))


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    units = [{"arm": arm, "seed": s} for s in ctx.seeds for arm in ("bn", "none")]
    runs = ctx.map([_config(u["arm"], u["seed"], cfg) for u in units])
    res = [{**u, "samples": _samples(r), "val_acc": C.curve(r, "val_acc")[-1]} for u, r in zip(units, runs)]
    out = Outcome()
    for r in res:
        out.add(IMBALANCE, r["arm"], r["seed"], C.mean([_imbalance(p["norms"]) for p in r["samples"]]))
        out.add(VAL, r["arm"], r["seed"], r["val_acc"])
    fig, axes = C.new_figure(2)
    layers = list(range(1, cfg["depth"] + 1))
    for i, arm in enumerate(("bn", "none")):
        rs = [r for r in res if r["arm"] == arm]
        name = "with BN" if arm == "bn" else "without BN"
        C.band(axes[0], layers, [[math.log10(max(n, 1e-30)) for n in r["samples"][0]["norms"]] for r in rs],
               f"{name}, step 0", C.COLORS[i], "--")
        C.band(axes[0], layers, [[math.log10(max(n, 1e-30)) for n in r["samples"][-1]["norms"]] for r in rs],
               f"{name}, step {rs[0]['samples'][-1]['step']}", C.COLORS[i], "-")
        C.band(axes[1], [p["step"] for p in rs[0]["samples"]],
               [[_imbalance(p["norms"]) for p in r["samples"]] for r in rs], name, C.COLORS[i])
    axes[0].set(title="weight-gradient norm per layer", xlabel="hidden layer (1 = next to the input)",
                ylabel="log10 ||dL/dW||")
    axes[1].set(title="first/last layer gradient imbalance", xlabel="training step",
                ylabel="|log10(||g_1|| / ||g_last||)|")
    axes[0].legend(fontsize=7)
    axes[1].legend()
    out.figures.append(Figure("grad-norms", f"{cfg['depth']}-hidden-layer {cfg['activation']} MLP (width "
                              f"{cfg['width']}, SGD lr {cfg['lr']}). Left: per-layer gradient norms at the first and "
                              "last sampled step; right: imbalance over training. Line: mean over seeds; band: "
                              "min..max.", fig))
    out.tables.append(C.seed_table(out, (IMBALANCE, VAL)))
    out.measured = (f"gradient imbalance (decades): BN {C.mean(out.metrics[IMBALANCE]['bn']):.2f} vs none "
                    f"{C.mean(out.metrics[IMBALANCE]['none']):.2f}")
    return out


def _cfg(steps, probe_every):
    return {"depth": 20, "width": 64, "activation": "sigmoid", "steps": steps, "probe_every": probe_every,
            "batch_size": 64, "lr": 0.1}


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
    measures=("Weight-gradient norms of every Linear layer of a 20-hidden-layer, width-64 sigmoid MLP (BN before "
              "each sigmoid, or none; torch default init; SGD), recorded on sampled training steps (the training "
              "loss's own gradient on that step's mini-batch). Per seed: |log10 of the first/last hidden-layer "
              "gradient-norm ratio|, averaged over the samples."),
    rule=Rule(metric=IMBALANCE, treatment="bn", control="none", direction="less", unit=" decades"),
    secondary=(Rule(metric=VAL, treatment="bn", control="none", direction="greater"),),
    configs={"tiny": _cfg(6, 3), "quick": _cfg(400, 40), "full": _cfg(1500, 50)},
    run=run,
)
