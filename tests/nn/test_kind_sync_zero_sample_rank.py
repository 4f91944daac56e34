"""Issue 14, item 1 (kind: a data-dependent check of a synchronized layer taken on the local batch). Process 0 holds
no sample (or one), process 1 the rest: both finish, the pooled count decides (as torch's SyncBatchNorm), process 0
returns an empty output with correct (zero) gradients, and both processes hold the statistics of the whole batch,
equal to one process on the concatenated batch. A pooled count of 1 raises on every process (no hang)."""

import importlib.util
from pathlib import Path

import pytest
import torch

import normlab

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_sync_worker", HERE / "_sync_worker.py")
sync_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_worker)
worker = sync_worker.SUITES["zero"]


@pytest.fixture(scope="module", params=["native", "fast"] if normlab.kernels.numba_available() else ["native"])
def results(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"sync_zero_{request.param}")
    return request.param, sync_worker.spawn("zero", tmp, {"NORMLAB_KERNELS": request.param})


@pytest.mark.parametrize("name", list(worker.CASES))
def test_kind_sync_zero_sample_rank_equals_one_process_on_the_whole_batch(name, results):
    backend, ranks = results
    sizes = worker.CASES[name][2]
    with normlab.kernels.backend(backend):
        single = worker.run(name, worker.build(name), 0, sum(sizes))
    got = [r[name] for r in ranks]
    assert got[0]["y"].shape[0] == sizes[0] and got[0]["dx"].shape == got[0]["y"].shape
    torch.testing.assert_close(torch.cat([g["y"] for g in got]), single["y"])
    torch.testing.assert_close(torch.cat([g["dx"] for g in got]), single["dx"])
    for k, want in enumerate(single["dp"]):  # parameter gradients: the processes' contributions sum up
        torch.testing.assert_close(got[0]["dp"][k] + got[1]["dp"][k], want)
        if sizes[0] == 0:  # no sample here: nothing to contribute, exactly
            assert torch.equal(got[0]["dp"][k], torch.zeros_like(want))
    for key, want in single["state"].items():
        for g in got:  # every process holds the statistics (and the counter) of the whole batch
            torch.testing.assert_close(g["state"][key], want, msg=f"{name}: buffer {key}")


@pytest.mark.parametrize("name", list(worker.RAISES))
def test_kind_sync_zero_sample_rank_data_dependent_checks_raise_on_every_process(name, results):
    """A pooled count of 1, NaN on one process (check_finite=True), a short last virtual batch on one process:
    every process raises (the group did not hang), each saying what it knows."""
    _, ranks = results
    for r, says in zip(ranks, worker.RAISES_SAY[name]):
        assert r[name] != "no error" and says in r[name], r[name]


def test_kind_sync_zero_sample_rank_no_sample_anywhere_is_an_empty_batch(results):
    _, ranks = results
    fresh = worker.build("bn_all_empty").state_dict()
    for r in ranks:
        got = r["bn_all_empty"]
        assert got["y"].shape == (0, 4, 3)
        for key, want in fresh.items():
            assert torch.equal(got["state"][key], want), key
