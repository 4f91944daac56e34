"""Worker of the synchronized-statistics tests: one process of a 2-process gloo group running one suite of cases
(also imported by the tests, for the cases and the single-process reference).

Run as ``python _sync_worker.py SUITE RANK STORE_FILE OUT_FILE``; :func:`spawn` starts both processes. The suites:

* ``steps`` (test_sync.py): two training steps on a batch of 8 split over the processes, and ``recalibrate``;
* ``fn`` (test_full_normalization.py): the same for FullNormalization and RunningAverageNorm;
* ``zero`` (test_kind_sync_zero_sample_rank.py): one step in which process 0 holds no sample (or one), the cases
  that must raise on every process (``RAISES``) and a batch with no sample anywhere (``EMPTY``).

A case is ``name -> (builder, per-sample input shape, batch size per process, uses a mask)``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import torch

from normlab.nn import (
    BatchLayerNorm,
    BatchNorm,
    BatchRenorm,
    FullNormalization,
    GhostBatchNorm,
    MaskedBatchNorm,
    NormAct,
    RunningAverageNorm,
    TimeStepBatchNorm,
    convert_sync_batchnorm,
)

N = 8  # the batch of the multi-step suites


class Suite:
    """One suite: its cases, how many training steps, and the data's seed and offset (step s's input is
    ``randn * 2 + offset + s``). ``run`` gives each step's record in lists (``out["y"][step]``), or, for a
    one-step suite, that step's record itself. ``RAISES``: name -> (builder, shape, sizes), every process must
    raise, saying ``RAISES_SAY[name]`` (process 0, process 1); ``EMPTY``: the same shape of entry, no sample
    anywhere. (A plain class: the tests load this file by path, outside sys.modules, where dataclass fails.)"""

    N = N

    def __init__(self, name: str, cases: dict, *, steps: int, seed: int, offset: int, raises: dict | None = None,
                 raises_say: dict | None = None, empty: dict | None = None, recalibrates: bool = False) -> None:
        self.name, self.CASES, self.STEPS, self.seed, self.offset = name, cases, steps, seed, offset
        self.RAISES, self.RAISES_SAY, self.EMPTY = raises or {}, raises_say or {}, empty or {}
        self.recalibrates = recalibrates

    def _all(self) -> dict:
        return {**self.CASES, **self.RAISES, **self.EMPTY}

    def data(self, name, n):
        shape = self._all()[name][1]
        g = torch.Generator().manual_seed(self.seed)
        xs = [torch.randn(n, *shape, generator=g, dtype=torch.float64) * 2 + self.offset + s for s in range(self.STEPS)]
        gs = [torch.randn(n, *shape, generator=g, dtype=torch.float64) for _ in range(self.STEPS)]
        masks = [torch.rand(n, shape[0], generator=g) > 0.3 for _ in range(self.STEPS)]
        for m in masks:
            m[:, :2] = True
        if name == "bn_nan_on_one":
            xs[0][4, 0, 0] = float("nan")  # in process 1's part of the batch
        return xs, gs, masks

    def build(self, name):
        model = self._all()[name][0]()
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.rand_like(p) + 0.5)
        return model.double()

    def run(self, name, model, lo, hi):
        """Train STEPS steps on the batch slice [lo, hi): outputs, input and parameter gradients, final buffers."""
        xs, gs, masks = self.data(name, sum(self._all()[name][2]))
        uses_mask = name in self.CASES and self.CASES[name][3]
        out: dict = {"y": [], "dx": [], "dp": []}
        for step in range(self.STEPS):
            x = xs[step][lo:hi].clone().requires_grad_()
            inp = x * 1.0  # NormAct in-place overwrites its input: give it a non-leaf
            y = model(inp, mask=masks[step][lo:hi]) if uses_mask else model(inp)
            (y * gs[step][lo:hi]).sum().backward()
            out["y"].append(y.detach().clone())
            out["dx"].append(x.grad.clone())
            out["dp"].append([p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                              for p in model.parameters()])
            model.zero_grad()
        out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        if self.STEPS == 1:
            out.update(y=out["y"][0], dx=out["dx"][0], dp=out["dp"][0])
        return out

    def recalibrate_case(self, lo, hi, synchronized):
        """normlab.tools.recalibrate over 3 batches, each process on its slice [lo, hi); returns the state_dict."""
        from normlab.tools import recalibrate

        torch.manual_seed(2)
        model = torch.nn.Sequential(BatchNorm(3), torch.nn.Conv1d(3, 3, 1), torch.nn.BatchNorm1d(3)).double().eval()
        if synchronized:
            model = convert_sync_batchnorm(model)
        g = torch.Generator().manual_seed(11)
        batches = [torch.randn(N, 3, 4, generator=g, dtype=torch.float64) * (k + 1) + k for k in range(3)]
        recalibrate(model, [b[lo:hi] for b in batches], progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}

    def results(self, rank: int) -> dict:
        """What this process records, the group being initialized."""
        results: dict = {}
        for name, (_, _, sizes, _) in self.CASES.items():
            lo = sum(sizes[:rank])
            results[name] = self.run(name, convert_sync_batchnorm(self.build(name)), lo, lo + sizes[rank])
        for name, (_, _, sizes) in self.RAISES.items():
            lo = sum(sizes[:rank])
            try:
                self.run(name, convert_sync_batchnorm(self.build(name)), lo, lo + sizes[rank])
                results[name] = "no error"
            except ValueError as e:
                results[name] = str(e)
        for name in self.EMPTY:
            results[name] = self.run(name, convert_sync_batchnorm(self.build(name)), 0, 0)
        if self.recalibrates:
            lo = sum(RECAL_SPLIT[:rank])
            results["recalibrate"] = self.recalibrate_case(lo, lo + RECAL_SPLIT[rank], synchronized=True)
        return results


RECAL_SPLIT = (3, 5)

SUITES = {
    "steps": Suite("steps", {
        "bn": (lambda: BatchNorm(3), (3, 4), (3, 5), False),
        "torch_bn": (lambda: torch.nn.Sequential(torch.nn.BatchNorm1d(3, momentum=0.3)), (3, 4), (5, 3), False),
        "brn": (lambda: BatchRenorm(3, r_max=1.2, d_max=0.2, warmup_steps=0, r_max_steps=0, d_max_steps=0), (3, 4),
                (3, 5), False),
        "masked": (lambda: MaskedBatchNorm(3, axis=-1), (5, 3), (3, 5), True),
        "ghost": (lambda: GhostBatchNorm(3, virtual_batch_size=2), (3, 4), (4, 4), False),
        "timestep": (lambda: TimeStepBatchNorm(3, max_steps=2, per_step_affine=True), (3, 3), (2, 6), False),
        "bln": (lambda: BatchLayerNorm(3), (3, 4), (3, 5), False),
        "inplace_abn": (lambda: NormAct(BatchNorm(3), activation="leaky_relu", inplace_abn=True), (3, 4), (3, 5),
                        False),
    }, steps=2, seed=7, offset=0, recalibrates=True),
    "fn": Suite("fn", {
        "fn": (lambda: FullNormalization(3, momentum=0.3), (3, 4), (3, 5), False),  # warm-up: alpha 1, then 1/2
        "fn_steady": (lambda: FullNormalization(3, momentum=0.3, warmup=False), (3, 4), (5, 3), False),
        "fn_masked": (lambda: FullNormalization(3, momentum=0.3, warmup=False, axis=-1), (5, 3), (3, 5), True),
        "ran": (lambda: RunningAverageNorm(3, momentum=0.3), (3, 4), (3, 5), False),
    }, steps=2, seed=7, offset=0),
    "zero": Suite("zero", {
        "torch_bn2d": (lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(4)), (4, 3, 3), (0, 6), False),
        "bn2d": (lambda: BatchNorm(4), (4, 3, 3), (0, 6), False),
        "bn_one_here": (lambda: BatchNorm(4), (4,), (1, 5), False),
        "bn_momentum_none": (lambda: BatchNorm(4, momentum=None), (4, 3), (0, 5), False),
        "brn": (lambda: BatchRenorm(4, r_max=1.2, d_max=0.2, warmup_steps=0, r_max_steps=0, d_max_steps=0), (4, 3),
                (0, 5), False),
        "masked": (lambda: MaskedBatchNorm(4, axis=-1), (5, 4), (0, 4), True),
        "ghost": (lambda: GhostBatchNorm(4, virtual_batch_size=2), (4, 3), (0, 4), False),
        "timestep": (lambda: TimeStepBatchNorm(4, max_steps=3, axis=1, time_axis=2), (4, 3), (0, 4), False),
        "bln": (lambda: BatchLayerNorm(4), (4, 3), (0, 5), False),
        "inplace_abn": (lambda: NormAct(BatchNorm(4), activation="leaky_relu", inplace_abn=True), (4, 3), (0, 5),
                        False),
    }, steps=1, seed=13, offset=1,
        # pooled count 1, NaN on one process (check_finite=True), a short last virtual batch on one process
        raises={
            "bn_pooled_one": (lambda: BatchNorm(4), (4,), (0, 1)),
            "bn_nan_on_one": (lambda: BatchNorm(4, check_finite=True), (4, 3), (3, 3)),
            "ghost_short_on_one": (lambda: GhostBatchNorm(4, virtual_batch_size=2), (4,), (3, 4)),  # 0: 2 + 1
        },
        raises_say={
            "bn_pooled_one": ("got 1 over every process",) * 2,
            "bn_nan_on_one": ("another process of the group holds NaN or Inf", "input holds NaN or Inf"),
            "ghost_short_on_one": ("the last virtual batch", "another process of the group has a last virtual batch"),
        },
        empty={"bn_all_empty": (lambda: BatchNorm(4), (4, 3), (0, 0))},
    ),
}


def spawn(suite: str, tmp: Path, env_extra: dict | None = None, timeout: float = 240) -> list[dict]:
    """Run ``suite`` in two processes of a gloo group (file store under ``tmp``); their results, rank 0 first.
    Fails the test (with the logs) when a process exits non-zero or the group hangs (one raised before pooling)."""
    import pytest

    import normlab

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(normlab.__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(env_extra or {})
    procs = [
        subprocess.Popen([sys.executable, __file__, suite, str(r), str(tmp / "store"), str(tmp / f"rank{r}.pt")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        pytest.fail(f"a process of the {suite} group hung (did one raise before pooling?)")
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


def main(suite: str, rank: int, store: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = SUITES[suite].results(rank)
        dist.barrier()  # every process is done talking before any leaves the group
        torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
