"""Claim 6, ``dying-relu``: BN prevents ReLU units from dying.

A ReLU MLP trained with a large learning rate, with and without BN before each ReLU. At sampled steps every
hidden unit is checked on a fixed probe set of 1,000 validation images (eval mode): a unit is dead when its ReLU
output is zero for every probe image. Per seed: the fraction of dead units at the end.
"""

from __future__ import annotations

from ..verdict import Rule
from . import _common as C
from ..train import TrainConfig
from .base import Claim, Context, Figure, Outcome, Quote

DEAD = "fraction of dead ReLU units at the end"
VAL = "final validation accuracy"


def _config(arm: str, seed: int, cfg: dict) -> TrainConfig:
    # A unit is dead when its ReLU input is <= 0 for every probe image: tools.ActivationRecorder's dead fraction of
    # the ReLU modules' inputs, eval mode, on the 1,000 validation images, at step 0, every probe_every, the end.
    return TrainConfig(data="mnist5k", split_seed=seed, seed=seed, model="mlp", norm=arm,
                       model_args={"widths": cfg["widths"], "activation": "relu"}, optimizer="sgd", momentum=0.9,
                       lr=cfg["lr"], batch_size=cfg["batch_size"], steps=cfg["steps"], eval_every=cfg["steps"],
                       drop_last=True,
                       probes={"dead": {"kind": "activations", "layers": "activations", "stats": ["dead"],
                                        "data": "val", "mode": "eval", "every": cfg["probe_every"]}})


def _trace(result) -> list[tuple[int, float]]:
    """(step, fraction of dead units over all hidden layers) per probe; every layer has the same width."""
    d = result.probes["dead"]
    return [(s, C.mean([C.num(v) for v in row])) for s, row in zip(d["steps"], d["dead_fraction"])]


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    units = [{"arm": arm, "seed": s} for s in ctx.seeds for arm in ("bn", "none")]
    runs = ctx.map([_config(u["arm"], u["seed"], cfg) for u in units])
    res = [{**u, "trace": _trace(r), "val_acc": C.curve(r, "val_acc")[-1], "diverged_at": r.diverged_step}
           for u, r in zip(units, runs)]
    out = Outcome()
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
                              f"images (SGD momentum 0.9, lr {cfg['lr']}). Line: mean over seeds; band: min..max.",
                              fig))
    out.tables.append(C.seed_table(out, (DEAD, VAL)))
    diverged = sum(r["diverged_at"] is not None for r in res)
    if diverged:
        out.notes.append(f"{diverged} run(s) diverged; their dead fraction is measured at the divergence step")
    out.measured = (f"dead units at the end: BN {C.mean(out.metrics[DEAD]['bn']):.1%} vs none "
                    f"{C.mean(out.metrics[DEAD]['none']):.1%}")
    return out


def _cfg(steps, probe_every):
    return {"widths": [100, 100, 100, 100], "steps": steps, "probe_every": probe_every, "batch_size": 64, "lr": 0.2}


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
    measures=("784-100x4-10 ReLU MLP, BN before each ReLU or none, SGD with momentum 0.9 at a large learning rate; "
              "fraction of hidden units with zero output on all of 1,000 probe images, sampled during training; "
              "verdict on the value at the end."),
    rule=Rule(metric=DEAD, treatment="bn", control="none", direction="less"),
    secondary=(Rule(metric=VAL, treatment="bn", control="none", direction="greater"),),
    configs={"tiny": _cfg(6, 3), "quick": _cfg(500, 50), "full": _cfg(2000, 100)},
    run=run,
)
