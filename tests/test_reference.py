"""The NumPy reference checked against finite differences and against independent closed forms."""

import numpy as np
import pytest

from normlab import reference as ref


def _loss_weights(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("shape,axis", [((5, 3), 1), ((4, 3, 2, 2), 1), ((3, 4, 3), -1), ((2, 3, 2, 2, 2), 1)])
def test_batch_norm_backward_matches_finite_differences(shape, axis):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape)
    c = shape[axis]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    w = _loss_weights(shape)  # L = sum(w * y): a non-trivial upstream gradient dy = w

    y, cache = ref.batch_norm_forward(x, gamma, beta, eps=1e-5, axis=axis)
    dx, dgamma, dbeta = ref.batch_norm_backward(w, cache)

    num_dx = ref.numerical_gradient(lambda v: (w * ref.batch_norm_forward(v, gamma, beta, 1e-5, axis)[0]).sum(), x)
    num_dg = ref.numerical_gradient(lambda g: (w * ref.batch_norm_forward(x, g, beta, 1e-5, axis)[0]).sum(), gamma)
    num_db = ref.numerical_gradient(lambda b: (w * ref.batch_norm_forward(x, gamma, b, 1e-5, axis)[0]).sum(), beta)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, num_dg, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dbeta, num_db, rtol=1e-6, atol=1e-7)


def test_batch_norm_forward_statistics_are_per_channel_and_biased():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4, 3, 3))
    y, cache = ref.batch_norm_forward(x, eps=0.0)
    # Each channel of y has mean 0 and (biased) variance 1.
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-12)
    # The cached variance is the biased one: divide by m = N*H*W, not m - 1.
    m = 6 * 3 * 3
    xc = x.transpose(1, 0, 2, 3).reshape(4, m)
    expected = ((xc - xc.mean(1, keepdims=True)) ** 2).sum(1) / m
    np.testing.assert_allclose(cache.var.ravel(), expected, rtol=1e-12)


def test_layer_norm_normalizes_each_sample():
    rng = np.random.default_rng(4)
    x = rng.normal(3, 2, size=(5, 7))
    y, _ = ref.layer_norm_forward(x, eps=0.0)
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=1), 1.0, rtol=1e-12)


def test_group_norm_special_cases_equal_layer_and_instance_norm():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 6, 4, 4))
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    # GN with one group == LN over (C, H, W) followed by a per-channel affine.
    y_gn1, _ = ref.group_norm_forward(x, 1, gamma, beta)
    y_ln, _ = ref.layer_norm_forward(x, eps=1e-5, normalized_ndim=3)
    np.testing.assert_allclose(y_gn1, y_ln * gamma.reshape(1, 6, 1, 1) + beta.reshape(1, 6, 1, 1), rtol=1e-12)
    # GN with C groups == IN.
    y_gnc, _ = ref.group_norm_forward(x, 6, gamma, beta)
    y_in, _ = ref.instance_norm_forward(x, gamma, beta)
    np.testing.assert_allclose(y_gnc, y_in, rtol=1e-12)


def test_group_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 4, 3))
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    w = _loss_weights(x.shape)
    _, cache = ref.group_norm_forward(x, 2, gamma, beta)
    dx, dgamma, dbeta = ref.group_norm_backward(w, cache)
    np.testing.assert_allclose(
        dx, ref.numerical_gradient(lambda v: (w * ref.group_norm_forward(v, 2, gamma, beta)[0]).sum(), x), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        dgamma, ref.numerical_gradient(lambda g: (w * ref.group_norm_forward(x, 2, g, beta)[0]).sum(), gamma), rtol=1e-6
    )
    np.testing.assert_allclose(dbeta, w.sum(axis=(0, 2)), rtol=1e-12)


def test_layer_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 5))
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    w = _loss_weights(x.shape)
    _, cache = ref.layer_norm_forward(x, gamma, beta)
    dx, _, _ = ref.norm_backward(w, cache)
    num = ref.numerical_gradient(lambda v: (w * ref.layer_norm_forward(v, gamma, beta)[0]).sum(), x)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)


def test_inference_uses_given_statistics_and_running_update_is_torch_convention():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    y = ref.batch_norm_inference(x, running_mean=[1.0, 2.0], running_var=[4.0, 16.0], eps=0.0)
    np.testing.assert_allclose(y, [[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(ref.running_update([0.0, 1.0], [10.0, 3.0], 0.1), [1.0, 1.2])


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible into 4 groups"):
        ref.group_norm_forward(np.zeros((2, 6, 3)), 4)
