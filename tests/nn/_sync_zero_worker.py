"""Worker for test_kind_sync_zero_sample_rank.py: one process of a 2-process gloo group in which process 0 holds
no sample (or one), process 1 the rest. Run as ``python _sync_zero_worker.py RANK STORE_FILE OUT_FILE``; the
cases are imported by the test to compute the single-process reference."""

from __future__ import annotations

import datetime
import sys

import torch

from normlab.nn import (
    BatchLayerNorm,
    BatchNorm,
    BatchRenorm,
    GhostBatchNorm,
    MaskedBatchNorm,
    NormAct,
    TimeStepBatchNorm,
    convert_sync_batchnorm,
)

# name -> (builder, input shape without batch, per-process batch sizes, uses a mask)
CASES = {
    "torch_bn2d": (lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(4)), (4, 3, 3), (0, 6), False),
    "bn2d": (lambda: BatchNorm(4), (4, 3, 3), (0, 6), False),
    "bn_one_here": (lambda: BatchNorm(4), (4,), (1, 5), False),
    "bn_momentum_none": (lambda: BatchNorm(4, momentum=None), (4, 3), (0, 5), False),
    "brn": (lambda: BatchRenorm(4, r_max=1.2, d_max=0.2, warmup_steps=0, r_max_steps=0, d_max_steps=0), (4, 3), (0, 5), False),
    "masked": (lambda: MaskedBatchNorm(4, axis=-1), (5, 4), (0, 4), True),
    "ghost": (lambda: GhostBatchNorm(4, virtual_batch_size=2), (4, 3), (0, 4), False),
    "timestep": (lambda: TimeStepBatchNorm(4, max_steps=3, axis=1, time_axis=2), (4, 3), (0, 4), False),
    "bln": (lambda: BatchLayerNorm(4), (4, 3), (0, 5), False),
    "inplace_abn": (lambda: NormAct(BatchNorm(4), activation="leaky_relu", inplace_abn=True), (4, 3), (0, 5), False),
}
# pooled count 1: every process must raise the same error (none waits for the other)
RAISES = {
    "bn_pooled_one": (lambda: BatchNorm(4), (4,), (0, 1)),
    "bn_nan_on_one": (lambda: BatchNorm(4, check_finite=True), (4, 3), (3, 3)),  # NaN in process 1's batch
    "ghost_short_on_one": (lambda: GhostBatchNorm(4, virtual_batch_size=2), (4,), (3, 4)),  # process 0: 2 + 1
}
# what each process must say (process 0, process 1)
RAISES_SAY = {
    "bn_pooled_one": ("got 1 over every process",) * 2,
    "bn_nan_on_one": ("another process of the group holds NaN or Inf", "input holds NaN or Inf"),
    "ghost_short_on_one": ("the last virtual batch", "another process of the group has a last virtual batch"),
}
# no sample anywhere: empty outputs, nothing learned
EMPTY = {"bn_all_empty": (lambda: BatchNorm(4), (4, 3), (0, 0))}


def data(name, n):
    shape = {**CASES, **RAISES, **EMPTY}[name][1]
    g = torch.Generator().manual_seed(13)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64) * 2 + 1
    dy = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    mask = torch.rand(n, shape[0], generator=g) > 0.3
    mask[:, :2] = True
    if name == "bn_nan_on_one":
        x[4, 0, 0] = float("nan")
    return x, dy, mask


def build(name):
    model = {**CASES, **RAISES, **EMPTY}[name][0]()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    return model.double()


def run(name, model, lo, hi):
    """One training step on the slice [lo, hi) of the case's batch: output, input and parameter gradients, state."""
    n = sum({**CASES, **RAISES, **EMPTY}[name][2])
    x, dy, mask = data(name, n)
    uses_mask = name in CASES and CASES[name][3]
    leaf = x[lo:hi].clone().requires_grad_()
    inp = leaf * 1.0  # NormAct's in-place mode overwrites its input
    y = model(inp, mask=mask[lo:hi]) if uses_mask else model(inp)
    (y * dy[lo:hi]).sum().backward()
    return {
        "y": y.detach().clone(), "dx": leaf.grad.clone(),
        "dp": [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def main(rank: int, store: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        for name in CASES:
            sizes = CASES[name][2]
            lo = sum(sizes[:rank])
            results[name] = run(name, convert_sync_batchnorm(build(name)), lo, lo + sizes[rank])
        for name in RAISES:
            sizes = RAISES[name][2]
            lo = sum(sizes[:rank])
            try:
                run(name, convert_sync_batchnorm(build(name)), lo, lo + sizes[rank])
                results[name] = "no error"
            except ValueError as e:
                results[name] = str(e)
        for name in EMPTY:
            results[name] = run(name, convert_sync_batchnorm(build(name)), 0, 0)
        dist.barrier()  # every process is done talking before any leaves the group
        torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
