"""normlab.functional.batch_norm against torch.nn.functional.batch_norm and the reference."""

import numpy as np
import pytest
import torch

from normlab import functional as nlF
from normlab import reference as ref


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_torch_functional(training, affine):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, generator=g, dtype=torch.float64) * 3 + 2
    rm, rv = torch.randn(4, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(4, generator=g, dtype=torch.float64) if affine else None
    b = torch.randn(4, generator=g, dtype=torch.float64) if affine else None
    rm2, rv2 = rm.clone(), rv.clone()
    y = nlF.batch_norm(x, rm, rv, w, b, training, 0.3, 1e-4)
    y2 = torch.nn.functional.batch_norm(x, rm2, rv2, w, b, training, 0.3, 1e-4)
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm, rm2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, rv2, rtol=1e-12, atol=1e-12)


def test_channels_last_axis_equals_permuted_channels_first():
    x = torch.randn(3, 7, 4, dtype=torch.float64)  # (N, L, C)
    rm1, rv1 = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    rm2, rv2 = rm1.clone(), rv1.clone()
    y_last = nlF.batch_norm(x, rm1, rv1, training=True, axis=-1)
    y_first = nlF.batch_norm(x.transpose(1, 2), rm2, rv2, training=True, axis=1).transpose(1, 2)
    torch.testing.assert_close(y_last, y_first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv1, rv2, rtol=1e-12, atol=1e-12)


def test_momentum_none_is_cumulative_average():
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    nbt = torch.tensor(0)
    batches = [torch.randn(5, 2, dtype=torch.float64) * (i + 1) + i for i in range(4)]
    for xb in batches:
        nlF.batch_norm(xb, rm, rv, training=True, momentum=None, num_batches_tracked=nbt)
    assert int(nbt) == 4
    np.testing.assert_allclose(rm.numpy(), np.mean([xb.numpy().mean(0) for xb in batches], axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), np.mean([xb.numpy().var(0, ddof=1) for xb in batches], axis=0), rtol=1e-12)


def test_eval_mode_uses_running_statistics():
    x = np.random.default_rng(0).normal(size=(4, 3))
    rm, rv = np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.5])
    y = nlF.batch_norm(torch.from_numpy(x), torch.from_numpy(rm), torch.from_numpy(rv), eps=1e-3)
    np.testing.assert_allclose(y.numpy(), ref.batch_norm_inference(x, rm, rv, eps=1e-3), rtol=1e-12)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x, rm, rv: nlF.batch_norm(x, None, None, training=False), "eval mode .* needs running_mean and running_var"),
        (lambda x, rm, rv: nlF.batch_norm(x, rm[:3], rv, training=True), r"running_mean of shape \(4,\), got \(3,\)"),
        (lambda x, rm, rv: nlF.batch_norm(x, rm, None, training=True), "give both running_mean and running_var"),
        (lambda x, rm, rv: nlF.batch_norm(x, rm, rv, torch.ones(5), training=True), r"weight of shape \(4,\), got \(5,\)"),
        (lambda x, rm, rv: nlF.batch_norm(x, rm, rv, training=True, momentum=None), "num_batches_tracked"),
        (lambda x, rm, rv: nlF.batch_norm(x, rm, rv, training=True, momentum=2.0), r"momentum must lie in \[0, 1\]"),
        (lambda x, rm, rv: nlF.batch_norm(x[:1], rm, rv, training=True), "more than 1 value per channel"),
    ],
)
def test_bad_arguments_raise_before_buffers_change(call, match):
    x = torch.randn(3, 4)
    rm, rv = torch.randn(4), torch.rand(4) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    with pytest.raises(ValueError, match=match):
        call(x, rm, rv)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)


def test_error_leaves_running_buffers_untouched():
    rm, rv = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError):
        nlF.batch_norm(torch.randn(3, 4), rm, rv, training=True, momentum=-0.5)
    assert torch.equal(rm, torch.zeros(4)) and torch.equal(rv, torch.ones(4))


def test_bad_axis_error_names_the_caller():
    """Regression: an out-of-range axis raised _stats' message without the layer's name."""
    with pytest.raises(ValueError, match=r"MyLayer: channel axis 5 does not exist in a 2D input of shape \(4, 3\)"):
        nlF.batch_norm(torch.randn(4, 3), None, None, training=True, axis=5, name="MyLayer")
    with pytest.raises(ValueError, match=r"MyLayer: expected an input of rank >= 2"):
        nlF.batch_norm(torch.randn(4), None, None, training=True, name="MyLayer")
