"""Rewrite the README's generated blocks from the commands that produce them, so no figure is typed by hand.

    python scripts/update_readme.py [--only claims-table,claims-table-full,bench-table,bench-models,scale-out] [--python .venv/bin/python]

Each block sits between ``<!-- BEGIN name ... -->`` and ``<!-- END name -->``; its content is replaced by the
output of the block's command (a Markdown table, or a report in a code block), preceded by the command itself and the date. The claims commands
reuse stored runs (instant after `make demo`, and after `normlab claims --full --out full-report` for the full table
and the scale-out estimate); the benchmark commands run the benchmark.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# name -> (command after the interpreter, kind): "table" keeps the Markdown table lines the command prints; "text"
# keeps its whole report (progress lines dropped) in a code block.
BLOCKS = {
    "claims-table": (["-m", "normlab.cli", "claims", "--quick", "--out", "claims-report", "--print-table", "--quiet"],
                     "table"),
    "claims-table-full": (["-m", "normlab.cli", "claims", "--full", "--out", "full-report", "--print-table", "--quiet"],
                          "table"),
    "bench-table": (["-m", "normlab.cli", "bench", "--json", "bench_kernels.json"], "text"),
    "bench-models": (["-m", "normlab.cli", "bench", "--models", "--reps", "9"], "text"),
    "scale-out": (["benchmarks/scale_out.py", "--estimate-db", "full-report"], "text"),
}
PROGRESS = ("  timing", "wrote ")


def run_block(python: str, args: list[str], kind: str) -> list[str]:
    proc = subprocess.run([python, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"update_readme: `{' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    if kind == "text":
        lines = [line for line in proc.stdout.splitlines() if line.strip() and not line.startswith(PROGRESS)]
        return ["```", *lines, "```"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    if not table:
        raise SystemExit(f"update_readme: `{' '.join(args)}` printed no Markdown table:\n{proc.stdout[-2000:]}")
    return table


def replace_block(text: str, name: str, lines: list[str]) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)}[^\n]*-->\n)(.*?)(<!-- END {re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"update_readme: README.md has no block {name!r}")
    return pattern.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(3), text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated block names (default: all)")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BLOCKS)
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in names:
        cmd, kind = BLOCKS[name]
        shown = "normlab " + " ".join(cmd[2:]) if cmd[0] == "-m" else "python " + " ".join(cmd)
        table = run_block(args.python, cmd, kind)
        stamp = time.strftime("%Y-%m-%d", time.gmtime())
        text = replace_block(text, name, [f"Produced by `{shown}` on {stamp} (2-core CPU machine):", "", *table])
        print(f"updated {name}: {len(table)} lines")
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(readme)  # all blocks or none
    return 0


if __name__ == "__main__":
    sys.exit(main())
