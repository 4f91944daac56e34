"""Synchronized BatchNorm with torchrun on CPU (gloo): each process trains on its own, unequal, slice of a batch.

    torchrun --nproc_per_node=2 examples/torchrun_sync_bn.py

A small conv net with torch.nn.BatchNorm2d layers is converted with normlab.nn.convert_sync_batchnorm (the
checkpoint keys stay the same), wrapped in DistributedDataParallel and trained a few steps; rank 0 then checks that
every process holds the same running statistics and that they equal those of one process trained on the whole
batches, and prints the largest difference.
"""

from __future__ import annotations

import copy
import gc
import os

import torch
import torch.distributed as dist
from torch import nn

from normlab.nn import convert_sync_batchnorm


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).double()


def batches(steps: int, size: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (size,), generator=g)) for _ in range(steps)]


def train_and_compare(rank: int, world: int) -> None:
    # unequal slices: rank r gets r + 3 samples of every batch
    sizes = [r + 3 for r in range(world)]
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    data = batches(steps=3, size=sum(sizes))

    reference = make_model()  # one process, whole batches (computed on every rank, compared on rank 0)
    model = nn.parallel.DistributedDataParallel(convert_sync_batchnorm(copy.deepcopy(reference)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for x, y in data:
        # DDP averages gradients over processes: weight each loss so the average equals the whole-batch mean loss.
        loss = nn.functional.cross_entropy(model(x[lo:hi]), y[lo:hi], reduction="sum") * world / len(y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_loss = nn.functional.cross_entropy(reference(x), y)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()

    ours = torch.cat([b for k, b in model.module.state_dict().items() if "running" in k])
    gathered = [torch.empty_like(ours) for _ in range(world)]
    dist.all_gather(gathered, ours)
    if rank == 0:
        want = torch.cat([b for k, b in reference.state_dict().items() if "running" in k])
        across = max((g - ours).abs().max().item() for g in gathered)
        vs_single = (ours - want).abs().max().item()
        print(f"{world} processes, batch slices {sizes}: running statistics identical across ranks "
              f"(max diff {across:.1e}); vs one process on the whole batch: max diff {vs_single:.1e}")


def main() -> None:
    dist.init_process_group("gloo")
    # The DDP model, its optimizer and the last autograd graph are locals of train_and_compare: gone when it returns.
    train_and_compare(dist.get_rank(), dist.get_world_size())
    # Teardown, so that no process aborts at exit with "terminate called without an active exception": DDP keeps
    # gloo's process group, and with it gloo's worker threads, alive past destroy_process_group. A worker that still
    # holds a finished collective's tensors needs the GIL to free them; if the interpreter is already shutting down
    # then, Python ends that thread mid-destructor and the C++ runtime aborts. So free everything that holds the
    # group while the interpreter runs (gc.collect for reference cycles), wait until every process has stopped
    # talking (barrier), and only then leave the group, in every process.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
