"""Claim 10, ``train-vs-inference``: at inference BN uses running statistics, which makes the output independent
of the batch — and how good those statistics are.

One BN network is trained (SGD with momentum, a large learning rate: weights move fast, which is when the moving
average lags — Wu & Johnson 2021). At checkpoints, a copy is evaluated four ways: running (EMA) statistics,
statistics recalibrated on 2,000 training images (PreciseBN, ``normlab.tools.recalibrate``), batch statistics of
evaluation batches of 1,000, and batch statistics of evaluation batches of 8. Per seed: validation accuracy
averaged over the checkpoints, for each way.
"""

from __future__ import annotations

from ..verdict import Rule
from . import _common as C
from ..train import TrainConfig
from .base import Claim, Context, Figure, Outcome, Quote

ACC = "validation accuracy, mean over checkpoints"
MODES = ("running", "recalibrated", "batch-1000", "batch-8")


def _recalibrate_available() -> str | None:
    try:
        from ...tools import recalibrate  # noqa: F401
    except ImportError as exc:
        return f"normlab.tools.recalibrate is not available ({exc})"
    return None


def _config(seed: int, modes: list[str], cfg: dict) -> TrainConfig:
    # Checkpoints at every probe_every steps (not step 0) and at the end; each evaluates copies of the model.
    return TrainConfig(data="mnist5k", split_seed=seed, seed=seed, model="mlp", norm="bn",
                       model_args={"widths": cfg["widths"], "activation": "relu"}, optimizer="sgd", momentum=0.9,
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
    runs = ctx.map([_config(s, modes, cfg) for s in ctx.seeds])
    res = [{"arm": "bn", "seed": s, "checkpoints": _checkpoints(r, modes)} for s, r in zip(ctx.seeds, runs)]
    for r in res:
        for mode in modes:
            out.add(ACC, mode, r["seed"], C.mean([c[mode] for c in r["checkpoints"]]))
    fig, (ax,) = C.new_figure(1, width=6.4)
    for i, mode in enumerate(modes):
        C.band(ax, [c["step"] for c in res[0]["checkpoints"]], [[c[mode] for c in r["checkpoints"]] for r in res],
               mode, C.COLORS[i], marker="o")
    ax.set(title="validation accuracy by inference statistics", xlabel="training step", ylabel="accuracy")
    ax.legend()
    out.figures.append(Figure("inference-stats", "The same trained BN network evaluated with running (EMA) "
                              "statistics, recalibrated population statistics (PreciseBN), and batch statistics of "
                              "evaluation batches of 1,000 and of 8. Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (ACC,)))
    out.measured = "mean val acc: " + ", ".join(f"{m} {C.mean(out.metrics[ACC][m]):.3f}" for m in modes)
    return out


def _cfg(steps, probe_every):
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
    measures=("784-100-100-100-10 ReLU MLP with BN, SGD momentum 0.9, lr 0.1, batch 32; at checkpoints, eval-mode "
              "validation accuracy with running statistics, recalibrated statistics (2,000 training images), and "
              "batch statistics over evaluation batches of 1,000 and of 8; averaged over checkpoints."),
    # Margins (declared before the runs): 0.01 of accuracy (1 point) for every comparison of inference modes.
    rule=Rule(metric=ACC, treatment="running", control="batch-8", direction="greater", margin=0.01),
    secondary=(Rule(metric=ACC, treatment="recalibrated", control="running", direction="greater", margin=0.01),
               Rule(metric=ACC, treatment="batch-1000", control="running", direction="greater", margin=0.01)),
    interpretation=("Primary rule: running statistics beat per-batch statistics of small evaluation batches (the "
                    "articles' consistency argument). Secondary: PreciseBN beats the EMA (Wu & Johnson), and "
                    "large-batch test statistics vs the EMA."),
    configs={"tiny": _cfg(6, 3), "quick": _cfg(500, 100), "full": _cfg(2000, 200)},
    run=run,
)
