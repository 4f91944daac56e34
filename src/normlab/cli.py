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


def _claims(args: argparse.Namespace) -> int:
    """``normlab claims``: run the literature's claims about BN and write the report."""
    from .lab.claims import all_claims, run_claims
    from .lab.report import verdict_table_markdown

    if args.list:
        for c in all_claims():
            print(f"{c.id:24s} {c.title}")
        return 0
    ids = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    command = "normlab claims " + " ".join(sys.argv[2:]) if args.command_line is None else args.command_line
    try:
        results, paths = run_claims(ids, level=args.level, seeds=args.seeds, out_dir=args.out, jobs=args.jobs,
                                    command=command.strip(), log=(lambda s: None) if args.quiet else print)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_table:
        print(verdict_table_markdown(results, link=False))
    print(f"report: {paths['html']} (also {paths['md'].name}, {paths['json'].name})")
    return 0


def _add_claims_parser(sub) -> None:
    import os

    p = sub.add_parser("claims", help="test the literature's claims about BN; write an HTML/Markdown/JSON report")
    level = p.add_mutually_exclusive_group()
    level.add_argument("--quick", dest="level", action="store_const", const="quick", help="the demo (default)")
    level.add_argument("--full", dest="level", action="store_const", const="full", help="more seeds, longer runs")
    level.add_argument("--tiny", dest="level", action="store_const", const="tiny", help="seconds; for tests")
    p.set_defaults(level="quick", func=_claims, command_line=None)
    p.add_argument("--only", metavar="ID,...", help="comma-separated claim ids (see --list)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 1 tiny, 3 quick, 5 full)")
    p.add_argument("--out", default="claims-report", help="output directory (default: claims-report)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--list", action="store_true", help="list the claims and exit")
    p.add_argument("--print-table", action="store_true", help="print the verdict table as Markdown at the end")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job of `make demo`")
    p.set_defaults(func=_demo)
    _add_claims_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
