"""The claim protocol: what a claim declares, how it runs, and what it hands to the report.

A claim is one file under ``normlab/lab/claims/`` that builds a :class:`Claim` and is listed in the registry
(``claims/__init__.py``). It declares, before anything runs:

- what the articles say (quoted) and what the papers report,
- what the experiment measures,
- its :class:`~normlab.lab.verdict.Rule` (metric, the two arms, predicted direction, margin) and optional
  secondary rules,
- three configurations: ``tiny`` (tests: one seed, a few steps), ``quick`` (the demo) and ``full``.

``Claim.run(ctx)`` performs the experiment through :class:`Context`, whose :meth:`Context.map` runs the
independent units (one arm x one seed x one setting), each a :class:`~normlab.lab.train.TrainConfig` run by the
lab's engine. The returned :class:`Outcome` holds per-seed metrics; the verdicts are computed
from them by :func:`~normlab.lab.verdict.decide` here, never by the claim.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..verdict import NOT_RUN, Rule, Verdict, decide, not_run

__all__ = ["Quote", "Claim", "Context", "Outcome", "Figure", "Table", "ClaimResult", "LEVELS", "run_claim",
           "MissingDependency"]

LEVELS = ("tiny", "quick", "full")
DEFAULT_SEEDS = {"tiny": 1, "quick": 3, "full": 5}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of normlab's own source files: part of every unit's key, so results computed by other code (a
    changed claim, layer or kernel) are recomputed rather than reused; unchanged code reuses them."""
    root = Path(__file__).resolve().parents[2]  # the normlab package
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class MissingDependency(RuntimeError):
    """Raised by a claim (or one of its arms) when a layer of normlab it needs is not available."""


@dataclass(frozen=True)
class Quote:
    """A statement quoted verbatim from a source (an article of the seed set or a paper)."""

    text: str
    source: str


@dataclass(frozen=True)
class Figure:
    """A finished matplotlib figure with a file stem and a caption."""

    name: str
    caption: str
    figure: Any  # matplotlib.figure.Figure


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass
class Outcome:
    """What a claim's run returns: per-seed metrics, figures, tables and notes.

    ``metrics[metric][arm][seed] = value``; every rule's metric must appear here with both of its arms (an arm
    that could not run is listed in ``not_run`` with the reason instead).
    """

    metrics: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    measured: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)

    def add(self, metric: str, arm: str, seed: int, value: float) -> None:
        self.metrics.setdefault(metric, {}).setdefault(arm, {})[int(seed)] = float(value)


@dataclass(frozen=True)
class Claim:
    id: str
    title: str
    articles: tuple[Quote, ...]
    papers: str
    measures: str
    rule: Rule
    configs: Mapping[str, Mapping[str, Any]]
    run: Callable[["Context"], Outcome]
    secondary: tuple[Rule, ...] = ()
    interpretation: str = ""  # how to read the result (caveats of scale), declared with the rule

    def __post_init__(self) -> None:
        missing = [lv for lv in LEVELS if lv not in self.configs]
        if missing:
            raise ValueError(f"Claim {self.id!r}: configs must define {LEVELS}, missing {missing}")


class Context:
    """What a running claim receives: its configuration, seeds, output folder and the resumable unit runner."""

    def __init__(self, claim: Claim, level: str, seeds: Sequence[int], out_dir: Path,
                 pool: ProcessPoolExecutor | None = None, log: Callable[[str], None] = lambda s: None) -> None:
        if level not in LEVELS:
            raise ValueError(f"Context: level must be one of {LEVELS}, got {level!r}")
        self.claim = claim
        self.level = level
        self.config: dict[str, Any] = dict(claim.configs[level])
        self.seeds = [int(s) for s in seeds]
        self.out_dir = Path(out_dir)
        self.run_dir = self.out_dir / "runs" / claim.id
        self.pool = pool
        self.log = log
        self.reused = 0
        self.computed = 0

    def map(self, configs: Sequence[Any], *, alone: bool = False) -> list[Any]:
        """Run every :class:`~normlab.lab.train.TrainConfig` with the lab's engine; the results in order.

        A minimal sequential runner (one torch thread per run), kept until the executors (local processes, Ray,
        resumable through the store) replace it. ``alone=True`` is for units that *measure time*: here every unit
        already runs alone.
        """
        from ..train import TrainConfig, train

        bad = [type(c).__name__ for c in configs if not isinstance(c, TrainConfig)]
        if bad:
            raise TypeError(f"Context.map: expected TrainConfig objects, got {bad[0]}")
        if configs:
            self.log(f"  {self.claim.id}: {len(configs)} unit(s) to run")
        results = []
        for config in configs:
            result = train(config, progress="none", threads=1)
            result.model = None  # a stored run has no module: claims read metrics and probes only
            results.append(result)
            self.computed += 1
        return results


@dataclass
class ClaimResult:
    """Everything the report needs about one claim after it ran (or failed to)."""

    claim: Claim
    level: str
    seeds: list[int]
    outcome: Outcome | None
    verdict: Verdict
    secondary: list[Verdict]
    seconds: float
    reused: int = 0
    computed: int = 0
    error: str = ""

    @property
    def rerun_command(self) -> str:
        seeds = "" if len(self.seeds) == DEFAULT_SEEDS[self.level] else f" --seeds {len(self.seeds)}"
        level = {"tiny": " --tiny", "quick": " --quick", "full": " --full"}[self.level]
        return f"normlab claims --only {self.claim.id}{level}{seeds} --out DIR"


def _verdict_for(rule: Rule, outcome: Outcome) -> Verdict:
    for arm in (rule.treatment, rule.control):
        if arm in outcome.not_run:
            return not_run(rule, f"arm {arm!r} not run: {outcome.not_run[arm]}")
    arms = outcome.metrics.get(rule.metric, {})
    missing = [a for a in (rule.treatment, rule.control) if a not in arms]
    if missing:
        return not_run(rule, f"no measurement of {rule.metric!r} for arm(s) {missing}")
    return decide(rule, arms[rule.treatment], arms[rule.control])


def run_claim(claim: Claim, level: str, seeds: Sequence[int], out_dir: Path, *,
              pool: ProcessPoolExecutor | None = None, log: Callable[[str], None] = lambda s: None) -> ClaimResult:
    """Run one claim and compute its verdicts. A claim that raises is reported as not run with the error."""
    ctx = Context(claim, level, seeds, out_dir, pool=pool, log=log)
    start = time.perf_counter()
    outcome: Outcome | None = None
    error = ""
    try:
        outcome = claim.run(ctx)
    except MissingDependency as exc:
        error = f"missing dependency: {exc}"
    except Exception as exc:  # noqa: BLE001 - one broken claim must not take the whole report down
        error = f"{type(exc).__name__}: {exc}"
        log("".join(traceback.format_exception(exc)))
    seconds = time.perf_counter() - start
    if outcome is None:
        verdict = not_run(claim.rule, error)
        secondary = [not_run(r, error) for r in claim.secondary]
    else:
        verdict = _verdict_for(claim.rule, outcome)
        secondary = [_verdict_for(r, outcome) for r in claim.secondary]
    return ClaimResult(claim, level, list(ctx.seeds), outcome, verdict, secondary, seconds,
                       ctx.reused, ctx.computed, error)


def environment() -> dict[str, str]:
    """Versions and machine facts printed in the report, so a reader knows where the numbers came from."""
    import numpy
    import torch

    from ... import __version__

    return {"normlab": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(), "cpus": str(os.cpu_count()),
            "torch threads per unit": "1"}


__all__ += ["environment", "NOT_RUN"]
