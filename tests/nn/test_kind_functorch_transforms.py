"""Issue 14, item 4 (kind: torch.func transforms through the layers). Under vmap/grad/jacrev the tensors are
wrapped and have no storage, so nothing may read them through NumPy or a data pointer (the shift check, the
kernels): such calls take the pure-torch path. Every layer works in train and eval mode wherever torch's layers do
(torch refuses the in-place running-statistic update of a training layer under a transform, and so do we)."""

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

from normlab import kernels
from normlab.nn import BatchNorm2d, GroupNorm, InstanceNorm1d, LayerNorm, make_norm

BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])


def test_kind_functorch_transforms_issue_example_matches_torch():
    """vmap(jacrev(f)) over per-sample inputs, f = conv -> BatchNorm2d(track_running_stats=False)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    ours, theirs = BatchNorm2d(3, track_running_stats=False).double(), torch.nn.BatchNorm2d(3, track_running_stats=False).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 2, 4, 4, dtype=torch.float64)  # 5 independent batches of 4

    def f(bn):
        return lambda xb: bn(conv(xb)).square().sum(dim=(0, 2, 3))

    for backend in BACKENDS:
        with kernels.backend(backend):
            got = vmap(jacrev(f(ours)))(x)
        want = vmap(jacrev(f(theirs)))(x)
        torch.testing.assert_close(got, want)


def test_kind_functorch_transforms_per_sample_jacobians_match_torch():
    """The per-sample form: vmap over samples, each run alone (a batch of one) through conv -> BatchNorm2d."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    ours, theirs = BatchNorm2d(3, track_running_stats=False).double(), torch.nn.BatchNorm2d(3, track_running_stats=False).double()
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)

    def f(bn):
        return lambda s: bn(conv(s.unsqueeze(0))).squeeze(0).tanh().sum(dim=(1, 2))

    want = vmap(jacrev(f(theirs)))(x)
    for backend in BACKENDS:
        with kernels.backend(backend):
            torch.testing.assert_close(vmap(jacrev(f(ours)))(x), want)


# (spec, kwargs): every layer of the family; "-notrack" variants where the layer allows it
LAYERS = [
    ("bn", {}), ("bn", {"track_running_stats": False}), ("brn", {}), ("gbn:2", {}),
    ("gbn:2", {"track_running_stats": False}), ("mabn", {}), ("bln", {}), ("bln", {"track_running_stats": False}),
    ("masked", {}), ("masked", {"track_running_stats": False}), ("tbn:5", {"axis": 1, "time_axis": 2}),
    ("tbn:5", {"axis": 1, "time_axis": 2, "track_running_stats": False}), ("gn:3", {}), ("ln", {}), ("in", {}),
    ("in", {"track_running_stats": True}), ("rms", {}),
]


def _mutates_state(layer, training):
    """Training with running statistics (or MABN's histories, BLN's recorded batch size) writes buffers in place,
    which torch.func refuses for torch's layers too."""
    if not training or not list(layer.buffers()):
        return False
    name = type(layer).__name__
    if name in ("MovingAverageBatchNorm", "BatchLayerNorm"):
        return True
    return bool(getattr(layer, "track_running_stats", False))


def _build(spec, kw):
    torch.manual_seed(1)
    layer = make_norm(spec, 3, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    return layer


def _ids(case):
    spec, kw = case
    return spec + ("-notrack" if kw.get("track_running_stats") is False else "-track" if kw.get("track_running_stats") else "")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", LAYERS, ids=_ids)
def test_kind_functorch_transforms_every_layer(case, training, backend):
    spec, kw = case
    x = torch.randn(4, 3, 5, dtype=torch.float64) * 2 + 1
    xs = torch.randn(2, 4, 3, 5, dtype=torch.float64)  # a batch of 2 independent batches

    def fresh():
        return _build(spec, kw).train(training)

    with kernels.backend(backend):
        if _mutates_state(fresh(), training):
            with pytest.raises(RuntimeError, match=r"in-place|inplace|batched tensor"):
                jacrev(fresh())(x)
            return
        # jacrev == autograd's Jacobian
        want = torch.autograd.functional.jacobian(fresh(), x)
        torch.testing.assert_close(jacrev(fresh())(x), want)
        # grad over the parameters with functional_call == autograd.grad
        layer = fresh()
        params, buffers = dict(layer.named_parameters()), dict(layer.named_buffers())
        g = grad(lambda p: functional_call(layer, {**p, **buffers}, (x,)).square().sum())(params)
        ref = fresh()
        want = torch.autograd.grad(ref(x).square().sum(), list(ref.parameters()))
        for k, w in zip(params, want):
            torch.testing.assert_close(g[k], w)
        # vmap over independent batches == a loop
        got = vmap(fresh())(xs)
        torch.testing.assert_close(got, torch.stack([fresh()(b) for b in xs]))
        # vmap(jacrev) == a loop of Jacobians
        layer = fresh()
        got = vmap(jacrev(lambda b: layer(b).square().sum(dim=0)))(xs)
        want = torch.stack([torch.autograd.functional.jacobian(lambda b: fresh()(b).square().sum(dim=0), b) for b in xs])
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ours, theirs", [
    (lambda: BatchNorm2d(3, track_running_stats=False), lambda: torch.nn.BatchNorm2d(3, track_running_stats=False)),
    (lambda: BatchNorm2d(3), lambda: torch.nn.BatchNorm2d(3)),
    (lambda: GroupNorm(3, 3), lambda: torch.nn.GroupNorm(3, 3)),
    (lambda: InstanceNorm1d(3, affine=True), lambda: torch.nn.InstanceNorm1d(3, affine=True)),
    (lambda: LayerNorm(4), lambda: torch.nn.LayerNorm(4)),
    (lambda: InstanceNorm1d(3, track_running_stats=True), lambda: torch.nn.InstanceNorm1d(3, track_running_stats=True)),
], ids=["bn-notrack", "bn", "gn", "in1d", "ln", "in1d-track"])
def test_kind_functorch_transforms_torch_named_layers_agree_with_torch(ours, theirs, training, backend):
    """Where torch's layer works under a transform, ours gives the same values; where it refuses, ours refuses."""
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64) + 3
    if ours().__class__.__name__ == "InstanceNorm1d":
        x = x.flatten(2)
    a, b = ours().double().train(training), theirs().double().train(training)
    b.load_state_dict(a.state_dict())
    with kernels.backend(backend):
        try:
            want = jacrev(b)(x)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                jacrev(a)(x)
            return
        torch.testing.assert_close(jacrev(a)(x), want)
        params = dict(a.named_parameters())
        got = grad(lambda p: functional_call(a, {**p, **dict(a.named_buffers())}, (x,)).pow(3).sum())(params)
        params_t = dict(b.named_parameters())
        want = grad(lambda p: functional_call(b, {**p, **dict(b.named_buffers())}, (x,)).pow(3).sum())(params_t)
        for k in params:
            torch.testing.assert_close(got[k], want[k])
