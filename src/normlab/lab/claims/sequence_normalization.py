"""Claim 26, ``sequence-normalization``: for variable-length sequences, batch renorm, weight norm and layer norm
are the remedies.

A variable-length sequence task built from MNIST (5,000 images): each image, averaged to 14x14, is read row by row
and stretched in time to its own length between 4 and 14 steps (a fixed function of its pixels), and a mini-batch is
zero-padded to 14 steps (``normlab.lab.models.seq_rnn``). A tanh RNN (64 units, Glorot init, orthogonal recurrent
weights) reads it, the normalization on the input-to-hidden term with statistics over every position of the padded
batch (sequence-wise BN, Laurent et al. 2016), and classifies from each sequence's last valid step. Arms: BN over
every position, padding included (what a plain BN layer does with a padded batch: the naive baseline), BN over the
valid positions only (``MaskedBatchNorm``, normlab's remedy), batch renormalization (over every position, as a
plain layer), weight normalization of the input and recurrent weights, and layer norm (per position). Each arm at
its own Adam learning rate, chosen by a declared search (tuning seeds 1000+, a held-out part of the training split,
criterion final tuning-validation accuracy). Per seed: the final validation accuracy (eval mode).
"""

from __future__ import annotations

from ..train import TrainConfig
from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

VAL = "final validation accuracy"
ARMS = ("bn", "masked", "brn", "wn", "ln")
REMEDIES = ("brn", "wn", "ln")  # the article's, in its order
LABEL = {"bn": "BN over padded positions (naive)", "masked": "masked BN", "brn": "batch renorm",
         "wn": "weight norm", "ln": "layer norm"}
SPLIT = 0


def _norm_kw(arm: str, steps: int) -> dict:
    # Batch renorm's warm-up (the paper: r_max = 1, d_max = 0 for 5k steps, r_max -> 3 by 40k, d_max -> 5 by 25k) is
    # longer than these runs; the same shape compressed to the run length, as in the small-batches claim.
    if arm != "brn":
        return {}
    return {"warmup_steps": steps // 10, "r_max_steps": max(steps * 8 // 10, steps // 10 + 1),
            "d_max_steps": max(steps // 2, steps // 10 + 1)}


def _config(arm: str, seed: int, cfg: dict, lr: float | None = None) -> TrainConfig:
    args = {"hidden": cfg["hidden"], "pool": cfg["pool"], "min_len": cfg["min_len"], "init": "xavier"}
    if _norm_kw(arm, cfg["steps"]):
        args["norm_kw"] = _norm_kw(arm, cfg["steps"])
    return TrainConfig(data="mnist5k", split_seed=SPLIT, seed=seed, model="seq_rnn", norm=arm, model_args=args,
                       optimizer="adam", lr=cfg["grid"][0] if lr is None else lr, batch_size=cfg["batch_size"],
                       steps=cfg["steps"], eval_every=cfg["eval_every"], drop_last=True)


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out, arms, tuned, units, runs = C.run_arms(ctx, ARMS, _config, "xavier (Glorot normal); recurrent weights "
                                               "orthogonal", str)
    fig, (ax,) = C.new_figure(1, width=6.4)
    C.final_accuracy_curves(out, ax, arms, units, runs, tuned, VAL, LABEL.__getitem__,
                            lambda arm: "--" if arm == "bn" else "-")
    rows = 28 // cfg["pool"]
    ax.set(title=f"variable-length sequences ({cfg['min_len']} to {rows} steps, padded)", xlabel="training step",
           ylabel="validation accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    out.figures.append(Figure("curves", "Validation accuracy (eval mode) of a tanh RNN on zero-padded variable-length "
                              "sequences, each normalization on the input-to-hidden term (Adam, per-arm tuned lr). "
                              "Line: mean over seeds; band: min..max.", fig))
    out.tables.append(C.seed_table(out, (VAL,)))
    C.note_divergences(out, runs)
    if "brn" in arms:
        kw = _norm_kw("brn", cfg["steps"])
        out.notes.append(f"batch renorm's warm-up is the paper's schedule compressed to {cfg['steps']} steps: r_max = "
                         f"1, d_max = 0 for {kw['warmup_steps']} steps, then r_max -> 3 by step {kw['r_max_steps']} "
                         f"and d_max -> 5 by step {kw['d_max_steps']}")
    out.measured = "final validation accuracy: " + ", ".join(f"{LABEL[a]} {C.mean(out.metrics[VAL][a]):.2%}"
                                                            for a in arms)
    return out


def _cfg(steps, eval_every, grid, tune_steps, tune_seeds, hidden=64):
    return {"hidden": hidden, "pool": 2, "min_len": 4, "batch_size": 64, "steps": steps, "eval_every": eval_every,
            "grid": grid, "tune_steps": tune_steps, "tune_seeds": tune_seeds}


# Margin declared before running: 1 point of accuracy (~ the standard error of one accuracy on 1,000 validation
# images). A remedy must beat the naive BN over padded positions by more than that: one confirmatory rule per
# remedy the article names (Holm over the three), batch renorm first as the article lists it. Masked BN against
# the naive BN (does padding hurt BN at all here?) is exploratory context.
PRIMARY = Rule(metric=VAL, treatment="brn", control="bn", direction="greater", margin=0.01)
SECONDARY = (tuple(Rule(metric=VAL, treatment=a, control="bn", direction="greater", margin=0.01, confirmatory=True)
                   for a in REMEDIES[1:])
             + (Rule(metric=VAL, treatment="masked", control="bn", direction="greater", margin=0.01),))


CLAIM = Claim(
    id="sequence-normalization",
    title="For variable-length sequences, batch renorm, weight norm and layer norm are the remedies",
    articles=(
        Quote("In sequence fashions like RNNs, the enter varies in size, making it troublesome to use batch "
              "normalization.", "seed article 002 (002_2ca648713b604fad.txt, line 187; machine-translated: 'in "
              "sequence models like RNNs, the input varies in length, making it difficult to use batch "
              "normalization')"),
        Quote("To beat this problem, a number of normalization methods have been proposed, together with batch "
              "renormalization, weight normalization, and layer normalization.", "seed article 002 "
              "(002_2ca648713b604fad.txt, line 187)"),
    ),
    papers=("Laurent et al. (2016, arXiv:1510.01378) normalize the input-to-hidden term of RNNs with statistics over "
            "the batch and time of padded batches ('sequence-wise' BN, padding excluded). Ioffe (2017) proposes batch "
            "renormalization for small or non-i.i.d. batches, not for variable lengths; Salimans & Kingma (2016) "
            "present weight normalization as suited to RNNs because it uses no batch statistics; Ba et al. (2016) "
            "show layer norm on RNNs. None of the three compares itself with BN over padded sequences."),
    measures=("MNIST images averaged to 14x14, read as sequences of rows, each stretched to its own length of 4-14 "
              "steps and zero-padded to 14; tanh RNN, 64 units, the norm on the input-to-hidden term over every "
              "position of the padded batch (BN: naive, with padding; masked BN: valid positions only; batch renorm; "
              "layer norm per position) or weight norm on both weight matrices; the classifier reads the last "
              "valid step. Adam, batch 64, each arm at its own rate (declared search on tuning seeds and a tuning "
              "split); final validation accuracy in eval mode."),
    rule=PRIMARY,
    secondary=SECONDARY,
    interpretation=("Padding reaches the output only through the statistics of the naive BN (the classifier reads "
                    "each sequence's last valid step), so the naive arm isolates what the article calls the "
                    "difficulty. Zero-padded positions shift BN's mean towards 0 and shrink its variance by a batch-"
                    "dependent share (here about a third of the positions are padding); gamma and beta can absorb "
                    "the average share, not its variation from batch to batch. Stretched image rows are a stand-in "
                    "for sequences of naturally different lengths (speech, text). A pilot before the rules were "
                    "fixed (seed 0, Adam 3e-3, 200 steps, one run per arm) gave 0.72 (BN), 0.72 (masked), 0.71 "
                    "(batch renorm), 0.57 (weight norm), 0.70 (layer norm): the budget was kept. "
                    "The first --quick run chose the top of the learning-rate grid, 1e-2, for most arms; the grid "
                    "was then widened to 3e-2 at every level (a change after results, disclosed here: the verdicts "
                    "stay exploratory until a rerun on fresh seeds)."),
    configs={"tiny": _cfg(4, 2, [1e-3, 3e-3], 2, 1, hidden=8),
             "quick": _cfg(200, 100, [1e-3, 3e-3, 1e-2, 3e-2], 100, 1),
             "full": _cfg(800, 200, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], 300, 2)},
    run=run,
    order=26,
)
