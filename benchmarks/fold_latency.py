"""CPU inference latency of a ResNet-style CNN before and after folding batch norm (normlab.tools.fold_batchnorm).

Prints one table (median milliseconds per forward at batch 1 and 32, eval mode, torch.inference_mode) and the
unfolded/folded ratio measured in this run; ``--json PATH`` also writes the figures. Not a test: nothing is
asserted about speed. The model is the lab's ``normlab.lab.models.resnet`` (3x3 stem, one basic block per width
16/32/64 with 1x1 projection shortcuts, global pooling, linear head) with normlab BatchNorm layers, 32x32 input.

    python benchmarks/fold_latency.py [--repeats 30] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from normlab.lab.models import resnet
from normlab.tools import fold_batchnorm, plan_fold


def build_model() -> tuple[nn.Module, str]:
    return resnet((3, 32, 32), 10, norm="bn"), "normlab.lab.models.resnet((3, 32, 32), 10, norm='bn')"


def trained_statistics(model: nn.Module) -> nn.Module:
    """A few training-mode passes so that the running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def median_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, what = build_model()
    model = trained_statistics(model)
    report = plan_fold(model)
    folded = fold_batchnorm(model)
    print(f"model: {what}; {len(report.folded)} of {report.num_norms} batch norms folded; "
          f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'batch':>5}  {'unfolded ms':>12}  {'folded ms':>10}  {'ratio':>6}  {'max |diff|':>10}")
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            diff = (model(x) - folded(x)).abs().max().item()
        before, after = median_ms(model, x, args.repeats), median_ms(folded, x, args.repeats)
        rows.append({"batch": batch, "unfolded_ms": before, "folded_ms": after, "ratio": before / after,
                     "max_abs_diff": diff})
        print(f"{batch:>5}  {before:>12.3f}  {after:>10.3f}  {before / after:>6.2f}  {diff:>10.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": what, "threads": args.threads, "repeats": args.repeats, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
