"""The ``normlab`` command: parses arguments, calls the parts of the package, prints."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    """A BatchNorm smoke run: train-mode steps against torch, then eval, printed side by side."""
    import torch

    from .nn import BatchNorm2d

    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    print("normlab demo: BatchNorm2d(8) vs torch.nn.BatchNorm2d(8), 5 training steps on (16, 8, 6, 6) inputs")
    for step in range(5):
        x = torch.randn(16, 8, 6, 6) * 3 + 2
        diff = (ours(x) - theirs(x)).abs().max().item()
        print(f"  step {step}: max |y_normlab - y_torch| = {diff:.2e}")
    ours.eval(), theirs.eval()
    x = torch.randn(4, 8, 6, 6)
    print(f"  eval:   max |y_normlab - y_torch| = {(ours(x) - theirs(x)).abs().max().item():.2e}")
    print(f"  running_var max difference = {(ours.running_var - theirs.running_var).abs().max().item():.2e}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """The BatchNorm kernel grid: medians and ratios printed, everything written to JSON."""
    from .bench import kernels as bench_kernels

    names = args.shapes.split(",") if args.shapes else (bench_kernels.QUICK if args.quick else None)
    env = bench_kernels.environment()
    print(f"normlab bench: torch {env['torch']}, numba {env['numba']}, {env['cpus']} CPUs, "
          f"threads torch={env['torch_threads']} numba={env['numba_threads']}, load {env['loadavg_at_start']}")
    cases = bench_kernels.run_grid(names, reps=args.reps, compile_=args.compile,
                                   progress=lambda s: print(f"  timing {s}", file=sys.stderr, flush=True))
    print(bench_kernels.format_table(cases))
    bench_kernels.write_json(cases, args.json, env)
    print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job of `make demo`")
    p.set_defaults(func=_demo)
    p = sub.add_parser("bench", help="time normlab's BatchNorm kernels against torch (table + JSON)")
    p.add_argument("--reps", type=int, default=15, help="timed rounds per case (median reported)")
    p.add_argument("--quick", action="store_true", help="a 5-shape subset of the grid")
    p.add_argument("--shapes", default="", help="comma-separated grid names, e.g. '32x64x56x56,256x128'")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    p.add_argument("--json", default="bench_kernels.json", help="where to write the results")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
