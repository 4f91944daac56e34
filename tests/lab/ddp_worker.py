"""Launched by torchrun from test_lab_ddp.py: trains each named config on every rank, saves what rank r ended with."""

import gc
import sys

import torch
import torch.distributed as dist

from normlab.lab.train import TrainConfig, train


def main(out_dir: str, norms: list[str]) -> None:
    torch.set_num_threads(1)
    for norm in norms:
        run(out_dir, norm)  # each run's DDP model dies when run returns
    # DDP keeps gloo's worker threads alive until its model is collected; one of them finishing after the
    # interpreter began to shut down aborts with "terminate called without an active exception" (issue 14).
    # Collect, wait until every process has stopped talking, then leave the group in every process.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def run(out_dir: str, name: str) -> None:
    norm, _, sync = name.partition("-")
    config = TrainConfig(data="gaussian_mixture", data_args={"n": 300, "dim": 6, "classes": 3}, model="mlp",
                         norm=norm, sync_bn=sync == "sync", model_args={"depth": 2, "width": 16}, optimizer="sgd", lr=0.1, batch_size=32,
                         steps=12, eval_every=6)
    result = train(config, progress="none")
    rank = dist.get_rank()
    torch.save({"state": result.model.state_dict(), "loss": result.history("loss"), "acc": result.history("acc"),
                "final": result.final, "world": dist.get_world_size()}, f"{out_dir}/{name}-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
