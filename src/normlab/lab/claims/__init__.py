"""The claims of the Batch Normalization literature that ``normlab claims`` tests.

One file per claim, each defining ``CLAIM`` (a :class:`~normlab.lab.claims.base.Claim`). The registry is the
package itself: every module here whose name does not start with ``_`` (and is not ``base``) is a claim, placed
in the report by the ``order`` it declares (or the number of its docstring, "Claim N, ..."). Adding a claim =
adding its file; no list of ids exists anywhere else.
"""

from __future__ import annotations

import pkgutil
import re
from functools import lru_cache
from importlib import import_module

from .base import Claim, ClaimResult, Context, Outcome, run_claim

__all__ = ["Claim", "ClaimResult", "Context", "Outcome", "run_claim", "all_claims", "get_claim", "claim_ids",
           "claim_modules"]

_NOT_CLAIMS = {"base"}


def claim_modules() -> list[str]:
    """Names of the claim modules of this package (every module but ``base`` and the ``_private`` ones)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_CLAIMS and not m.ispkg)


def _order(module) -> tuple[int, str]:
    claim = module.CLAIM
    if claim.order:
        return claim.order, claim.id
    m = re.match(r"\s*Claim\s+(\d+)\b", module.__doc__ or "")
    return (int(m.group(1)) if m else 10**6), claim.id


@lru_cache(maxsize=1)
def _registry() -> tuple[Claim, ...]:
    modules = []
    for name in claim_modules():
        module = import_module(f".{name}", __name__)
        if not isinstance(getattr(module, "CLAIM", None), Claim):
            raise TypeError(f"normlab.lab.claims.{name}: a claim module must define CLAIM = Claim(...); "
                            f"helpers shared by claims go in a module whose name starts with '_'")
        modules.append(module)
    claims = [m.CLAIM for m in sorted(modules, key=_order)]
    ids = [c.id for c in claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"normlab.lab.claims: claim id(s) {dup} are defined by more than one module")
    return tuple(claims)


def all_claims() -> list[Claim]:
    """Every claim of the package, in report order."""
    return list(_registry())


def claim_ids() -> list[str]:
    return [c.id for c in all_claims()]


def get_claim(claim_id: str) -> Claim:
    for c in all_claims():
        if c.id == claim_id:
            return c
    raise ValueError(f"normlab claims: unknown claim {claim_id!r}; valid ids: {', '.join(claim_ids())}")


def run_claims(ids: list[str] | None = None, *, level: str = "quick", seeds: int | None = None,
               first_seed: int = 0, out_dir: str = "claims-report", jobs: int = 1, executor: str = "local", address: str | None = None,
               command: str = "", log=print, progress: str = "auto", tally=None) -> tuple[list[ClaimResult], dict]:
    """Run the selected claims (all by default) and write the report; returns the results and the report paths.

    ``seeds`` defaults to 1 (tiny), 5 (quick) or 10 (full); the verdict seeds are ``first_seed ..
    first_seed + seeds - 1`` (0 for exploratory runs; a preregistered protocol names its fresh block, see
    :mod:`normlab.lab.protocol`). Every unit is a lab run stored in
    ``out_dir/normlab.sqlite`` (with the claim id and level) by this process; units already there are reused.
    ``executor``: "local" (``jobs`` worker processes, one torch thread each; 1 = in this process) or "ray" (one
    task per unit on the cluster at ``address``, or a local Ray instance with ``jobs`` CPUs); one executor serves
    every claim of the call. ``progress``: "auto" | "bar" | "lines" | "none" (per claim, over its units).
    Ctrl-C raises :class:`~normlab.lab.executors.Interrupted` with the counts of ``tally``.
    """
    import time
    from pathlib import Path

    from ..executors import Tally, make_executor
    from ..report import write_report
    from ..store import DB_NAME, Store
    from .base import DEFAULT_SEEDS, LEVELS

    if level not in LEVELS:
        raise ValueError(f"normlab claims: level must be one of {LEVELS}, got {level!r}")
    n_seeds = DEFAULT_SEEDS[level] if seeds is None else seeds
    if not isinstance(n_seeds, int) or isinstance(n_seeds, bool) or n_seeds < 1:
        raise ValueError(f"normlab claims: --seeds must be a positive integer, got {seeds!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"normlab claims: --jobs must be a positive integer, got {jobs!r}")
    from ..tuning import TUNING_SEED_BASE

    if not isinstance(first_seed, int) or isinstance(first_seed, bool) or first_seed < 0 \
            or first_seed + n_seeds > TUNING_SEED_BASE:
        raise ValueError(f"normlab claims: --first-seed must be an integer >= 0 with every verdict seed below the "
                         f"tuning seeds ({TUNING_SEED_BASE}), got {first_seed!r} with {n_seeds} seeds")
    selected = [get_claim(i) for i in ids] if ids else all_claims()  # unknown ids fail before anything runs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = tally if tally is not None else Tally()
    start = time.perf_counter()
    ex = make_executor(executor, jobs=jobs, address=address, threads=1)
    results = []
    try:
        with Store(out / DB_NAME) as store:
            for n, claim in enumerate(selected, 1):
                log(f"[{n}/{len(selected)}] {claim.id} ({level}, {n_seeds} seed(s))")
                r = run_claim(claim, level, list(range(first_seed, first_seed + n_seeds)), out, executor=ex, store=store, log=log,
                              progress=progress, tally=tally)
                log(f"    -> {r.verdict.verdict}: {r.verdict.summary()} ({r.seconds:.1f} s)")
                results.append(r)
    finally:
        ex.close()
    paths = write_report(results, out, command=command, total_seconds=time.perf_counter() - start)
    return results, paths


__all__ += ["run_claims"]
