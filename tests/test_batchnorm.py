"""normlab.nn.BatchNorm*: parity with torch.nn.BatchNorm*, the reference, gradcheck, state_dict, bad input."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab import functional as nlF
from normlab import nn as nlnn
from normlab import reference as ref

PAIRS = [
    (nlnn.BatchNorm1d, torch.nn.BatchNorm1d, (8, 5)),
    (nlnn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 5, 7)),
    (nlnn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 5, 6, 3)),
    (nlnn.BatchNorm3d, torch.nn.BatchNorm3d, (3, 5, 2, 3, 4)),
]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _pair(ours_cls, torch_cls, dtype, **kw):
    torch.manual_seed(0)
    theirs = torch_cls(5, dtype=dtype, **kw)
    ours = ours_cls(5, dtype=dtype, **kw)
    if theirs.affine:  # non-trivial affine parameters: ones/zeros can hide a wrong gradient
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ours_cls,torch_cls,shape", PAIRS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_parity_with_torch_over_training_steps_then_eval(ours_cls, torch_cls, shape, dtype, momentum):
    ours, theirs = _pair(ours_cls, torch_cls, dtype, momentum=momentum)
    tol = TOL[dtype]
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 3).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        dy = torch.randn(shape, generator=gen, dtype=dtype)
        y_ours, y_theirs = ours(x), theirs(x2)
        torch.testing.assert_close(y_ours, y_theirs, **tol)
        (y_ours * dy).sum().backward()
        (y_theirs * dy).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, **tol)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **tol)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **tol)
        ours.zero_grad(), theirs.zero_grad()
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **tol)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **tol)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == step + 1
    ours.eval(), theirs.eval()
    x = torch.randn(shape, generator=gen, dtype=dtype)
    torch.testing.assert_close(ours(x), theirs(x), **tol)


@pytest.mark.parametrize("kw", [dict(affine=False), dict(track_running_stats=False)])
def test_parity_without_affine_or_running_stats(kw):
    ours, theirs = _pair(nlnn.BatchNorm2d, torch.nn.BatchNorm2d, torch.float64, **kw)
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64) * 3 + 1
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(theirs, mode)()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize("axis", [1, -1, 2])
def test_forward_and_backward_match_numpy_reference(axis):
    rng = np.random.default_rng(2)
    x_np = rng.normal(1.0, 2.0, size=(4, 3, 5))
    c = x_np.shape[axis]
    layer = nlnn.BatchNorm(c, axis=axis, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.normal(size=c)))
        layer.bias.copy_(torch.from_numpy(rng.normal(size=c)))
    dy_np = rng.normal(size=x_np.shape)
    x = torch.from_numpy(x_np).requires_grad_()
    y = layer(x)
    y.backward(torch.from_numpy(dy_np))

    y_ref, cache = ref.batch_norm_forward(x_np, layer.weight.detach().numpy(), layer.bias.detach().numpy(), 1e-5, axis)
    dx_ref, dg_ref, db_ref = ref.batch_norm_backward(dy_np, cache)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), dx_ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(layer.weight.grad.numpy(), dg_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad.numpy(), db_ref, rtol=1e-10, atol=1e-12)
    # Running statistics: one step of torch's convention with the unbiased batch variance.
    m = x_np.size // c
    np.testing.assert_allclose(layer.running_mean.numpy(), ref.running_update(np.zeros(c), cache.mean.ravel(), 0.1), rtol=1e-12)
    np.testing.assert_allclose(
        layer.running_var.numpy(), ref.running_update(np.ones(c), cache.var.ravel() * m / (m - 1), 0.1), rtol=1e-12
    )


@pytest.mark.parametrize("axis", [1, -1])
def test_gradcheck_float64(axis):
    torch.manual_seed(3)
    layer = nlnn.BatchNorm(3, axis=axis, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True) if axis == 1 else torch.randn(
        4, 2, 3, dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))
    # Gradients with respect to the affine parameters too, through the functional form.
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda inp, g, bb: nlF.batch_norm(inp, None, None, g, bb, True, axis=axis), (x, w, b))
    layer.eval()
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    axis_pick=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_and_axes_match_reference(shape, axis_pick, seed):
    shape = tuple(shape)
    axis = axis_pick % len(shape)
    c = shape[axis]
    if np.prod(shape) // c < 2:  # training needs more than one value per channel
        shape = (2,) + shape
        axis += 1
    rng = np.random.default_rng(seed)
    x_np = rng.normal(rng.normal() * 5, rng.uniform(0.1, 4), size=shape)
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    layer = nlnn.BatchNorm(c, axis=axis - len(shape) if seed % 2 else axis, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(gamma))
        layer.bias.copy_(torch.from_numpy(beta))
    y = layer(torch.from_numpy(x_np))
    y_ref, _ = ref.batch_norm_forward(x_np, gamma, beta, 1e-5, axis)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-9, atol=1e-9)


def test_state_dict_round_trip_with_torch():
    theirs = torch.nn.BatchNorm2d(5)
    theirs.train()
    for _ in range(3):
        theirs(torch.randn(4, 5, 3, 3) * 2 + 1)
    ours = nlnn.BatchNorm2d(5)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)
    back = torch.nn.BatchNorm2d(5)
    back.load_state_dict(ours.state_dict())
    ours.eval(), back.eval()
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(ours(x), back(x))


def test_old_checkpoint_without_num_batches_tracked_loads():
    sd = nlnn.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}
    layer = nlnn.BatchNorm1d(3)
    layer.num_batches_tracked.fill_(7)
    layer.load_state_dict(sd)
    # issue 14 item 3: as torch 2.13 does, a checkpoint without the counter keeps the layer's own (was: reset to 0)
    theirs = torch.nn.BatchNorm1d(3)
    theirs.num_batches_tracked.fill_(7)
    theirs.load_state_dict(sd)
    assert int(layer.num_batches_tracked) == int(theirs.num_batches_tracked) == 7


def test_eval_stats_batch_normalizes_with_batch_statistics_and_leaves_buffers():
    layer = nlnn.BatchNorm1d(4, eval_stats="batch").eval()
    x = torch.randn(16, 4, dtype=torch.float64) * 3 + 5
    before = copy.deepcopy(layer.state_dict())
    y = layer.double()(x)
    y_ref, _ = ref.batch_norm_forward(x.numpy(), eps=1e-5)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10)
    for k, v in before.items():
        assert torch.equal(layer.state_dict()[k].to(v.dtype), v)


def test_keras_constructor_follows_onnx_training_mode():
    layer = nlnn.BatchNorm.keras(3, gamma_initializer=2.0, moving_variance_initializer="ones").double()
    assert layer.axis == -1 and layer.eps == 1e-3
    x = torch.randn(10, 6, 3, dtype=torch.float64) * 2 + 1
    layer(x)
    flat = x.reshape(-1, 3).numpy()
    # ONNX BatchNormalization (training): running = momentum * running + (1 - momentum) * current, current_var biased.
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.99 * 0 + 0.01 * flat.mean(0), rtol=1e-10)
    np.testing.assert_allclose(layer.running_var.numpy(), 0.99 * 1 + 0.01 * flat.var(0), rtol=1e-10)
    assert torch.equal(layer.weight.detach(), torch.full((3,), 2.0, dtype=torch.float64))
    no_affine = nlnn.BatchNorm.keras(3, center=False, scale=False)
    assert no_affine.weight is None and no_affine.bias is None
    with pytest.raises(ValueError, match="unknown gamma_initializer 'glorot'"):
        nlnn.BatchNorm.keras(3, gamma_initializer="glorot")


def test_biased_running_variance_option():
    layer = nlnn.BatchNorm(2, running_var_unbiased=False, momentum=1.0).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    layer(x)
    np.testing.assert_allclose(layer.running_var.numpy(), x.numpy().var(0), rtol=1e-12)


def test_large_mean_float32_is_accurate():
    torch.manual_seed(0)
    x64 = torch.randn(64, 8, 16, 16, dtype=torch.float64) + 1e4
    y32 = nlnn.BatchNorm2d(8)(x64.float())
    y64 = nlnn.BatchNorm2d(8).double()(x64)
    assert (y32.double() - y64).abs().max().item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    torch.manual_seed(0)
    x = (torch.randn(32, 4, 8, 8) * 2 + 100).to(dtype)
    layer = nlnn.BatchNorm2d(4)
    y = layer(x)
    assert y.dtype == dtype and layer.running_mean.dtype == torch.float32
    y_ref, _ = ref.batch_norm_forward(x.double().numpy(), eps=1e-5)
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    np.testing.assert_allclose(y.detach().double().numpy(), y_ref, atol=tol)


NAN_ROW = [1, 2, float("nan"), 4, float("inf")]
BAD_INPUTS = [  # (layer, a valid input run first, the bad input, error type, message)
    (lambda: nlnn.BatchNorm2d(5), (4, 5, 3, 3), torch.randn(2, 5, 3), ValueError, r"BatchNorm2d\(5\): expected 4D input \(got 3D input"),
    (lambda: nlnn.BatchNorm1d(5), (4, 5), torch.randn(2, 5, 3, 3), ValueError, r"expected 2D or 3D input \(got 4D"),
    (lambda: nlnn.BatchNorm2d(5), (4, 5, 3, 3), torch.randn(2, 4, 3, 3), ValueError,
     r"expected 5 channels on axis 1, got input of shape \(2, 4, 3, 3\)"),
    (lambda: nlnn.BatchNorm(5, axis=-1), (4, 2, 5), torch.randn(2, 3, 4), ValueError, r"expected 5 channels on axis -1"),
    (lambda: nlnn.BatchNorm2d(5), (4, 5, 3, 3), torch.ones(2, 5, 3, 3, dtype=torch.int64), TypeError,
     r"expected a floating-point input.*torch.int64"),
    (lambda: nlnn.BatchNorm1d(5), (4, 5), torch.randn(1, 5), ValueError, r"more than 1 value per channel when training"),
    (lambda: nlnn.BatchNorm(5, axis=3), (2, 3, 3, 5), torch.randn(2, 5, 3), ValueError, r"channel axis 3 does not exist"),
    (lambda: nlnn.BatchNorm1d(5, check_finite=True), (4, 5), torch.tensor([[0.0] * 5, NAN_ROW]), ValueError,
     r"first bad channel is 2"),
]


@pytest.mark.parametrize("make,good_shape,x,exc,match", BAD_INPUTS)
def test_bad_input_raises_clearly_and_leaves_state_unchanged(make, good_shape, x, exc, match):
    layer = make()
    layer(torch.randn(good_shape))
    before = copy.deepcopy(layer.state_dict())
    assert int(before["num_batches_tracked"]) == 1
    with pytest.raises(exc, match=match):
        layer(x)
    for k, v in before.items():
        assert torch.equal(layer.state_dict()[k], v), k


def test_one_value_per_channel_is_fine_in_eval_mode():
    layer = nlnn.BatchNorm1d(3).eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.parametrize(
    "kw,match",
    [(dict(num_features=0), "positive int"), (dict(num_features=3, momentum=1.5), "momentum must lie"),
     (dict(num_features=3, eval_stats="global"), "eval_stats must be one of"), (dict(num_features=3, eps=0), "eps must be positive")],
)
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        nlnn.BatchNorm(**kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_buffers_still_normalize_in_float32(dtype):
    """Regression: with half running buffers (module.to(half)), eval-mode normalize ran in half precision."""
    torch.manual_seed(0)
    layer = nlnn.BatchNorm2d(4)
    layer.train()
    for _ in range(3):
        layer(torch.randn(16, 4, 4, 4) * 2 + 100)
    layer.eval()
    x = (torch.randn(8, 4, 4, 4) * 2 + 100).to(dtype)
    half_layer = copy.deepcopy(layer).to(dtype)
    y = half_layer(x)
    assert y.dtype == dtype
    # Only the final rounding to the half type may remain (the buffers' own rounding to half is part of the input):
    # y must equal the float64 result for those buffers rounded once to the half type, up to one unit in the last place.
    exact_half_buffers = ref.batch_norm_inference(x.double().numpy(), half_layer.running_mean.double().numpy(),
                                                  half_layer.running_var.double().numpy(), eps=layer.eps)
    rounded = torch.from_numpy(exact_half_buffers).to(dtype)
    ulp = torch.nextafter(rounded.abs(), torch.tensor(float("inf"), dtype=dtype)) - rounded.abs()
    assert bool(((y.detach() - rounded).abs() <= ulp).all())
    assert (y.detach() == rounded).double().mean().item() > 0.95
