"""The claims of the Batch Normalization literature that ``normlab claims`` tests.

One file per claim, each defining ``CLAIM`` (a :class:`~normlab.lab.claims.base.Claim`); this module lists them
in report order. Adding a claim = adding its file and one line in ``_MODULES``.
"""

from __future__ import annotations

from importlib import import_module

from .base import Claim, ClaimResult, Context, Outcome, run_claim

__all__ = ["Claim", "ClaimResult", "Context", "Outcome", "run_claim", "all_claims", "get_claim", "claim_ids"]

_MODULES = (
    "faster_convergence",
    "higher_learning_rates",
    "careless_init",
    "regularization",
    "vanishing_gradients",
    "dying_relu",
    "covariate_shift",
    "small_batches",
    "dropout_order",
    "train_vs_inference",
    "inference_overhead",
    "batch_layer_norm",
    "recurrent",
    "bn_only_training",
)


def all_claims() -> list[Claim]:
    """Every registered claim, in report order."""
    return [import_module(f".{m}", __name__).CLAIM for m in _MODULES]


def claim_ids() -> list[str]:
    return [c.id for c in all_claims()]


def get_claim(claim_id: str) -> Claim:
    for c in all_claims():
        if c.id == claim_id:
            return c
    raise ValueError(f"normlab claims: unknown claim {claim_id!r}; valid ids: {', '.join(claim_ids())}")


def run_claims(ids: list[str] | None = None, *, level: str = "quick", seeds: int | None = None,
               out_dir: str = "claims-report", jobs: int = 1, command: str = "",
               log=print) -> tuple[list[ClaimResult], dict]:
    """Run the selected claims (all by default) and write the report; returns the results and the report paths.

    ``seeds`` defaults to 1 (tiny), 3 (quick) or 5 (full); ``jobs > 1`` runs independent units in that many
    worker processes (one torch thread each). Finished units stored under ``out_dir/runs`` are reused.
    """
    import time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from pathlib import Path

    from ..report import write_report
    from .base import DEFAULT_SEEDS, LEVELS

    if level not in LEVELS:
        raise ValueError(f"normlab claims: level must be one of {LEVELS}, got {level!r}")
    n_seeds = DEFAULT_SEEDS[level] if seeds is None else seeds
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"normlab claims: --seeds must be a positive integer, got {seeds!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"normlab claims: --jobs must be a positive integer, got {jobs!r}")
    selected = [get_claim(i) for i in ids] if ids else all_claims()  # unknown ids fail before anything runs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # spawn, not fork: a forked child of a process that already used torch's thread pool can deadlock.
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) if jobs > 1 else None
    results = []
    try:
        for n, claim in enumerate(selected, 1):
            log(f"[{n}/{len(selected)}] {claim.id} ({level}, {n_seeds} seed(s))")
            r = run_claim(claim, level, list(range(n_seeds)), out, pool=pool, log=log)
            log(f"    -> {r.verdict.verdict}: {r.verdict.summary()} ({r.seconds:.1f} s)")
            results.append(r)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    paths = write_report(results, out, command=command, total_seconds=time.perf_counter() - start)
    return results, paths


__all__ += ["run_claims"]
