"""Fold BatchNorm into the convolutions before it for inference, and see what it buys.

    python examples/fold_for_inference.py [--model cnn|resnet] [--steps 30] [--repeats 30]

Trains one of the lab's models (normlab.lab.models) for a few SGD steps on synthetic images so that the running
statistics and affine parameters are no longer at their initial values, switches to eval mode, folds every
eval-mode BN into its conv with normlab.tools.fold_batchnorm (W' = s * W, b' = s * (b - mu) + beta with
s = gamma / sqrt(sigma2 + eps)), and prints the fold plan, the largest output difference against the unfolded eval
model, and the median latency of both on one batch. Timings are whatever this machine gives; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from normlab.lab.models import build_model
from normlab.tools import fold_batchnorm, plan_fold


def synthetic_batches(steps: int, batch: int, shape: tuple[int, int, int], classes: int, seed: int = 0):
    """Images whose class shifts the mean of one channel-block: learnable in a few steps, no download."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, *shape, generator=g) + 0.5 * y.view(-1, 1, 1, 1).float() / classes
        yield x, y


def median_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("cnn", "resnet"), default="resnet")
    p.add_argument("--steps", type=int, default=30, help="training steps before folding")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=16, help="image height and width")
    p.add_argument("--repeats", type=int, default=30, help="timed forward passes per model (median reported)")
    args = p.parse_args(argv)
    if min(args.steps, args.batch, args.size, args.repeats) < 1 or args.batch < 2:
        p.error("--steps, --size and --repeats must be >= 1 and --batch >= 2")

    torch.manual_seed(0)
    shape, classes = (3, args.size, args.size), 10
    model = build_model(args.model, shape, classes, norm="bn")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for x, y in synthetic_batches(args.steps, args.batch, shape, classes):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{args.model}: {args.steps} training steps, last loss {loss.item():.3f}")

    model.eval()
    x, _ = next(synthetic_batches(1, args.batch, shape, classes, seed=1))
    # example_input: every pair is checked on the input its layer really gets (folded against unfolded)
    print(plan_fold(model, example_input=x))
    folded = fold_batchnorm(model, example_input=x)  # a folded copy; `model` keeps its BN layers

    with torch.inference_mode():
        diff = (model(x) - folded(x)).abs().max().item()
        scale = model(x).abs().max().item()
    print(f"max |eval - folded| = {diff:.2e} (largest logit {scale:.2e}, float32)")

    before, after = median_ms(model, x, args.repeats), median_ms(folded, x, args.repeats)
    print(f"median latency, batch {args.batch}, {args.repeats} runs: eval {before:.3f} ms, folded {after:.3f} ms, "
          f"ratio folded/eval {after / before:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    main()
