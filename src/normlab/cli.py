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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job of `make demo`")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
