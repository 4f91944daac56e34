"""Claim 13, ``recurrent``: normalization in recurrent networks — per-time-step BN vs LN vs none.

Sequential MNIST by rows (28 steps of 28 pixels) with the lab's recurrent classifier (``normlab.lab.models``,
``"rnn"``: a tanh cell h_t = tanh(N_t^h(W_h h_{t-1}) + N_t^x(W_x x_t) + b); for ``norm="bn"`` N is recurrent BN as in
Cooijmans et al. 2017 -- one ``TimeStepBatchNorm`` per term with statistics per time step, a shared gamma starting at
0.1 and no beta), with per-time-step BN, LN, or no norm; same seeds, optimizer and steps.
"""

from __future__ import annotations

from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, MissingDependency, Outcome, Quote

VAL = "final validation accuracy"
AUC = "mean validation accuracy over training (area under the curve)"
ARMS = ("bn", "ln", "none")
LABEL = {"bn": "per-time-step BN", "ln": "LN", "none": "no norm"}


def _build(spec: str, hidden: int):
    try:
        from ..models import build_model
    except ImportError as exc:
        raise MissingDependency(f"the lab's recurrent model (normlab.lab.models) is not available ({exc})") from exc
    return build_model("rnn", (1, 28, 28), 10, norm=spec, hidden=hidden)


def _unit(u: dict) -> dict:
    import torch

    torch.manual_seed(u["seed"])
    data = C.digits(u["seed"])
    model = _build(u["arm"], u["hidden"])
    h = C.train(model, data, steps=u["steps"], batch_size=u["batch_size"], lr=u["lr"], optimizer="adam",
                eval_every=u["eval_every"], seed=u["seed"])
    return {**u, **h.to_dict()}


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out = Outcome()
    arms = []
    for arm in ARMS:
        try:
            _build(arm, 4)
            arms.append(arm)
        except MissingDependency as exc:
            out.not_run[arm] = str(exc)
    res = ctx.map(_unit, [{"arm": a, "seed": s, **cfg} for s in ctx.seeds for a in arms])
    for r in res:
        out.add(VAL, r["arm"], r["seed"], r["val_acc"][-1])
        out.add(AUC, r["arm"], r["seed"], C.mean(r["val_acc"][1:]))
    if arms:
        fig, (ax,) = C.new_figure(1, width=6.4)
        for i, arm in enumerate(arms):
            rs = [r for r in res if r["arm"] == arm]
            C.band(ax, rs[0]["steps"], [r["val_acc"] for r in rs], LABEL[arm], C.COLORS[i])
        ax.set(title="sequential MNIST (rows): validation accuracy", xlabel="training step", ylim=(0, 1))
        ax.legend()
        out.figures.append(Figure("rnn", f"Recurrent tanh classifier (hidden {cfg['hidden']}), Adam "
                                  f"{cfg['lr']}, batch {cfg['batch_size']}. Line: mean over seeds; band: min..max.",
                                  fig))
        out.tables.append(C.seed_table(out, (VAL, AUC)))
        out.measured = "final val acc: " + ", ".join(f"{a} {C.mean(out.metrics[VAL][a]):.3f}" for a in arms)
    return out


def _cfg(steps, eval_every):
    return {"steps": steps, "eval_every": eval_every, "batch_size": 64, "lr": 2e-3, "hidden": 64}


CLAIM = Claim(
    id="recurrent",
    title="BN is hard to apply to recurrent networks; per-time-step BN or LN make it work",
    articles=(
        Quote("Applying Batch Normalization to recurrent neural networks is less straightforward than applying it to "
              "feedforward networks. This is because the statistics of each time step in a sequence can vary, and "
              "the sequence length may also vary.", "seed article 000"),
        Quote("To beat this problem, a number of normalization methods have been proposed, together with batch "
              "renormalization, weight normalization, and layer normalization.", "seed article 002 (machine-"
              "translated; note: per-time-step statistics are recurrent BN, Cooijmans et al., not batch "
              "renormalization)"),
    ),
    papers=("Cooijmans et al. 2017 (arXiv:1603.09025): BN on the recurrent and input terms with separate statistics "
            "per time step (steps beyond T_max reuse the last), gamma initialized to 0.1; faster convergence and "
            "better generalization on sequential MNIST, Penn Treebank and text8 (1.36 bpc). Ba et al. 2016: layer "
            "norm needs no batch statistics and suits RNNs."),
    measures=("Row-by-row MNIST (28 steps x 28 pixels), tanh RNN with 64 hidden units, per-time-step BN or LN on "
              "both terms, or none; Adam, batch 64; eval-mode validation accuracy (final and mean over training)."),
    rule=Rule(metric=AUC, treatment="bn", control="none", direction="greater"),
    secondary=(Rule(metric=AUC, treatment="ln", control="none", direction="greater"),
               Rule(metric=VAL, treatment="bn", control="none", direction="greater"),
               Rule(metric=VAL, treatment="bn", control="ln", direction="greater")),
    interpretation="BN is Cooijmans' recurrent BN: per-step statistics, one gamma shared over steps starting at 0.1, "
                   "no beta (the cell's bias is the shift).",
    configs={"tiny": _cfg(4, 2), "quick": _cfg(250, 50), "full": _cfg(1500, 100)},
    run=run,
)
