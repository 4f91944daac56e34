"""Issue 15, item 1: LayerNorm, RMSNorm, GroupNorm and InstanceNorm are layouts (normalized dims, groups, centred)
over one per-sample forward, ``kernels.sample_norm``: statistics (``_stats.moments``) -> ``_stats.standardize``
-> affine, with torch's fused kernels as declared dispatch targets that compute the same steps.

Checked here: every per-sample layer's forward goes through ``sample_norm`` with its declared layout; each fused
target equals the composed steps (values and gradients); the steps equal the float64 reference (and the RMS formula)
and have exact derivatives (gradcheck, gradgradcheck)."""

import numpy as np
import pytest
import torch

from normlab import _stats, kernels, reference
from normlab.nn import GroupNorm, InstanceNorm, InstanceNorm2d, LayerNorm, RMSNorm, make_norm
from normlab.nn import alternatives as A

F64 = torch.float64

# (layer, input shape, layout it must declare, centred, fused kernel)
CASES = [
    (lambda: LayerNorm(5), (2, 3, 5), kernels.SampleLayout((5,)), True, "layer_norm"),
    (lambda: LayerNorm((3, 5)), (2, 3, 5), kernels.SampleLayout((3, 5)), True, "layer_norm"),
    (lambda: LayerNorm(3, axis=1), (2, 3, 4, 2), kernels.SampleLayout(axis=1, groups=1), True, "layer_norm"),
    (lambda: LayerNorm(3, axis=-1), (2, 4, 3), kernels.SampleLayout(axis=2, groups=1), True, "layer_norm"),
    (lambda: RMSNorm(5), (2, 3, 5), kernels.SampleLayout((5,)), False, "rms_norm"),
    (lambda: RMSNorm(3, eps=1e-4, axis=1), (2, 3, 4), kernels.SampleLayout(axis=1, groups=1), False, "rms_norm"),
    (lambda: GroupNorm(2, 6), (2, 6, 4), kernels.SampleLayout(axis=1, groups=2), True, "group_norm"),
    (lambda: GroupNorm(3, 6, axis=-1), (2, 4, 4, 6), kernels.SampleLayout(axis=3, groups=3), True, "group_norm"),
    (lambda: InstanceNorm(3, affine=True), (2, 3, 5), kernels.SampleLayout(axis=1, groups=3), True, "instance_norm"),
    (lambda: InstanceNorm2d(4, affine=True, track_running_stats=True), (2, 4, 3, 3),
     kernels.SampleLayout(axis=1, groups=4), True, "instance_norm"),
    (lambda: InstanceNorm(3, affine=True, axis=-1), (2, 5, 3), kernels.SampleLayout(axis=2, groups=3), True,
     "instance_norm"),
]
IDS = ["ln", "ln-2d", "ln-axis1", "ln-axis-1", "rms", "rms-axis", "gn", "gn-last", "in", "in2d-track", "in-last"]


def _randomize(layer):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    return layer


@pytest.mark.parametrize("build, shape, layout, centred, fused", CASES, ids=IDS)
def test_every_per_sample_norm_forward_goes_through_sample_norm(monkeypatch, build, shape, layout, centred, fused):
    layer = _randomize(build().double().train())
    calls = []
    real = kernels.sample_norm

    def spy(x, got_layout, weight, bias, eps, **kw):
        calls.append((got_layout, kw))
        assert weight is layer.weight and bias is layer.bias and eps == layer.eps
        return real(x, got_layout, weight, bias, eps, **kw)

    x = torch.randn(*shape, dtype=F64)
    want = layer(x)
    monkeypatch.setattr(kernels, "sample_norm", spy)
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)
    assert calls == [(layout, {"centred": centred, "fused": fused})]
    assert layer.centred is centred and layer.fused == fused
    # and the forward is those declarations over the steps: the fused kernel off, the same result
    monkeypatch.setattr(kernels, "sample_norm", real)
    steps = kernels.sample_norm(x, layout, layer.weight, layer.bias, layer.eps, centred=centred, fused=None)
    torch.testing.assert_close(steps, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("build, shape, layout, centred, fused", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_targets_compute_the_steps_values_and_gradients(build, shape, layout, centred, fused, dtype):
    layer = _randomize(build()).to(dtype)
    x = (torch.randn(*shape, dtype=dtype) * 3 + 2).requires_grad_()
    dy = torch.randn(*shape, dtype=dtype)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    outs = []
    for which in (fused, None):
        y = kernels.sample_norm(x, layout, layer.weight, layer.bias, layer.eps, centred=centred, fused=which)
        outs.append((y, torch.autograd.grad(y, [x, *params], dy)))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(outs[0][0], outs[1][0], **tol)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, **tol)


def _rms_formula(x: np.ndarray, dims, eps):
    return x / np.sqrt((x * x).mean(axis=dims, keepdims=True) + eps)


def test_steps_match_the_float64_reference_for_every_layout():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 4, 5, generator=g, dtype=F64) * 4 + 7
    w6, b6 = torch.randn(6, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    w45, b45 = torch.randn(4, 5, generator=g, dtype=F64), torch.randn(4, 5, generator=g, dtype=F64)
    xn = x.numpy()
    # LayerNorm, torch's mode over the trailing (4, 5)
    got = kernels.sample_steps(x, kernels.SampleLayout((4, 5)), w45, b45, 1e-5)
    want, _ = reference.layer_norm_forward(xn, w45.numpy(), b45.numpy(), 1e-5, 2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    # GroupNorm, groups 1 (feature-map LayerNorm), 3 and 6 (InstanceNorm)
    for groups in (1, 3, 6):
        got = kernels.sample_steps(x, kernels.SampleLayout(axis=1, groups=groups), w6, b6, 1e-5)
        want, _ = reference.group_norm_forward(xn, groups, w6.numpy(), b6.numpy(), 1e-5)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    want, _ = reference.instance_norm_forward(xn, w6.numpy(), b6.numpy(), 1e-5)
    got = kernels.sample_steps(x, kernels.SampleLayout(axis=1, groups=6), w6, b6, 1e-5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    # the channel axis elsewhere: the same numbers, moved
    got = kernels.sample_steps(x.movedim(1, -1), kernels.SampleLayout(axis=3, groups=3), w6, b6, 1e-5)
    want, _ = reference.group_norm_forward(xn, 3, w6.numpy(), b6.numpy(), 1e-5)
    np.testing.assert_allclose(got.movedim(-1, 1).numpy(), want, rtol=1e-10, atol=1e-10)
    # RMSNorm (not centred): x / sqrt(mean(x^2) + eps) * gamma, trailing and per-sample with per-channel gamma
    got = kernels.sample_steps(x, kernels.SampleLayout((4, 5)), w45, None, 1e-6, centred=False)
    np.testing.assert_allclose(got.numpy(), _rms_formula(xn, (2, 3), 1e-6) * w45.numpy(), rtol=1e-10, atol=1e-10)
    got = kernels.sample_steps(x, kernels.SampleLayout(axis=1, groups=1), w6, None, 1e-6, centred=False)
    want = _rms_formula(xn, (1, 2, 3), 1e-6) * w6.numpy().reshape(1, 6, 1, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout, centred, pshape", [
    (kernels.SampleLayout((4,)), True, (4,)), (kernels.SampleLayout((4,)), False, (4,)),
    (kernels.SampleLayout(axis=1, groups=1), True, (3,)), (kernels.SampleLayout(axis=1, groups=3), True, (3,)),
    (kernels.SampleLayout(axis=2, groups=1), False, (4,)),
], ids=["ln", "rms", "ln-axis", "in", "rms-axis-last"])
def test_steps_derivatives_are_exact_gradcheck_and_gradgradcheck(layout, centred, pshape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(*pshape, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(*pshape, generator=g, dtype=F64, requires_grad=True) if centred else None
    inputs = (x, w) if b is None else (x, w, b)

    def f(*args):
        return kernels.sample_steps(args[0], layout, args[1], args[2] if len(args) > 2 else None, 1e-3, centred)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_uncentred_moments_are_the_mean_square_with_and_without_mask():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, generator=g, dtype=F64)
    m = _stats.moments(x, (1,), centred=False)
    torch.testing.assert_close(m.var, (x * x).mean(1))
    assert m.count == 5 and not m.mean.any()
    mask = torch.tensor([[1, 1, 0, 0, 1]] * 3, dtype=torch.bool)
    x_nan = torch.where(mask, x, torch.full_like(x, float("nan")))
    mm = _stats.moments(x_nan, (1,), mask=mask, centred=False)
    torch.testing.assert_close(mm.var, (x[:, [0, 1, 4]] ** 2).mean(1))
    assert mm.count.tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_standardize_accumulates_half_types_in_float32_and_returns_the_input_dtype(dtype):
    x = (torch.randn(4, 64, dtype=torch.float32) * 0.01 + 300).to(dtype)
    stats = _stats.moments(x, (1,), keepdim=True)
    assert stats.mean.dtype == torch.float32
    y = _stats.standardize(x, stats, 1e-5)
    assert y.dtype == dtype
    want = (x.double() - x.double().mean(1, keepdim=True)) / torch.sqrt(x.double().var(1, correction=0,
                                                                                      keepdim=True) + 1e-5)
    torch.testing.assert_close(y.double(), want, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("backend", ["fast", "native"])
@pytest.mark.parametrize("spec", ["ln", "rms", "gn:2", "in"])
def test_registered_per_sample_norms_equal_their_steps_on_both_kernel_paths(backend, spec):
    layer = _randomize(make_norm(spec, 4)).double()
    x = torch.randn(3, 4, 5, dtype=F64)
    layout = layer.layout(x, 1)
    with kernels.backend(backend):
        got = layer(x)
    steps = kernels.sample_steps(x, layout, layer.weight, layer.bias, layer.eps, layer.centred)
    torch.testing.assert_close(got, steps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("build, shape, layout, centred, fused", CASES, ids=IDS)
def test_every_per_sample_norm_is_a_per_sample_norm_declaring_a_known_fused_kernel(build, shape, layout, centred,
                                                                                   fused):
    layer = build()
    assert isinstance(layer, A.PerSampleNorm)
    assert layer.fused in kernels.sample.FUSED
    assert layer.layout(torch.randn(*shape), None if layout.trailing is not None else layout.axis) == layout
