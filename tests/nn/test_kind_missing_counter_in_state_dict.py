"""Issue 14, item 3 (kind: a state_dict without ``num_batches_tracked``). torch keeps the layer's counter when the
key is missing from a checkpoint without version-2 metadata (old checkpoints, hand-built dicts) and, with version-2
metadata, treats it as a missing key (``strict=False`` leaves the counter as it is). Every layer with a counter."""

from collections import OrderedDict

import pytest
import torch

from normlab.nn import (
    BatchNorm1d,
    BatchNorm2d,
    InstanceNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    TimeStepBatchNorm,
    make_norm,
)

COUNTER_SPECS = ["bn", "brn", "gbn:2", "mabn", "bln", "masked", "tbn:3"]


def _trained(build, steps=7, shape=(4, 3, 5)):
    layer = build()
    for k in range(steps):
        layer(torch.randn(*shape) + k)
    return layer


def _without_counter(sd, version):
    out = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    if version is not None:
        out._metadata = {"": {"version": version}}
    return out


@pytest.mark.parametrize("version", [None, 1])
def test_kind_missing_counter_in_state_dict_matches_torch(version):
    ours = _trained(lambda: BatchNorm1d(3))
    theirs = torch.nn.BatchNorm1d(3)
    theirs.load_state_dict(ours.state_dict())
    assert int(theirs.num_batches_tracked) == 7
    fresh = BatchNorm1d(3).state_dict()
    ours.load_state_dict(_without_counter(fresh, version))
    theirs.load_state_dict(_without_counter(fresh, version))
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 7
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)  # the rest did load: zeros
    assert torch.equal(ours.running_mean, torch.zeros(3))


def test_kind_missing_counter_in_state_dict_strict_false_partial_dict():
    ours = _trained(lambda: BatchNorm2d(3), shape=(4, 3, 2, 2))
    theirs = torch.nn.BatchNorm2d(3)
    theirs.load_state_dict(ours.state_dict())
    partial = {"weight": torch.full((3,), 2.0)}
    r1 = ours.load_state_dict(partial, strict=False)
    r2 = theirs.load_state_dict(partial, strict=False)
    assert sorted(r1.missing_keys) == sorted(r2.missing_keys)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 7
    # with version-2 metadata the missing counter is a missing key, as torch
    sd = _without_counter(BatchNorm2d(3).state_dict(), 2)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        ours.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        theirs.load_state_dict(sd)


@pytest.mark.parametrize("spec", COUNTER_SPECS)
@pytest.mark.parametrize("version", [None, 1])
def test_kind_missing_counter_in_state_dict_every_layer(spec, version):
    kw = {"axis": 1, "time_axis": 2} if spec.startswith("tbn") else {}
    layer = _trained(lambda: make_norm(spec, 3, **kw))
    counter = layer.num_batches_tracked.clone()
    assert int(counter.sum()) > 0
    fresh = make_norm(spec, 3, **kw).state_dict()
    layer.load_state_dict(_without_counter(fresh, version))
    assert torch.equal(layer.num_batches_tracked, counter)
    assert torch.equal(layer.running_var, fresh["running_var"])  # everything else loaded


def test_kind_missing_counter_in_state_dict_per_step_counter_and_nested_prefix():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), TimeStepBatchNorm(3, max_steps=4))
    for _ in range(5):
        model(torch.randn(4, 4, 3))
    counter = model[1].num_batches_tracked.clone()
    sd = _without_counter(torch.nn.Sequential(torch.nn.Linear(3, 3), TimeStepBatchNorm(3, max_steps=4)).state_dict(), None)
    model.load_state_dict(sd)
    assert torch.equal(model[1].num_batches_tracked, counter) and int(counter[0]) == 5


@pytest.mark.parametrize("ours_cls, torch_cls, shape", [
    (InstanceNorm1d, torch.nn.InstanceNorm1d, (2, 3, 5)),
    (InstanceNorm2d, torch.nn.InstanceNorm2d, (2, 3, 4, 4)),
])
@pytest.mark.parametrize("version", [None, 1])
def test_kind_missing_counter_in_state_dict_instance_norms(ours_cls, torch_cls, shape, version):
    ours, theirs = ours_cls(3, track_running_stats=True), torch_cls(3, track_running_stats=True)
    for layer in (ours, theirs):
        layer.num_batches_tracked.fill_(7)
        layer.load_state_dict(_without_counter(torch_cls(3, track_running_stats=True).state_dict(), version))
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 7
    generic = InstanceNorm(3, track_running_stats=True)
    generic.num_batches_tracked.fill_(7)
    generic.load_state_dict(_without_counter(generic.state_dict(), version))
    assert int(generic.num_batches_tracked) == 7


def test_kind_missing_counter_in_state_dict_instance_norm_drops_pre_04_running_stats_as_torch():
    sd = OrderedDict(running_mean=torch.zeros(3), running_var=torch.ones(3))  # no metadata: before torch 0.4
    ours, theirs = InstanceNorm2d(3), torch.nn.InstanceNorm2d(3)
    with pytest.raises(RuntimeError, match="Unexpected running stats buffer"):
        theirs.load_state_dict(OrderedDict(sd))
    with pytest.raises(RuntimeError, match="Unexpected running stats buffer"):
        ours.load_state_dict(OrderedDict(sd))
