"""Issue 14, item 6 (kind: a Python number read from a tensor inside a compiled training step). With
``momentum=None`` (the cumulative average) the weight of a batch is 1 / num_batches_tracked; it is a tensor
operation, so ``torch.compile(fullgraph=True)`` keeps it in the graph (torch's own layer fails with
GuardOnDataDependentSymNode) and the compiled layer matches the eager one and torch's eager layer."""

import pytest
import torch

from normlab import functional as nlF
from normlab import kernels
from normlab.nn import BatchNorm1d, BatchNorm2d, make_norm

BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])


def _batches(shape, n=3):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(*shape, generator=g) * (k + 1) + k for k in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, shape", [
    (lambda: BatchNorm1d(4, momentum=None), (8, 4)),
    (lambda: BatchNorm1d(4, momentum=None), (8, 4, 3)),
    (lambda: BatchNorm2d(4, momentum=None), (4, 4, 3, 3)),
])
def test_kind_compile_cumulative_average_matches_eager_and_torch(backend, build, shape):
    torch._dynamo.reset()
    compiled_layer, eager_layer = build(), build()
    theirs = torch.nn.BatchNorm1d(4, momentum=None) if len(shape) < 4 else torch.nn.BatchNorm2d(4, momentum=None)
    with kernels.backend(backend):
        compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
        for x in _batches(shape):
            xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
            yc, ye = compiled(xc), eager_layer(xe)
            torch.testing.assert_close(yc, ye)
            torch.testing.assert_close(yc, theirs(x))
            yc.square().sum().backward()
            ye.square().sum().backward()
            torch.testing.assert_close(xc.grad, xe.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(compiled_layer, name), getattr(eager_layer, name))
        torch.testing.assert_close(getattr(compiled_layer, name), getattr(theirs, name))
    assert int(compiled_layer.num_batches_tracked) == 3


def _equal_average(xs, dims):
    means = torch.stack([x.double().mean(dims) for x in xs]).mean(0)
    varis = torch.stack([x.double().var(dims, unbiased=True) for x in xs]).mean(0)
    return means, varis


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ["bn", "brn", "gbn:4", "bln", "masked"])
def test_kind_compile_cumulative_average_layers_of_the_family(backend, spec):
    """Every layer whose cumulative average goes through the shared update compiles with fullgraph=True and
    keeps the equal-weight average of the batches (float64 formula)."""
    torch._dynamo.reset()
    kw = {"momentum": None}
    if spec == "brn":
        kw.update(r_max=1.0, d_max=0.0)
    layer = make_norm(spec, 4, **kw)
    xs = _batches((8, 4, 3))
    with kernels.backend(backend):
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        for x in xs:
            compiled(x)
    mean, var = _equal_average(xs, (0, 2))
    torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
    assert int(layer.num_batches_tracked) == 3


def test_kind_compile_cumulative_average_factor_is_a_tensor_operation():
    nbt = torch.tensor(4)
    factor = nlF.momentum_factor(None, nbt)
    assert isinstance(factor, torch.Tensor) and float(factor) == 0.25
    assert nlF.momentum_factor(None, 4) == 0.25 and nlF.momentum_factor(0.3, None) == 0.3


@pytest.mark.parametrize("backend", BACKENDS)
def test_kind_compile_cumulative_average_functional(backend):
    torch._dynamo.reset()
    rm, rv, nbt = torch.zeros(4), torch.ones(4), torch.tensor(0)

    def step(x):
        return nlF.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=nbt)

    xs = _batches((8, 4))
    with kernels.backend(backend):
        compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
        for x in xs:
            compiled(x)
    mean, var = _equal_average(xs, (0,))
    torch.testing.assert_close(rm.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rv.double(), var, rtol=1e-5, atol=1e-5)
    assert int(nbt) == 3
