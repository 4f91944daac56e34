"""Claim 7, ``covariate-shift``: BN works by reducing internal covariate shift — tested, and what BN changes instead.

Three parts, on Ioffe & Szegedy's Fig. 1 network (784-100-100-100-10, sigmoid, BN before each sigmoid, SGD,
batch 60):

(a) validation accuracy vs steps, with and without BN;
(b, c) the 15th/50th/85th percentiles of the input of the last hidden layer's sigmoids over training. The shift
    of each unit is the path length of its three percentiles between probes, in units of its mean 15-85 spread
    (scale-free, so a network that merely has larger activations is not penalized), averaged over the 100 units;
(d) Santurkar et al. 2018: a "noisy BN" arm — BN followed by random per-unit shifts and scales that change every
    step (a covariate shift injected on purpose) — and, along the gradient direction at probe steps, the range of
    the loss and the largest change of the gradient (their loss-landscape and gradient-predictiveness measures);
(e) Santurkar et al.'s gradient-based internal covariate shift (arXiv:1805.11604, Sec. 3): at probe steps, for
    each Linear layer after the first, G = the gradient of the loss on the step's mini-batch with respect to its
    weight and G' = the same after the earlier layers took their SGD step (the run's rate): ||G - G'||_2 and
    cos(G, G') (``normlab.lab.probes.ics_gradient_change``), averaged over those layers and the probes.

The percentiles are measured in training mode (the distribution the next layer sees while it trains; noise
included for noisy BN) on 1,000 fixed validation images by ``tools.ActivationRecorder``; every probe restores the
weights, the BN buffers and the random state (``normlab.lab.probes``).
"""

from __future__ import annotations

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

SHIFT = "shift of the last hidden layer's sigmoid inputs (percentile path / spread)"
VAL = "final validation accuracy"
LOSS_RANGE = "loss range along the gradient (mean over probes)"
GRAD_CHANGE = "largest gradient change along the gradient (mean over probes)"
ICS_L2 = "gradient ICS ||G - G'||_2 (Santurkar; mean over layers 2-4 and probes)"
ICS_COS = "gradient ICS cos(G, G') (Santurkar; mean over layers 2-4 and probes)"
ARMS = ("bn", "none", "noisy_bn")
LABEL = {"bn": "with BN", "none": "without BN", "noisy_bn": "noisy BN (Santurkar)"}


SPLIT = 0  # one verdict validation split for every seed: the tuning split (its training part) never overlaps it


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    # Glorot init, the standard one for sigmoids (not the paper's N(0, 0.1^2): the claim is not about init, and
    # a deliberately small init would handicap the no-BN arm)
    args = {"init": "xavier"}
    if arm == "noisy_bn":  # BN followed by Santurkar et al.'s per-unit, per-step random scale and shift
        args.update(noise_shift=cfg["noise_mean"], noise_scale=cfg["noise_scale"])
    every = cfg["probe_every"]
    probes = {
        # input of the last hidden layer's sigmoids, per unit, training mode, on the 1,000 validation images
        "percentiles": {"kind": "activations", "layers": "activations", "index": [-1], "stats": ["unit_percentiles"],
                        "data": "val", "mode": "train", "every": every, "last": False},
        "landscape": {"kind": "landscape", "etas": cfg["etas"], "every": every, "last": False},
        # Santurkar's gradient ICS of the 2nd-4th Linear (the first has no earlier layer), eta = the run's rate
        "ics": {"kind": "ics", "layers": "weights", "index": [1, 2, 3], "every": every, "last": False},
    }
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="ioffe_mlp",
                       norm="none" if arm == "none" else "bn", model_args=args, optimizer="sgd",
                       lr=cfg["grid"][0] if lr is None else lr,
                       batch_size=cfg["batch_size"], steps=cfg["steps"], eval_every=cfg["eval_every"], drop_last=True,
                       probes=probes)


def _result(u: dict, r) -> dict:
    p, land, ics = r.probes["percentiles"], r.probes["landscape"], r.probes["ics"]
    return {**u, "ics": [{"step": s, "l2": C.mean([C.num(v) for v in a]), "cos": C.mean([C.num(v) for v in b])}
                         for s, a, b in zip(ics["steps"], ics["ics_l2"], ics["ics_cos"])],
            "steps": C.curve(r, "step"), "val_acc": C.curve(r, "val_acc"),
            "percentiles": [{"step": s, "q": row[0]} for s, row in zip(p["steps"], p["unit_percentiles"])],
            "landscape": [{"step": s, "loss_range": C.num(a), "grad_change": C.num(b)}
                          for s, a, b in zip(land["steps"], land["loss_range"], land["grad_change"])]}


def _shift(percentiles: list[dict]) -> float:
    """Mean over units of sum_t sum_q |q_t - q_{t-1}| / (3 * mean_t (p85_t - p15_t))."""
    import numpy as np

    q = np.array([p["q"] for p in percentiles])  # (T, units, 3)
    if q.shape[0] < 2:
        return 0.0
    path = np.abs(np.diff(q, axis=0)).sum(axis=(0, 2))  # per unit
    spread = (q[:, :, 2] - q[:, :, 0]).mean(axis=0)
    return float(np.mean(path / (3 * np.maximum(spread, 1e-12))))


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out, _, tuned, units, runs = C.run_arms(ctx, ARMS, _config, "xavier")
    res = [_result(u, r) for u, r in zip(units, runs)]
    for r in res:
        out.add(SHIFT, r["arm"], r["seed"], _shift(r["percentiles"]))
        out.add(VAL, r["arm"], r["seed"], r["val_acc"][-1])
        out.add(LOSS_RANGE, r["arm"], r["seed"], C.mean([p["loss_range"] for p in r["landscape"]]))
        out.add(GRAD_CHANGE, r["arm"], r["seed"], C.mean([p["grad_change"] for p in r["landscape"]]))
        out.add(ICS_L2, r["arm"], r["seed"], C.mean([p["l2"] for p in r["ics"]]))
        out.add(ICS_COS, r["arm"], r["seed"], C.mean([p["cos"] for p in r["ics"]]))
    by = {arm: [r for r in res if r["arm"] == arm] for arm in ARMS}
    # Fig. 1 (a, b, c) of Ioffe & Szegedy: accuracy, then one sigmoid's input percentiles without and with BN.
    fig, axes = C.new_figure(3, width=4.2)
    for i, arm in enumerate(ARMS):
        C.band(axes[0], by[arm][0]["steps"], [r["val_acc"] for r in by[arm]], LABEL[arm], C.COLORS[i])
    axes[0].set(title="(a) validation accuracy", xlabel="training step", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    for ax, arm, tag in ((axes[1], "none", "(b) without BN"), (axes[2], "bn", "(c) with BN")):
        r = by[arm][0]
        steps = [p["step"] for p in r["percentiles"]]
        for k, style in ((0, "--"), (1, "-"), (2, "--")):
            ax.plot(steps, [p["q"][0][k] for p in r["percentiles"]], style, color=C.COLORS[0 if arm == "bn" else 1])
        ax.set(title=f"{tag}: unit 0, 15/50/85th pct", xlabel="training step", ylabel="sigmoid input")
    out.figures.append(Figure("ioffe-fig1", "Ioffe & Szegedy Fig. 1 remeasured on the MNIST 5k subset (Glorot init, "
                              "per-arm tuned rates, not the paper's small Gaussian init): (a) validation "
                              "accuracy (mean and min..max over seeds), (b, c) 15th, 50th and 85th percentiles of the "
                              "input to one sigmoid of the last hidden layer over training (seed 0).", fig))
    fig, axes = C.new_figure(2)
    for i, arm in enumerate(ARMS):
        steps = [p["step"] for p in by[arm][0]["landscape"]]
        C.band(axes[0], steps, [[p["loss_range"] for p in r["landscape"]] for r in by[arm]], LABEL[arm], C.COLORS[i])
        C.band(axes[1], steps, [[p["grad_change"] for p in r["landscape"]] for r in by[arm]], LABEL[arm],
               C.COLORS[i])
    axes[0].set(title="loss range along the gradient", xlabel="training step", yscale="log")
    axes[1].set(title="max ||grad(x - eta g) - grad(x)||", xlabel="training step", yscale="log")
    axes[0].legend(fontsize=8)
    out.figures.append(Figure("santurkar-landscape", "Santurkar et al. 2018's measures: at probe steps, moving the "
                              f"weights along the gradient by eta in {cfg['etas']}, the range of the mini-batch loss "
                              "and the largest change of the gradient. Line: mean over seeds; band: min..max.", fig))
    fig, axes = C.new_figure(2)
    for i, arm in enumerate(ARMS):
        steps = [p["step"] for p in by[arm][0]["ics"]]
        C.band(axes[0], steps, [[p["l2"] for p in r["ics"]] for r in by[arm]], LABEL[arm], C.COLORS[i])
        C.band(axes[1], steps, [[p["cos"] for p in r["ics"]] for r in by[arm]], LABEL[arm], C.COLORS[i])
    axes[0].set(title="||G - G'||_2 (higher: more ICS)", xlabel="training step", ylabel="gradient change")
    axes[1].set(title="cos(G, G') (lower: more ICS)", xlabel="training step", ylabel="cosine")
    axes[0].legend(fontsize=8)
    out.figures.append(Figure("santurkar-ics", "Santurkar et al. 2018's gradient-based internal covariate shift: G "
                              "= a layer's weight gradient, G' = the same after the earlier layers' SGD step, on the "
                              "step's mini-batch; mean over the 2nd-4th Linear layers. Line: mean over seeds; band: "
                              "min..max.", fig))
    out.tables.append(C.seed_table(out, (SHIFT, VAL, LOSS_RANGE, GRAD_CHANGE, ICS_L2, ICS_COS)))
    s = {a: C.mean(out.metrics[SHIFT][a]) for a in ARMS}
    out.measured = (f"percentile shift: BN {s['bn']:.2f}, none {s['none']:.2f}, noisy BN {s['noisy_bn']:.2f}; "
                    f"val acc BN {C.mean(out.metrics[VAL]['bn']):.3f}, none {C.mean(out.metrics[VAL]['none']):.3f}, "
                    f"noisy BN {C.mean(out.metrics[VAL]['noisy_bn']):.3f}")
    return out


def _cfg(steps, probe_every, eval_every, grid, tune_steps, tune_seeds):
    return {"steps": steps, "probe_every": probe_every, "eval_every": eval_every, "batch_size": 60, "grid": grid,
            "tune_steps": tune_steps, "tune_seeds": tune_seeds, "noise_mean": 0.5, "noise_scale": 0.5,
            "etas": [0.25, 0.5, 1.0, 2.0]}


CLAIM = Claim(
    id="covariate-shift",
    title="BN works by reducing internal covariate shift",
    articles=(
        Quote("Solves internal covariate shift: In a neural network, each hidden unit's input distribution changes "
              "every time when there is a parameter update in the previous layer. This is called internal covariate "
              "shift. [...] This problem is solved by normalizing the layer's inputs over a mini-batch.",
              "seed article 001"),
        Quote("The method aims to reduce the internal covariate shift in training deep networks, making the network "
              "training more efficient and stable.", "seed article 000"),
        Quote("Since the input distribution of each layer does not change significantly when we use batch "
              "normalization, it significantly speeds up the training process of neural networks while boosting "
              "the performance of it.", "seed article 003"),
    ),
    papers=("Ioffe & Szegedy 2015 Fig. 1: MNIST, 3x100 sigmoid, 50k steps, batch 60 — BN reaches higher test "
            "accuracy faster; the 15/50/85th percentiles of a last-layer sigmoid input drift without BN and stay "
            "stable with BN. Santurkar et al. 2018: BN with injected time-varying noise ('noisy BN') trains about "
            "as well as BN despite a larger distribution shift; BN networks show similar or higher ICS by their "
            "gradient measure; what BN does change is the landscape: smaller loss variation and gradient change "
            "along the gradient (better beta-smoothness)."),
    measures=("Ioffe's network (SGD, batch 60, Glorot init, each arm at its own rate from a declared search on "
              "tuning seeds and a tuning split) with BN, without, and with noisy BN "
              "(after BN, per unit and per step: scale U(0.5, 1.5), shift U(-0.5, 0.5)). Shift = path length of the "
              "15/50/85th percentiles of each last-hidden-layer sigmoid input between probes, over its mean 15-85 "
              "spread, averaged over the 100 units. Landscape: loss range and largest gradient change when moving "
              "eta * gradient, eta in {0.25, 0.5, 1, 2}. Gradient ICS (Santurkar Sec. 3): ||G - G'||_2 and cos(G, "
              "G') of the 2nd-4th Linear layers' weight gradients before/after the earlier layers' SGD step."),
    # The headline tests the articles' causal claim ("since the input distribution ... does not change ..., it
    # speeds up training"): if less shift is why BN helps, injecting shift after BN (noisy BN, Santurkar et al.)
    # must cost accuracy: BN beats noisy BN by at least 1 point. Its complement, noisy BN within 1 point of BN
    # (TOST, confirmatory), is Santurkar's finding: if that is supported, shift is not why BN helps. That BN's
    # own output shifts less is built in (it normalizes) and only describes: exploratory.
    # Margins (declared before the runs): 0.01 of accuracy (1 point); shift in units of a unit's own 15-85
    # percentile spread, summed over the run: 0.25 spread (a quarter of the unit's range moved over the whole run)
    # is the smallest drift a reader of Ioffe's Fig. 1-style plot would see; landscape measures: 0.01 nats of loss
    # range and 0.01 of gradient-norm change along the gradient (~1% of a loss gradient of order one).
    # Gradient ICS (added with Santurkar's measure, declared before its first run): the articles' "BN reduces ICS"
    # read through Santurkar's definition: BN's ||G - G'|| smaller than no BN's by 0.01 (the landscape rules'
    # gradient-norm margin) and BN's cos(G, G') larger by 0.05 (about 3 degrees near cos 1); exploratory, since
    # the headline is the causal test above.
    rule=Rule(metric=VAL, treatment="bn", control="noisy_bn", direction="greater", margin=0.01),
    secondary=(
        Rule(metric=VAL, treatment="noisy_bn", control="bn", direction="within", kind="equivalence", margin=0.01,
             confirmatory=True),
        Rule(metric=SHIFT, treatment="noisy_bn", control="bn", direction="greater", margin=0.25),
        Rule(metric=SHIFT, treatment="bn", control="none", direction="less", margin=0.25),
        Rule(metric=VAL, treatment="noisy_bn", control="none", direction="greater", margin=0.01),
        Rule(metric=LOSS_RANGE, treatment="bn", control="none", direction="less", margin=0.01),
        Rule(metric=GRAD_CHANGE, treatment="bn", control="none", direction="less", margin=0.01),
        Rule(metric=ICS_L2, treatment="bn", control="none", direction="less", margin=0.01),
        Rule(metric=ICS_COS, treatment="bn", control="none", direction="greater", margin=0.05),
    ),
    interpretation=("Primary rule: the articles' mechanism predicts that a network whose layer inputs are made to "
                    "shift (noisy BN, more shift than BN by construction: secondary rule) loses BN's accuracy; the "
                    "confirmatory equivalence rule tests the opposite (Santurkar et al.: noisy BN trains as well). "
                    "The percentile plot and the BN-vs-none shift rule describe the shift; they cannot decide why "
                    "BN helps. The landscape rules test what Santurkar et al. propose instead; the gradient-ICS "
                    "rules test 'BN reduces internal covariate shift' by Santurkar's gradient-based definition."),
    configs={"tiny": _cfg(8, 4, 4, [0.3, 1.0], 4, 1), "quick": _cfg(1000, 50, 50, [0.1, 0.3, 1.0], 400, 2),
             "full": _cfg(4000, 100, 100, [0.03, 0.1, 0.3, 1.0, 3.0], 1500, 3)},
    run=run,
)
