"""Timing that survives a shared machine: interleaved repetitions, medians, ratios from the same run.

Every candidate of one case runs once per round, in a shuffled order, for ``reps`` rounds (after warm-up rounds), so
a burst of load from another process hits all candidates alike and no candidate always follows the same one (a slow
candidate evicts the caches of whichever runs next); ratios are taken between medians of the same rounds.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn


@dataclass
class Timing:
    """Seconds per call of one candidate: median, first and third quartile, minimum, and how many calls."""

    median: float
    q1: float
    q3: float
    min: float
    reps: int

    @classmethod
    def from_samples(cls, seconds: Sequence[float]) -> Timing:
        """The summary of per-call times in seconds (at least one); raises ``ValueError`` for none."""
        ts = list(seconds)
        if not ts:
            raise ValueError("bench: a Timing needs at least one sample")
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        return cls(statistics.median(ts), q[0], q[2], min(ts), len(ts))

    def as_dict(self) -> dict:
        return {"median_ms": self.median * 1e3, "q1_ms": self.q1 * 1e3, "q3_ms": self.q3 * 1e3,
                "min_ms": self.min * 1e3, "reps": self.reps}


def interleaved(candidates: Mapping[str, Callable[[], object]], *, reps: int, warmup: int = 2) -> dict[str, Timing]:
    """Time every candidate ``reps`` times, round-robin; warm-up rounds first (JIT, allocator, caches)."""
    if reps < 1:
        raise ValueError(f"bench: reps must be >= 1, got {reps}")
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    names = list(candidates)
    order = random.Random(0)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed call would be charged to whichever candidate ran
    try:
        for _ in range(reps):
            # a new order each round: what the previous candidate left in the caches is not always the same
            order.shuffle(names)
            for name in names:
                fn = candidates[name]
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing.from_samples(ts) for name, ts in samples.items()}


def with_torch_batchnorm(model: nn.Module, cls: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """``model`` with every plain normlab BatchNorm (channel axis 1) replaced in place by ``cls`` (torch's
    BatchNorm1d/2d/3d) carrying the same parameters and statistics (the same state_dict keys)."""
    from ..nn import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

    plain = (BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)  # not the variants: torch has no equivalent
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) in plain and child.axis == 1:
                new = cls(child.num_features, child.eps, child.momentum)
                new.load_state_dict(child.state_dict())
                setattr(module, child_name, new.train(child.training))
    return model


def page_faults(step: Callable[[], None], *, steps: int = 3) -> float | None:
    """Median minor page faults of one call of ``step`` (``getrusage``; None where the platform has no counter).

    Why it is in the table: torch's CPU allocator hands large tensors to the C library, which maps fresh pages for
    them (and unmaps them on free) depending on its adaptive thresholds, so a step's cost includes first-touch faults
    whose number depends on the sizes and order of its allocations; fusion and normlab's buffer cache change both.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    counts = []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return float(sorted(counts)[len(counts) // 2])
