"""Claim 10, ``train-vs-inference``: at inference BN uses running statistics, which makes the output independent
of the batch — and how good those statistics are.

One BN network (He init) is trained (SGD with momentum, a large learning rate: weights move fast, which is when the
moving average lags — Wu & Johnson 2021). At checkpoints, a copy is evaluated with its running (EMA) statistics,
with statistics recalibrated on 2,000 training images (PreciseBN, ``normlab.tools.recalibrate``), with the batch
statistics of batches of the *training* batch size (32: what the network saw while it trained) and of 1,000. The
articles' sentence is that the running averages stand in for the training-time statistics ("consistency ...
irrespective of batch size"): an equivalence test of running vs batch-32 statistics. The same network is also
trained with BN momentum 0.01 and 0.5 (a sweep of how fast the average follows the weights).
Per seed: validation accuracy averaged over the checkpoints, for each way.
"""

from __future__ import annotations

from typing import Any

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

ACC = "validation accuracy, mean over checkpoints"
MISMATCH = "accuracy with batch-32 statistics minus with running statistics, mean over checkpoints"
MODES = ("running", "recalibrated", "batch-32", "batch-1000")
MOMENTA = (0.1, 0.01, 0.5)  # BN momentum (torch convention: weight of the new batch); 0.1 is the default
SWEEP = {m: f"momentum {m}" for m in MOMENTA}


def _recalibrate_available() -> str | None:
    try:
        from ...tools import recalibrate  # noqa: F401
    except ImportError as exc:
        return f"normlab.tools.recalibrate is not available ({exc})"
    return None


def _config(seed: int, modes: list[str], cfg: dict, momentum: float = 0.1) -> TrainConfig:
    # Checkpoints at every probe_every steps (not step 0) and at the end; each evaluates copies of the model.
    args = {"widths": cfg["widths"], "activation": "relu", "init": "he"}
    if momentum != 0.1:
        args["norm_kw"] = {"momentum": momentum}
    return TrainConfig(data="mnist5k", split_seed=seed, seed=seed, model="mlp", norm="bn", model_args=args,
                       optimizer="sgd", momentum=0.9,
                       lr=cfg["lr"], batch_size=cfg["batch_size"], steps=cfg["steps"], eval_every=cfg["steps"],
                       drop_last=True,
                       probes={"modes": {"kind": "eval_modes", "modes": modes, "recalibrate_n": 2000,
                                         "recalibrate_batch": 200, "every": cfg["probe_every"], "first": False}})


def _checkpoints(result, modes: list[str]) -> list[dict]:
    p = result.probes["modes"]
    return [{"step": s, **{m: C.num(p[m][i]) for m in modes}} for i, s in enumerate(p["steps"])]


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out = Outcome()
    modes = list(MODES)
    why = _recalibrate_available()
    if why:
        out.not_run["recalibrated"] = why
        modes.remove("recalibrated")
    units: list[dict[str, Any]] = [{"momentum": m, "seed": s} for m in MOMENTA for s in ctx.seeds]
    runs = ctx.map([_config(u["seed"], modes, cfg, u["momentum"]) for u in units])
    allres: list[dict[str, Any]] = [{**u, "checkpoints": _checkpoints(r, modes)} for u, r in zip(units, runs)]
    res: list[dict[str, Any]] = [r for r in allres if r["momentum"] == 0.1]
    for r in res:
        for mode in modes:
            out.add(ACC, mode, r["seed"], C.mean([c[mode] for c in r["checkpoints"]]))
    for r in allres:
        out.add(MISMATCH, SWEEP[r["momentum"]], r["seed"],
                C.mean([c["batch-32"] - c["running"] for c in r["checkpoints"]]))
    fig, (ax,) = C.new_figure(1, width=6.4)
    for i, mode in enumerate(modes):
        C.band(ax, [c["step"] for c in res[0]["checkpoints"]], [[c[mode] for c in r["checkpoints"]] for r in res],
               mode, C.COLORS[i], marker="o")
    ax.set(title="validation accuracy by inference statistics", xlabel="training step", ylabel="accuracy")
    ax.legend()
    out.figures.append(Figure("inference-stats", "The same trained BN network evaluated with running (EMA) "
                              "statistics, recalibrated population statistics (PreciseBN), and batch statistics of "
                              "evaluation batches of 32 (the training batch size) and of 1,000 (BN momentum 0.1). "
                              "Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (ACC, MISMATCH)))
    out.measured = "mean val acc: " + ", ".join(f"{m} {C.mean(out.metrics[ACC][m]):.3f}" for m in modes)
    return out


def _cfg(steps, probe_every):
    # batch_size 32 is part of the protocol: the batch-32 mode is "the training batch size"
    return {"steps": steps, "probe_every": probe_every, "batch_size": 32, "lr": 0.1, "widths": [100, 100, 100]}


CLAIM = Claim(
    id="train-vs-inference",
    title="At inference BN uses running statistics, so outputs do not depend on the batch",
    articles=(
        Quote("During training, statistics are computed per mini-batch, but during inference, moving averages of "
              "means and variances obtained during training are used. This ensures consistency in model behavior "
              "irrespective of batch size.", "seed article 004"),
        Quote("Whereas coaching, the layer makes use of the imply and customary deviation of the present batch. "
              "Throughout inference, nevertheless, it depends on a shifting common from batches encountered "
              "throughout coaching.", "seed article 002 (machine-translated: 'while training, the layer uses the "
              "mean and standard deviation of the current batch; during inference it relies on a moving average')"),
    ),
    papers=("Wu & Johnson 2021 (arXiv:2105.07576): EMA statistics can be inaccurate (unstable at large batch / "
            "fast-moving weights); PreciseBN population statistics over 10^3-10^4 samples are near-optimal; "
            "normalizing with small-batch statistics at test time causes a train-test inconsistency."),
    measures=("784-100-100-100-10 ReLU MLP (He init) with BN, SGD momentum 0.9, lr 0.1, batch 32; at checkpoints, "
              "validation accuracy with running statistics, recalibrated statistics (2,000 training images), and "
              "batch statistics over batches of 32 (the training batch size) and 1,000; averaged over checkpoints. "
              "The same with BN momentum 0.01 and 0.5: the batch-32 minus running accuracy per momentum."),
    # Margins (declared before the runs): 0.01 of accuracy (1 point) for every comparison of inference modes:
    # running statistics that match the training-time statistics within 1 point keep the behaviour "consistent";
    # the same 1 point for PreciseBN over the EMA and for the momentum sweep (exploratory).
    rule=Rule(metric=ACC, treatment="running", control="batch-32", direction="within", kind="equivalence",
              margin=0.01),
    secondary=(Rule(metric=ACC, treatment="recalibrated", control="running", direction="greater", margin=0.01),
               Rule(metric=ACC, treatment="batch-1000", control="running", direction="greater", margin=0.01),
               Rule(metric=MISMATCH, treatment=SWEEP[0.01], control=SWEEP[0.1], direction="greater", margin=0.01)),
    interpretation=("Primary rule: running statistics give the accuracy of the training-time statistics (batches "
                    "of 32) within 1 point (TOST): the articles' consistency. Secondary: PreciseBN beats the EMA "
                    "(Wu & Johnson); a slow EMA (momentum 0.01) lags more behind fast-moving weights than the "
                    "default."),
    configs={"tiny": _cfg(6, 3), "quick": _cfg(500, 100), "full": _cfg(2000, 200)},
    run=run,
)
