"""Issue 14, item 2 (kind: an empty batch in training). torch answers an empty batch with an empty output of the
input's shape and a working backward; every layer of the family does the same, and no running statistic or
counter moves (nothing was seen: a deliberate difference from torch, whose counter counts the empty batch)."""

import pytest
import torch

from normlab import functional as nlF
from normlab import kernels
from normlab.nn import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    LayerNorm,
    NormAct,
    make_norm,
)

BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])

# every spec of make_norm (the channel count is 5); tbn normalizes (N, T, C) by default, so its inputs are moved
SPECS = ["bn", "brn", "gbn:2", "mabn", "bln", "masked", "tbn:4", "gn:5", "ln", "in", "rms", "none"]
SHAPES = [(0, 5), (0, 5, 9), (0, 5, 4, 4), (3, 5, 0), (0, 5, 2, 3, 3)]


def _check_empty(layer, x, **kw):
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    params = list(layer.parameters())
    y = layer(x, **kw)
    assert y.shape == x.shape and y.numel() == 0
    (y * 2.0).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for p in params:  # the parameters stay in the graph; nothing was seen, so their gradient is 0
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), layer
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), f"{layer}: {k} changed on an empty batch"


def _cases():
    """(spec, shape, momentum) for every spec and every input it takes (InstanceNorm needs a spatial axis, a whole
    sequence a time axis); momentum=None only for the layers that take a momentum."""
    for spec in SPECS:
        name = spec.split(":")[0]
        for shape in SHAPES:
            if (name == "in" or name == "tbn") and len(shape) < 3:
                continue
            for momentum in ([0.1, None] if name in ("bn", "brn", "gbn", "mabn", "bln", "masked", "tbn", "in") else [0]):
                yield spec, shape, momentum


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec, shape, momentum", list(_cases()))
def test_kind_empty_batch_every_spec(backend, spec, shape, momentum):
    kw = {"momentum": momentum} if momentum != 0 else {}
    if spec.startswith("tbn"):
        kw.update(axis=1, time_axis=-1)
    layer = make_norm(spec, 5, **kw).double().train()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    with kernels.backend(backend):
        _check_empty(layer, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, shape", [
    (lambda: BatchNorm1d(5), (0, 5)),
    (lambda: BatchNorm1d(5), (0, 5, 9)),
    (lambda: BatchNorm2d(5), (0, 5, 4, 4)),
    (lambda: BatchNorm3d(5, momentum=None), (0, 5, 2, 2, 2)),
    (lambda: BatchNorm2d(5, bias=False), (0, 5, 4, 4)),
    (lambda: BatchNorm1d(5, track_running_stats=False), (0, 5)),
    (lambda: GroupNorm(5, 5), (0, 5, 4)),
    (lambda: LayerNorm(9), (0, 5, 9)),
    (lambda: InstanceNorm1d(5, affine=True, track_running_stats=True), (0, 5, 4)),
    (lambda: InstanceNorm2d(5, affine=True), (0, 5, 3, 3)),
])
def test_kind_empty_batch_torch_named_layers_match_torch(backend, build, shape):
    ours = build()
    args, kwargs = _torch_args(ours)
    theirs = getattr(torch.nn, type(ours).__name__)(*args, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    with kernels.backend(backend):
        _check_empty(ours.train(), x)
    xt = x.detach().clone().requires_grad_()
    try:
        yt = theirs.train()(xt)
    except IndexError:  # torch's affine instance norm fails on an empty batch; ours is checked above
        assert "InstanceNorm" in type(ours).__name__ and ours.affine
        return
    (yt * 2.0).sum().backward()
    assert yt.shape == x.shape
    torch.testing.assert_close(x.grad, xt.grad)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def _torch_args(layer):
    name = type(layer).__name__
    if name == "GroupNorm":
        return (layer.num_groups, layer.num_channels), {}
    if name == "LayerNorm":
        return (layer.normalized_shape,), {}
    return ((layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats),
            {"bias": layer.bias is not None or not layer.affine})


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_empty_batch_masked_and_lengths_and_step(backend):
    masked = make_norm("masked", 3, axis=-1).double()
    x = torch.randn(0, 4, 3, dtype=torch.float64, requires_grad=True)
    with kernels.backend(backend):
        _check_empty(masked, x, mask=torch.ones(0, 4, dtype=torch.bool))
        x = torch.randn(0, 3, 4, dtype=torch.float64, requires_grad=True)
        _check_empty(make_norm("masked", 3, axis=1).double(), x, lengths=torch.zeros(0, dtype=torch.long))
        x = torch.randn(0, 3, dtype=torch.float64, requires_grad=True)
        _check_empty(make_norm("tbn:4", 3).double(), x, step=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True])
def test_kind_empty_batch_norm_act(backend, inplace):
    layer = NormAct(BatchNorm2d(5), activation="leaky_relu", inplace_abn=inplace).double()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(0, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    with kernels.backend(backend):
        y = layer(x * 1.0)
        y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_kind_empty_batch_functional(backend, momentum):
    rm, rv, nbt = torch.zeros(5), torch.ones(5), torch.tensor(3)
    x = torch.randn(0, 5, 4, requires_grad=True)
    w = torch.rand(5, requires_grad=True)
    with kernels.backend(backend):
        y = nlF.batch_norm(x, rm, rv, w, None, training=True, momentum=momentum, num_batches_tracked=nbt)
        y.sum().backward()
    assert y.shape == x.shape and torch.equal(w.grad, torch.zeros(5))
    assert torch.equal(rm, torch.zeros(5)) and torch.equal(rv, torch.ones(5)) and int(nbt) == 3


def test_kind_empty_batch_single_value_still_raises():
    # the reason for the old check stays: one value per channel has no batch variance
    with pytest.raises(ValueError, match=r"BatchNorm1d\(5\): expected more than 1 value per channel when training"):
        BatchNorm1d(5)(torch.randn(1, 5))
    with pytest.raises(ValueError, match=r"InstanceNorm1d\(5\): expected more than 1 spatial value per channel"):
        InstanceNorm1d(5)(torch.randn(2, 5, 1))
