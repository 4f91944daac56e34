"""The latency probe's training-step timing (``train_batch_sizes``): what it returns and that it leaves the run as
it was. No assertion on the times' sizes (timing is not deterministic)."""

from __future__ import annotations

import pytest
import torch

from normlab.lab import data
from normlab.lab.probes import validate_probes
from normlab.lab.train import TrainConfig, train

MIX = dict(n=300, dim=6, classes=3, separation=3.0, seed=0)


def _cfg(**probe):
    return TrainConfig(data="gaussian_mixture", data_args=MIX, model="mlp", norm="bn",
                       model_args={"widths": [16, 16], "dropout": 0.2}, batch_size=32, steps=6, optimizer="sgd",
                       lr=0.1, probes={"lat": {"kind": "latency", "batch_sizes": [4], "rounds": 3, "inner": 1,
                                               **probe}} if probe is not None else {})


def test_training_step_timing_of_the_latency_probe_returns_every_round_and_changes_nothing():
    mixture = data.gaussian_mixture(**MIX)
    plain = train(TrainConfig(**{**_cfg().__dict__, "probes": {}}), dataset=mixture, progress="none")
    probed = train(_cfg(train_batch_sizes=[8, 16]), dataset=mixture, progress="none")
    lat = probed.probes["lat"]
    for b in (8, 16):
        assert set(lat[f"train-{b}"]) == {"trained", "reference"}  # "folded" trains like the reference
        assert all(len(v) == 3 and all(t > 0 for t in v) for v in lat[f"train-{b}-all"].values())
        for v, med in lat[f"train-{b}"].items():
            assert med in lat[f"train-{b}-all"][v]
    assert "train-4" not in lat  # only the declared training batch sizes
    # the run's model: same weights, buffers and gradients as without the probe (timing runs on copies)
    for a, b in zip(probed.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(probed.model.parameters(), plain.model.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)


def test_training_step_timing_without_train_batch_sizes_is_absent():
    mixture = data.gaussian_mixture(**MIX)
    lat = train(_cfg(), dataset=mixture, progress="none").probes["lat"]
    assert not any(k.startswith("train-") for k in lat)


@pytest.mark.parametrize("bad", [[1], [0], "32", [2.5]])
def test_training_step_timing_refuses_bad_batch_sizes(bad):
    with pytest.raises(ValueError, match="train_batch_sizes"):
        validate_probes({"lat": {"kind": "latency", "train_batch_sizes": bad}})
