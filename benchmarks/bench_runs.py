"""Several `normlab bench --json` runs judged together: per (shape, mode), 'x torch' (torch / normlab as
dispatched) per run and its median over runs, the median '/roof' (the roofline over the best copy), '/roofm' per run
(over the row's own median copy), and the rows whose median 'x torch' misses "within 5% of torch or faster".

Issue #16 judges "never slower than torch" on medians of interleaved rounds over three runs; one run's ratio at a
small shape moves by +-5% on a 2-core machine, so a single table decides nothing there.

    normlab bench --json run1.json; normlab bench --json run2.json; normlab bench --json run3.json
    python benchmarks/bench_runs.py run1.json run2.json run3.json [--margin 0.95]

Exit code 2 (one line) for a missing or unreadable file or runs without a common case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def load(path: str) -> dict[tuple[str, str], dict]:
    """``(name, mode) -> case`` of one ``normlab bench --json`` file. Raises ``ValueError`` naming the file."""
    try:
        with open(path) as fh:
            cases = json.load(fh)["cases"]
        return {(c["name"], c["mode"]): c for c in cases}
    except KeyError as exc:
        raise ValueError(f"bench_runs: {path}: expected the JSON of `normlab bench --json`, missing the key {exc}") \
            from None
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"bench_runs: {path}: expected the JSON of `normlab bench --json`, got {exc}") from None


def summarize(runs: list[dict[tuple[str, str], dict]], margin: float = 0.95) -> list[dict]:
    """Per case present in every run: the runs' 'x torch' and '/roof', their medians, and whether the median of
    'x torch' is below ``margin``."""
    if not runs:
        raise ValueError("bench_runs: expected at least one run")
    common = [k for k in runs[0] if all(k in r for r in runs[1:])]
    if not common:
        raise ValueError("bench_runs: the runs have no (shape, mode) case in common")
    out = []
    for key in common:
        xs = [r[key]["speedup_vs_torch"] for r in runs]
        roofs = [r[key]["normlab_over_roofline"] for r in runs]
        # older JSON has no same-rounds figure: NaN, printed as such
        roofm = [r[key].get("normlab_over_roofline_same_rounds", float("nan")) for r in runs]
        med = statistics.median(xs)
        out.append({"name": key[0], "mode": key[1], "x_torch": xs, "x_torch_median": med,
                    "roof_median": statistics.median(roofs), "roofm": roofm, "miss": med < margin})
    return out


def format_summary(rows: list[dict], n_runs: int, margin: float) -> str:
    lines = [f"{n_runs} runs; 'x torch' = torch / normlab (dispatched) per run and its median; '/roof' median; "
             f"'/roofm' per run; '<' marks a median below {margin}",
             f"{'shape':<19}{'mode':<9}{'x torch per run':>24}{'median':>8}{'/roof':>7}{'/roofm per run':>24}"]
    for r in rows:
        per_run = " ".join(f"{x:.2f}" for x in r["x_torch"])
        roofm = " ".join(f"{x:.2f}" for x in r["roofm"])
        lines.append(f"{r['name']:<19}{r['mode']:<9}{per_run:>24}{r['x_torch_median']:>8.2f}{r['roof_median']:>7.2f}"
                     f"{roofm:>24}" + ("  <" if r["miss"] else ""))
    misses = [f"{r['name']} {r['mode']}" for r in rows if r["miss"]]
    lines.append(f"below {margin}: " + (", ".join(misses) if misses else "none"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="JSON files written by `normlab bench --json`")
    parser.add_argument("--margin", type=float, default=0.95,
                        help="a row misses when its median 'x torch' is below this (default 0.95: within 5%%)")
    args = parser.parse_args(argv)
    try:
        rows = summarize([load(p) for p in args.runs], args.margin)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(format_summary(rows, len(args.runs), args.margin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
