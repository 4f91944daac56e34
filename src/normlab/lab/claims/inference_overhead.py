"""Claim 11, ``inference-overhead``: BN costs time at inference; folding it into the preceding layer removes it.

A small CNN (conv-BN-ReLU x 3, pooling, linear) in eval mode, three ways: with BN, with BN folded into the convs
(``normlab.tools.fold_batchnorm``), and the same convs without any BN. CPU latency, one thread, measured
interleaved (variant order rotated every round) so that machine load affects the three alike, one unit at a time
(no other unit of the run on the other core); per seed (a different random model) the median over rounds.
"""

from __future__ import annotations

import time

from ..verdict import Rule
from . import _common as C
from .base import Claim, Context, Figure, Outcome, Quote

LAT = "median CPU latency per batch of {b} (ms)"


def _fold_available() -> str | None:
    try:
        from ...tools import fold_batchnorm  # noqa: F401
    except ImportError as exc:
        return f"normlab.tools.fold_batchnorm is not available ({exc})"
    return None


def _cnn(spec: str, channels):
    from torch import nn

    layers, prev = [], 1
    for c in channels:
        layers += [nn.Conv2d(prev, c, 3, padding=1, bias=spec == "none"), C.norm(spec, c), nn.ReLU()]
        prev = c
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(prev * 16, 10)]
    return nn.Sequential(*layers)


def _unit(u: dict) -> dict:
    import torch

    torch.manual_seed(u["seed"])
    data = C.digits(u["seed"])
    models = {"bn": _cnn("bn", u["channels"]), "none": _cnn("none", u["channels"])}
    # Give BN non-trivial statistics and affine parameters, as after training.
    with torch.no_grad():
        models["bn"].train()
        for i in range(0, u["stat_images"], 100):
            models["bn"](data.x_train[i:i + 100].view(-1, 1, 28, 28))
        for m in models["bn"].modules():
            if hasattr(m, "running_var") and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    models["bn"].eval()
    models["none"].eval()
    max_diff = None
    if "folded" in u["arms"]:
        from ...tools import fold_batchnorm

        models["folded"] = fold_batchnorm(models["bn"])
        with torch.no_grad():
            x = data.x_val[:64].view(-1, 1, 28, 28)
            max_diff = float((models["folded"](x) - models["bn"](x)).abs().max())
    out = {"arm": "all", "seed": u["seed"], "max_abs_diff_folded": max_diff}
    for b in u["batch_sizes"]:
        x = data.x_val[:b].view(-1, 1, 28, 28)
        times = {a: [] for a in u["arms"]}
        with torch.inference_mode():
            for a in u["arms"]:
                for _ in range(3):  # warm-up
                    models[a](x)
            for rnd in range(u["rounds"]):
                order = u["arms"][rnd % len(u["arms"]):] + u["arms"][:rnd % len(u["arms"])]
                for a in order:
                    t0 = time.perf_counter()
                    for _ in range(u["inner"]):
                        models[a](x)
                    times[a].append((time.perf_counter() - t0) / u["inner"] * 1e3)
        out[str(b)] = {a: sorted(v)[len(v) // 2] for a, v in times.items()}
        out[f"{b}-all"] = times
    return out


def run(ctx: Context) -> Outcome:
    cfg = ctx.config
    out = Outcome()
    arms = ["bn", "folded", "none"]
    why = _fold_available()
    if why:
        out.not_run["folded"] = why
        arms.remove("folded")
    res = ctx.map(_unit, [{"seed": s, "arms": arms, **cfg} for s in ctx.seeds], alone=True)  # latency: no neighbour
    for b in cfg["batch_sizes"]:
        for r in res:
            for a in arms:
                out.add(LAT.format(b=b), a, r["seed"], r[str(b)][a])
    fig, axes = C.new_figure(len(cfg["batch_sizes"]), width=4.0)
    for ax, b in zip(axes, cfg["batch_sizes"]):
        vals = [[r[str(b)][a] for r in res] for a in arms]
        ax.boxplot(vals)
        ax.set_xticks(range(1, len(arms) + 1), arms)
        ax.set(title=f"batch {b}", ylabel="ms per batch (median per seed)")
    out.figures.append(Figure("latency", "Eval-mode CPU latency (1 thread) of the same CNN with BN, with BN folded "
                              "into the convolutions, and without BN; one point per seed (median over interleaved "
                              "rounds).", fig))
    out.tables.append(C.seed_table(out, [LAT.format(b=b) for b in cfg["batch_sizes"]]))
    diffs = [r["max_abs_diff_folded"] for r in res if r["max_abs_diff_folded"] is not None]
    if diffs:
        out.notes.append(f"folded vs unfolded outputs: max |difference| {max(diffs):.2e} (folding is exact up to "
                         "rounding)")
    b = cfg["batch_sizes"][-1]
    out.measured = f"batch {b}: " + ", ".join(f"{a} {C.mean(out.metrics[LAT.format(b=b)][a]):.3f} ms" for a in arms)
    return out


def _cfg(rounds, inner):
    return {"channels": [16, 32, 32], "batch_sizes": [1, 32], "rounds": rounds, "inner": inner,
            "stat_images": 1000 if rounds > 2 else 200}


PRIMARY = LAT.format(b=32)
CLAIM = Claim(
    id="inference-overhead",
    title="BN adds inference cost; fused (folded) BN removes it",
    articles=(
        Quote("Batch normalization requires extra computations throughout each the ahead and backward passes, "
              "leading to slower coaching and longer inference instances, particularly on low-power units like "
              "cellphones.", "seed article 002 (machine-translated: 'extra computations during both the forward "
              "and backward passes, resulting in slower training and longer inference times')"),
        Quote("To deal with this, optimization methods like fused batch normalization that mix batch normalization "
              "with different layers to scale back computation overhead can be utilized.",
              "seed article 002 (machine-translated: 'fused batch normalization that combines BN with other "
              "layers to reduce computation overhead')"),
    ),
    papers=("Folding is exact algebra for eval mode: W' = W * gamma / sqrt(var + eps), b' = (b - mean) * gamma / "
            "sqrt(var + eps) + beta (as in torch.nn.utils.fusion); no paper anchor for the size of the overhead."),
    measures=("Median eval-mode latency (ms per batch, 1 CPU thread) of a 3-conv CNN (16/32/32 channels, 28x28 "
              "input) with BN, with BN folded, and without BN, at batch 1 and 32; variants interleaved per round."),
    rule=Rule(metric=PRIMARY, treatment="bn", control="none", direction="greater", unit=" ms"),
    secondary=(Rule(metric=PRIMARY, treatment="folded", control="bn", direction="less", unit=" ms"),
               Rule(metric=LAT.format(b=1), treatment="bn", control="none", direction="greater", unit=" ms")),
    interpretation=("Timing on a shared machine is noisy; the paired, interleaved design cancels slow drifts but "
                    "not bursts. The no-BN convs carry a bias, the BN convs none (as usual), so the comparison is "
                    "what a user would deploy."),
    configs={"tiny": {**_cfg(2, 1), "batch_sizes": [1, 32]}, "quick": _cfg(30, 5), "full": _cfg(100, 10)},
    run=run,
)
