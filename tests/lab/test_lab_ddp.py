"""The engine under torchrun with 2 processes (gloo on CPU): a global batch split over ranks equals one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normlab.lab.train import TrainConfig, train

WORKER = Path(__file__).with_name("ddp_worker.py")
NAMES = ("none", "bn", "bn-sync")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(out), *NAMES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr, proc.stderr[-3000:]  # the gloo teardown kind (issue 14)
    return {(name, r): torch.load(out / f"{name}-rank{r}.pt") for name in NAMES for r in (0, 1)}


def _single(norm: str, sync_bn: bool = False):
    config = TrainConfig(data="gaussian_mixture", data_args={"n": 300, "dim": 6, "classes": 3}, model="mlp",
                         norm=norm, sync_bn=sync_bn, model_args={"depth": 2, "width": 16}, optimizer="sgd", lr=0.1, batch_size=32,
                         steps=12, eval_every=6)
    return train(config, progress="none")


@pytest.mark.slow
def test_two_ranks_without_batch_statistics_equal_one_process(ddp_runs):
    # Without batch statistics the mean loss of a batch is the mean of its two equal halves' means, so DDP's
    # averaged gradients, and hence every step, equal the single-process run on the whole global batch.
    single = _single("none")
    r0, r1 = ddp_runs[("none", 0)], ddp_runs[("none", 1)]
    assert r0["world"] == 2
    assert r0["loss"] == pytest.approx(single.history("loss"), rel=1e-5)
    assert r0["acc"] == pytest.approx(single.history("acc"), abs=1e-9)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r1["state"][k], r0["state"][k], rtol=0, atol=0)
    assert r0["final"] == r1["final"]


@pytest.mark.slow
def test_two_ranks_with_batchnorm_stay_in_step(ddp_runs):
    # BN normalizes each rank's half with its own statistics (not synchronized), so the run differs from one
    # process; DDP still keeps both ranks' parameters and (broadcast) buffers identical.
    r0, r1 = ddp_runs[("bn", 0)], ddp_runs[("bn", 1)]
    for k in r0["state"]:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0, msg=k)
    assert r0["loss"] == r1["loss"] and len(r0["loss"]) == 12
    single = _single("bn")
    assert r0["loss"][0] != pytest.approx(single.history("loss")[0], rel=1e-7)


@pytest.mark.slow
def test_two_ranks_with_synchronized_batchnorm_equal_one_process(ddp_runs):
    # sync_bn pools the batch statistics over ranks: every step equals one process on the global batch
    # (sync_bn is a no-op in one process, so the single run is the plain BN run).
    single = _single("bn", sync_bn=True)
    r0, r1 = ddp_runs[("bn-sync", 0)], ddp_runs[("bn-sync", 1)]
    assert r0["loss"] == pytest.approx(single.history("loss"), rel=1e-5)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(r1["state"][k], r0["state"][k], rtol=0, atol=0, msg=k)
    assert r0["final"]["val_acc"] == single.final["val_acc"]
