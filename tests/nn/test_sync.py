"""Two processes on gloo (localhost, file store) against one process on the concatenated batch."""

import importlib.util
from pathlib import Path

import pytest
import torch

from normlab.nn import BatchNorm, MovingAverageBatchNorm, convert_sync_batchnorm

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_sync_worker", HERE / "_sync_worker.py")
sync_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_worker)
worker = sync_worker.SUITES["steps"]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    return sync_worker.spawn("steps", tmp_path_factory.mktemp("sync"))


@pytest.mark.parametrize("name", list(worker.CASES))
def test_two_gloo_processes_equal_one_process_on_the_whole_batch(name, two_process_results):
    single = worker.run(name, worker.build(name), 0, worker.N)
    ranks = [res[name] for res in two_process_results]
    for step in range(worker.STEPS):
        torch.testing.assert_close(torch.cat([r["y"][step] for r in ranks]), single["y"][step])
        torch.testing.assert_close(torch.cat([r["dx"][step] for r in ranks]), single["dx"][step])
        for k, want in enumerate(single["dp"][step]):  # parameter gradients: the ranks' contributions sum up
            torch.testing.assert_close(ranks[0]["dp"][step][k] + ranks[1]["dp"][step][k], want)
    for key, want in single["state"].items():
        for r in ranks:  # every process holds the same running statistics, those of the whole batch
            torch.testing.assert_close(r["state"][key], want, msg=f"{name}: buffer {key}")


def test_recalibrate_pools_synchronized_layers_over_two_gloo_processes(two_process_results):
    single = worker.recalibrate_case(0, worker.N, synchronized=False)
    for res in two_process_results:  # each process saw its shard; both hold the whole data's statistics
        for key, want in single.items():
            torch.testing.assert_close(res["recalibrate"][key], want, msg=f"recalibrate: buffer {key}")


def test_convert_without_process_group_is_a_no_op_and_keeps_checkpoints():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.ReLU())
    model(torch.randn(4, 2, 3, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 2, 3, 3)
    model.eval()
    want = model(x)
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], BatchNorm) and converted[1].sync_statistics
    assert not converted[1].training
    assert set(converted.state_dict()) == set(before)
    torch.testing.assert_close(converted(x), want)
    converted.train()
    converted(torch.randn(4, 2, 3, 3))  # not distributed: local statistics


def test_convert_rejects_mabn_before_changing_anything():
    model = torch.nn.Sequential(BatchNorm(3), MovingAverageBatchNorm(3))
    with pytest.raises(ValueError, match=r"convert_sync_batchnorm: 1 is a MovingAverageBatchNorm"):
        convert_sync_batchnorm(model)
    assert not model[0].sync_statistics
