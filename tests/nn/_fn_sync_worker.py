"""Worker for the synchronized FullNormalization / RunningAverageNorm tests: one process of a 2-process gloo group.

Reuses _sync_worker's data, model building and training loop (``run``) with the cases below added to its CASES.
Run as ``python _fn_sync_worker.py RANK WORLD STORE_FILE OUT_FILE``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from normlab.nn import FullNormalization, RunningAverageNorm, convert_sync_batchnorm

_spec = importlib.util.spec_from_file_location("_sync_worker", Path(__file__).parent / "_sync_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
N = worker.N

# name -> (builder, input shape, split of the batch over the 2 ranks, uses a mask), as _sync_worker.CASES
CASES = {
    "fn": (lambda: FullNormalization(3, momentum=0.3), (N, 3, 4), (3, 5), False),  # warm-up: alpha 1, then 1/2
    "fn_steady": (lambda: FullNormalization(3, momentum=0.3, warmup=False), (N, 3, 4), (5, 3), False),
    "fn_masked": (lambda: FullNormalization(3, momentum=0.3, warmup=False, axis=-1), (N, 5, 3), (3, 5), True),
    "ran": (lambda: RunningAverageNorm(3, momentum=0.3), (N, 3, 4), (3, 5), False),
}
worker.CASES.update(CASES)


def main(rank: int, world: int, store: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for name, (_, _, split, _) in CASES.items():
            model = convert_sync_batchnorm(worker.build(name))
            lo = sum(split[:rank])
            results[name] = worker.run(name, model, lo, lo + split[rank])
        torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
