"""Speed of the lab, printed side by side (figures only; nothing is asserted).

1. The seed comparison: seed_mlp with and without BN, 10 epochs, batch 32, Adam 1e-3, the embedded MNIST subset
   with a 20% validation split -- wall time of each run and of the whole thing (data loading included).
2. Engine steps/s against a bare hand-written PyTorch loop on the same model and data (and, for context, the same
   loop fed by a torch DataLoader). Each is timed from the end of its first step to the end of its last, so
   start-up and the engine's first/last evaluations are excluded; repetitions are interleaved, and the median and
   the best repetition are reported (on a shared machine the best one is the least disturbed by neighbours).

    PYTHONPATH=src python benchmarks/lab_speed.py [--steps 1500] [--reps 5] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from normlab.lab.data import load_dataset
from normlab.lab.models import build_model
from normlab.lab.train import TrainConfig, train


def seed_comparison(threads: int) -> dict:
    t0 = time.perf_counter()
    out: dict[str, object] = {}
    for norm in ("bn", "none"):
        cfg = TrainConfig(data="mnist5k", model="seed_mlp", norm=norm, optimizer="adam", lr=1e-3, batch_size=32,
                          epochs=10, seed=0)
        r = train(cfg, progress="none", threads=threads)
        out[norm] = {"wall_s": r.wall_time, "val_acc": r.final["val_acc"], "val_loss": r.final["val_loss"]}
    out["total_s"] = time.perf_counter() - t0
    return out


def _steps_per_s(ends: list[float]) -> float:
    return (len(ends) - 1) / (ends[-1] - ends[0])


def bare_loop(cfg: TrainConfig, ds, steps: int, dataloader: bool = False) -> float:
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model, ds.input_shape, ds.num_classes, norm=cfg.norm)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    x, y = ds.x_train, ds.y_train
    gen = torch.Generator().manual_seed(cfg.seed)
    ends: list[float] = []
    losses: list[float] = []
    if dataloader:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=cfg.batch_size,
                                             shuffle=True, generator=gen)
    while len(ends) < steps:
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
        if dataloader:
            batches = iter(loader)
        else:
            perm = torch.randperm(len(y), generator=gen)
            xs, ys = x[perm], y[perm]
            bs = cfg.batch_size
            batches = ((xs[i : i + bs], ys[i : i + bs]) for i in range(0, len(y), bs))
        for xb, yb in batches:
            if len(ends) >= steps:
                break
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            ends.append(time.perf_counter())
    return _steps_per_s(ends)


def engine(cfg: TrainConfig, ds, record_grad_norm: bool) -> float:
    r = train(cfg, dataset=ds, progress="none", record_grad_norm=record_grad_norm)
    return _steps_per_s(r.history("time"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"normlab lab speed (torch {torch.__version__}, {args.threads} thread(s))\n")
    seed = seed_comparison(args.threads)
    print("seed comparison: seed_mlp, mnist5k 4000 train / 1000 val, Adam 1e-3, batch 32, 10 epochs")
    for norm in ("bn", "none"):
        s = seed[norm]
        print(f"  norm={norm:<5} {s['wall_s']:6.1f} s   val_acc {s['val_acc']:.4f}   val_loss {s['val_loss']:.4f}")
    print(f"  total (both runs, data loading included): {seed['total_s']:.1f} s\n")

    ds = load_dataset("mnist5k")
    results: dict = {"seed_comparison": seed, "steps_per_s": {}}
    for norm in ("bn", "none"):
        cfg = TrainConfig(data="mnist5k", model="seed_mlp", norm=norm, optimizer="adam", lr=1e-3, batch_size=32,
                          steps=args.steps, eval_every=args.steps + 1, seed=0)
        runs: dict[str, list[float]] = {"bare loop": [], "engine (all metrics)": [], "engine (no grad norm)": [],
                                        "bare loop + DataLoader": []}
        for _ in range(args.reps):  # interleaved, so a noisy neighbour hits every variant alike
            runs["bare loop"].append(bare_loop(cfg, ds, args.steps))
            runs["engine (all metrics)"].append(engine(cfg, ds, True))
            runs["engine (no grad norm)"].append(engine(cfg, ds, False))
            runs["bare loop + DataLoader"].append(bare_loop(cfg, ds, args.steps, dataloader=True))
        med = {k: statistics.median(v) for k, v in runs.items()}
        best = {k: max(v) for k, v in runs.items()}
        results["steps_per_s"][norm] = {"median": med, "best": best, "all": runs}
        print(f"steps/s, seed_mlp norm={norm}, batch 32, {args.steps} steps, {args.reps} interleaved repetitions:")
        print(f"  {'':<24}{'median':>8}{'vs bare':>9}{'best':>8}{'vs bare':>9}")
        for k in runs:
            print(f"  {k:<24}{med[k]:8.0f}{med[k] / med['bare loop']:9.1%}{best[k]:8.0f}"
                  f"{best[k] / best['bare loop']:9.1%}")
        print()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
