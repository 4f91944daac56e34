"""Units per second of one tiny claims run on the local executor (1 and 2 jobs) and on Ray (1 and 2 CPUs), in one
run, then a worked estimate of a claims run on a cluster computed from stored per-unit times.

    .venv/bin/python benchmarks/scale_out.py                      # every claim at --tiny, 1 seed
    .venv/bin/python benchmarks/scale_out.py --only careless-init --seeds 2
    .venv/bin/python benchmarks/scale_out.py --estimate-db claims-report --cores 8,32,128

Each setting starts from an empty output directory (so every unit runs) and times ``run_claims`` from its first
unit to its last; Ray's start-up (``ray.init``) is timed apart and left out of units/second. The estimate reads
``runs.wall_time`` (seconds per unit, measured where the unit ran) of the store given by ``--estimate-db`` -- the
store of a ``normlab claims --full`` run for a full run's figure, by default the store of this run's first setting --
and gives the wall time at N cores as max(total unit-seconds / (N x efficiency), longest unit), with the
efficiency measured here (units/s with 2 Ray CPUs over twice that with 1). Run it on a quiet machine; it prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _one(ids, level: str, seeds: int, executor: str, jobs: int, out: Path) -> dict:
    from normlab.lab.report import run_claims

    startup = 0.0
    if executor == "ray":
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=jobs, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        startup = time.perf_counter() - t
    try:
        t = time.perf_counter()
        results, _ = run_claims(ids, level=level, seeds=seeds, out_dir=str(out), jobs=jobs, executor=executor,
                                log=lambda s: None, progress="none")
        seconds = time.perf_counter() - t
    finally:
        if executor == "ray":
            import ray

            ray.shutdown()
    units = sum(r.computed for r in results)
    errors = [f"{r.claim.id}: {r.error}" for r in results if r.error]
    return {"executor": executor, "jobs": jobs, "units": units, "seconds": seconds, "startup_seconds": startup,
            "units_per_second": units / seconds if seconds > 0 else float("nan"), "errors": errors, "out": str(out)}


def _unit_times(db: Path) -> list[tuple[str, float]]:
    from normlab.lab.store import open_store
    from normlab.lab.sweep import find_db

    with open_store(find_db(db, command="scale_out.py")) as store:
        return [(r.claim or r.sweep, float(r.wall_time)) for r in store.runs()]


def _span(db: Path) -> float | None:
    """Seconds from the first stored unit's start to the last one's end (the run's wall time when one command
    filled the store in one go), from the units' creation times and durations; None without them."""
    from normlab.lab.store import open_store
    from normlab.lab.sweep import find_db

    with open_store(find_db(db, command="scale_out.py")) as store:
        marks = [(float(r.created) - float(r.wall_time), float(r.created)) for r in store.runs()
                 if getattr(r, "created", None) is not None]
    return max(e for _, e in marks) - min(s for s, _ in marks) if marks else None


def estimate(times: list[tuple[str, float]], cores: list[int], efficiency: float) -> dict:
    """Wall time of running ``times`` (claim, unit seconds) on N cores: max(total / (N * efficiency), longest)."""
    secs = [t for _, t in times]
    total, longest = sum(secs), max(secs)
    return {"units": len(secs), "claims": len({c for c, _ in times}), "unit_seconds_total": total,
            "unit_seconds_median": statistics.median(secs), "unit_seconds_max": longest, "efficiency": efficiency,
            "wall_seconds": {n: max(total / (n * efficiency), longest) for n in cores}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated claim ids (default: every claim)")
    ap.add_argument("--level", default="tiny", choices=("tiny", "quick", "full"))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--settings", default="local:1,local:2,ray:1,ray:2", help="executor:jobs,...")
    ap.add_argument("--estimate-db", help="store whose per-unit times the estimate uses (a claims output directory)")
    ap.add_argument("--cores", default="2,8,32,128", help="core counts of the estimate")
    ap.add_argument("--efficiency", type=float, help="parallel efficiency of the estimate (default: measured here; "
                                                      "a tiny run's is dominated by worker start-up)")
    ap.add_argument("--json", default="scale_out.json")
    args = ap.parse_args(argv)
    ids = [s for s in args.only.split(",") if s] if args.only else None
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings.split(",")]
    cores = [int(c) for c in args.cores.split(",")]

    rows = []
    with tempfile.TemporaryDirectory(prefix="normlab-scale-out-") as tmp:
        for executor, jobs in settings:
            if executor == "ray":
                try:
                    import ray  # noqa: F401
                except ImportError:
                    print(f"skipping ray:{jobs}: Ray is not installed (pip install 'normlab[cluster]')")
                    continue
            out = Path(tmp) / f"{executor}-{jobs}"
            print(f"timing {executor} x{jobs} ...", file=sys.stderr, flush=True)
            rows.append(_one(ids, args.level, args.seeds, executor, jobs, out))
        print(f"\nclaims run: {args.only or 'every claim'} at --{args.level}, {args.seeds} seed(s)")
        print(f"  {'executor':<10}{'jobs/CPUs':>10}{'units':>7}{'seconds':>9}{'units/s':>9}{'start-up':>10}")
        for r in rows:
            print(f"  {r['executor']:<10}{r['jobs']:>10}{r['units']:>7}{r['seconds']:>9.1f}"
                  f"{r['units_per_second']:>9.2f}{r['startup_seconds']:>9.1f}s"
                  + (f"  errors: {r['errors']}" if r["errors"] else ""))
        by = {(r["executor"], r["jobs"]): r["units_per_second"] for r in rows}
        eff = 1.0
        for ex in ("ray", "local"):
            if (ex, 1) in by and (ex, 2) in by and by[(ex, 1)] > 0:
                eff = min(1.0, by[(ex, 2)] / (2 * by[(ex, 1)]))
                break
        if args.efficiency is not None:
            eff = args.efficiency
        source = Path(args.estimate_db) if args.estimate_db else (Path(rows[0]["out"]) if rows else None)
        est = None
        if source is not None:
            times = _unit_times(source)
            if times:
                est = estimate(times, cores, eff)
                print(f"\nestimate from {len(times)} stored unit times ({source if args.estimate_db else 'this run'}"
                      f"): {est['units']} units of {est['claims']} claim(s), {est['unit_seconds_total']:.1f} "
                      f"unit-seconds (median {est['unit_seconds_median']:.2f} s, longest "
                      f"{est['unit_seconds_max']:.2f} s), parallel efficiency {eff:.2f} (measured above)")
                span = _span(source) if args.estimate_db else None
                if span:
                    print(f"  the stored units span {span:.0f} s of wall time (first start to last end): "
                          f"{est['unit_seconds_total'] / span:.2f} units ran at once on average")
                for n, w in est["wall_seconds"].items():
                    print(f"  {n:>5} cores: {w:8.1f} s  (= max({est['unit_seconds_total']:.1f} / ({n} x {eff:.2f}), "
                          f"{est['unit_seconds_max']:.2f}))")
            else:
                print(f"\nno stored unit times in {source}: the claims run stored no lab runs")
    Path(args.json).write_text(json.dumps({"settings": rows, "estimate": est, "level": args.level,
                                           "seeds": args.seeds, "only": args.only}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
