"""The claim protocol: what a claim declares, how it runs, and what it hands to the report.

A claim is one file under ``normlab/lab/claims/`` that defines ``CLAIM``, a :class:`Claim`; the registry
(``claims/__init__.py``) finds it by listing the package's modules, nothing else names it. It declares, before
anything runs:

- what the articles say (quoted) and what the papers report,
- what the experiment measures,
- its :class:`~normlab.lab.verdict.Rule` (metric, the two arms, predicted direction, margin) and optional
  secondary rules,
- three configurations: ``tiny`` (tests: one seed, a few steps), ``quick`` (the demo) and ``full``,
- its place in the report (``order``).

``Claim.run(ctx)`` performs the experiment through :class:`Context`: every unit (one arm x one seed x one
setting) is a lab run described by a :class:`~normlab.lab.train.TrainConfig`, and :meth:`Context.map` hands the
configs to :func:`normlab.lab.executors.execute`, which skips the units already in ``OUT/normlab.sqlite``, runs
the others (local worker processes or Ray) and stores each finished one with the claim id and the level: a rerun
of the same command resumes where it stopped, and ``normlab ls --db OUT`` lists the units. The returned
:class:`Outcome` holds per-seed metrics; the verdicts are computed from them by
:func:`~normlab.lab.verdict.decide` here, never by the claim.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..executors import ExecutorUnavailable, Tally, execute
from ..store import DB_NAME, Store, code_version
from ..train import RunResult, TrainConfig
from ..verdict import INCONCLUSIVE, NOT_RUN, SUPPORTED, Rule, Verdict, decide, holm, not_run

__all__ = ["Quote", "Claim", "Context", "Outcome", "Figure", "Table", "ClaimResult", "LEVELS", "run_claim",
           "MissingDependency", "code_version"]

LEVELS = ("tiny", "quick", "full")
DEFAULT_SEEDS = {"tiny": 1, "quick": 5, "full": 10}  # issue 12: the t-interval's coverage is shown at these counts


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
    # metric -> reason: its measurements are bounds that favour the rule (e.g. censored values), so a rule on it may
    # be refuted but never "supported" (such a verdict is reported as inconclusive with the reason)
    inconclusive: dict[str, str] = field(default_factory=dict)
    arms: dict[str, dict] = field(default_factory=dict)  # arm -> {"lr", "tuning", "init"}: what each arm ran with

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
    run: Callable[[Context], Outcome]
    secondary: tuple[Rule, ...] = ()
    interpretation: str = ""  # how to read the result (caveats of scale), declared with the rule
    order: int = 0  # place in the report (1 = first); 0: the number of the file's docstring ("Claim N, ...")

    def __post_init__(self) -> None:
        missing = [lv for lv in LEVELS if lv not in self.configs]
        if missing:
            raise ValueError(f"Claim {self.id!r}: configs must define {LEVELS}, missing {missing}")


class Context:
    """What a running claim receives: its configuration, seeds, output folder and the unit runner :meth:`map`.

    ``executor``: an executor of :mod:`normlab.lab.executors` shared by the claims of one command (None: the units
    run in this process). ``store``: the open claims store (None: ``out_dir/normlab.sqlite``, opened on first use
    and closed by :meth:`close`). ``progress``: how :func:`~normlab.lab.executors.execute` shows progress.
    """

    def __init__(self, claim: Claim, level: str, seeds: Sequence[int], out_dir: Path, *, executor: Any = None,
                 store: Store | None = None, log: Callable[[str], None] = lambda s: None, progress: Any = "none",
                 tally: Tally | None = None) -> None:
        if level not in LEVELS:
            raise ValueError(f"Context: level must be one of {LEVELS}, got {level!r}")
        self.claim = claim
        self.level = level
        self.config: dict[str, Any] = dict(claim.configs[level])
        self.seeds = [int(s) for s in seeds]
        self.out_dir = Path(out_dir)
        self.run_dir = self.out_dir / "runs" / claim.id
        self.executor = executor
        self.log = log
        self.progress = progress
        self.tally = tally if tally is not None else Tally()
        self.reused = 0
        self.computed = 0
        self._store = store
        self._own_store = False

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.out_dir / DB_NAME)
            self._own_store = True
        return self._store

    def close(self) -> None:
        if self._own_store and self._store is not None:
            self._store.close()
            self._store, self._own_store = None, False

    def map(self, configs: Sequence[TrainConfig], *, alone: bool = False) -> list[RunResult]:
        """Run every unit's :class:`~normlab.lab.train.TrainConfig` and return its
        :class:`~normlab.lab.train.RunResult` (``final``, ``evals``, ``step_rows``, ``probes``), in order.

        Units already stored in ``OUT/normlab.sqlite`` (same config, same code) come back from the store; the
        others run on the command's executor and are stored with the claim id and level as they finish.
        ``alone=True`` runs them one after another in this process (one torch thread): for units that *measure
        time*, where a neighbour unit on the other core would add its own noise to the figure. Raises TypeError
        naming the item when a unit is not a TrainConfig; UnitsFailed when units raised (the others are stored).
        """
        configs = list(configs)
        for i, c in enumerate(configs):
            if not isinstance(c, TrainConfig):
                raise TypeError(f"Context.map ({self.claim.id}): unit {i} must be a TrainConfig, got "
                                f"{type(c).__name__}")

        def count(index: int, result: RunResult, was_stored: bool) -> None:
            if was_stored:
                self.reused += 1
            else:
                self.computed += 1

        return execute(configs, self.store, executor=self.executor or "local", tags={"claim": self.claim.id,
                       "level": self.level}, alone=alone, progress=self.progress, label=self.claim.id,
                       tally=self.tally, on_result=count)


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
        if self.seeds and self.seeds[0] != 0:
            seeds += f" --first-seed {self.seeds[0]}"
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


def _bounded(v: Verdict, outcome: Outcome) -> Verdict:
    """A "supported" verdict on a metric the claim marked as bounds in the rule's favour, made inconclusive (after
    Holm, which re-decides from the differences)."""
    metric = v.rule.metric if v.rule is not None else None
    if v.verdict == SUPPORTED and metric in outcome.inconclusive:
        return replace(v, verdict=INCONCLUSIVE, reason=f"would be supported, but {outcome.inconclusive[metric]}")
    return v


def run_claim(claim: Claim, level: str, seeds: Sequence[int], out_dir: Path, *, executor: Any = None,
              store: Store | None = None, log: Callable[[str], None] = lambda s: None, progress: Any = "none",
              tally: Tally | None = None) -> ClaimResult:
    """Run one claim and compute its verdicts. A claim that raises is reported as not run with the error; Ctrl-C
    (KeyboardInterrupt, :class:`~normlab.lab.executors.Interrupted`) goes through to the caller."""
    ctx = Context(claim, level, seeds, out_dir, executor=executor, store=store, log=log, progress=progress,
                  tally=tally)
    start = time.perf_counter()
    outcome: Outcome | None = None
    error = ""
    try:
        outcome = claim.run(ctx)
    except ExecutorUnavailable:
        raise  # no claim can run: the command stops with the reason
    except MissingDependency as exc:
        error = f"missing dependency: {exc}"
    except Exception as exc:  # noqa: BLE001 - one broken claim must not take the whole report down
        error = f"{type(exc).__name__}: {exc}"
        log("".join(traceback.format_exception(exc)))
    finally:
        ctx.close()
    seconds = time.perf_counter() - start
    if outcome is None:
        verdict = not_run(claim.rule, error)
        secondary = [not_run(r, error) for r in claim.secondary]
    else:
        verdict = _verdict_for(claim.rule, outcome)
        secondary = [_verdict_for(r, outcome) for r in claim.secondary]
        verdict, secondary = holm(verdict, secondary)  # the log line and the report agree on the family
        verdict, secondary = _bounded(verdict, outcome), [_bounded(v, outcome) for v in secondary]
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
