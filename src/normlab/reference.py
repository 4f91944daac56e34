"""NumPy float64 reference of the normalization family, written straight from the equations.

This module is the oracle of normlab's test suite and a teaching text. It imports nothing of normlab and
favours clarity over speed. Every normalization here is the same three steps over a chosen set of
*reduction axes* R (the axes statistics are taken over):

    mu      = mean_R(x)                              batch / layer / instance / group mean
    sigma2  = mean_R((x - mu)^2)                     biased variance (divide by m = |R|, not m - 1)
    x_hat   = (x - mu) / sqrt(sigma2 + eps)
    y       = gamma * x_hat + beta                   gamma, beta broadcast along the *parameter axes*

and the backward pass is the closed form (Ioffe & Szegedy 2015, Sec. 3), with g = dL/dy * gamma:

    dL/dbeta  = sum over non-parameter axes of dL/dy
    dL/dgamma = sum over non-parameter axes of dL/dy * x_hat
    dL/dx     = (1 / sqrt(sigma2 + eps)) * (g - mean_R(g) - x_hat * mean_R(g * x_hat))

BatchNorm reduces over every axis but the channel axis; LayerNorm over the trailing ``normalized_ndim``
axes; InstanceNorm over the spatial axes of each (sample, channel); GroupNorm over the spatial axes and the
channels of one group of each sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "NormCache",
    "norm_forward",
    "norm_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_inference",
    "layer_norm_forward",
    "instance_norm_forward",
    "group_norm_forward",
    "group_norm_backward",
    "running_update",
    "numerical_gradient",
]


@dataclass
class NormCache:
    """What the backward pass needs from the forward pass."""

    x_hat: np.ndarray
    inv_std: np.ndarray  # 1 / sqrt(sigma2 + eps), keepdims over the reduction axes
    gamma: np.ndarray  # broadcastable to x
    reduce_axes: tuple[int, ...]
    param_sum_axes: tuple[int, ...]  # axes to sum dL/dy over for dgamma, dbeta
    mean: np.ndarray  # batch mean (keepdims), also returned to callers
    var: np.ndarray  # biased batch variance (keepdims)


def _as_f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def norm_forward(x, gamma, beta, eps, reduce_axes, param_axes):
    """Generic normalization: statistics over ``reduce_axes``, affine along ``param_axes``.

    ``gamma``/``beta`` have the shape of ``x`` restricted to ``param_axes`` (or are None for 1 / 0).
    Returns ``(y, cache)``.
    """
    x = _as_f64(x)
    reduce_axes = tuple(sorted(a % x.ndim for a in reduce_axes))
    param_axes = tuple(sorted(a % x.ndim for a in param_axes))
    pshape = [x.shape[a] if a in param_axes else 1 for a in range(x.ndim)]
    g = np.ones(pshape) if gamma is None else _as_f64(gamma).reshape(pshape)
    b = np.zeros(pshape) if beta is None else _as_f64(beta).reshape(pshape)

    mean = x.mean(axis=reduce_axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=reduce_axes, keepdims=True)  # biased: divide by m
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    y = g * x_hat + b
    sum_axes = tuple(a for a in range(x.ndim) if a not in param_axes)
    return y, NormCache(x_hat, inv_std, g, reduce_axes, sum_axes, mean, var)


def norm_backward(dy, cache: NormCache):
    """Closed-form gradients ``(dx, dgamma, dbeta)`` of :func:`norm_forward`.

    dgamma and dbeta come back in the shape of the parameter axes (squeezed).
    """
    dy = _as_f64(dy)
    dbeta = dy.sum(axis=cache.param_sum_axes)
    dgamma = (dy * cache.x_hat).sum(axis=cache.param_sum_axes)
    g = dy * cache.gamma
    r = cache.reduce_axes
    mean_g_xhat = (g * cache.x_hat).mean(axis=r, keepdims=True)
    dx = cache.inv_std * (g - g.mean(axis=r, keepdims=True) - cache.x_hat * mean_g_xhat)
    return dx, dgamma, dbeta


def _axis_index(ndim: int, axis: int) -> int:
    return axis % ndim


def batch_norm_forward(x, gamma=None, beta=None, eps=1e-5, axis=1):
    """Training-mode BatchNorm: statistics over every axis except ``axis`` (the channel axis).

    Returns ``(y, cache)``; ``cache.mean``/``cache.var`` are the batch mean and *biased* batch variance.
    """
    x = _as_f64(x)
    c = _axis_index(x.ndim, axis)
    reduce_axes = tuple(a for a in range(x.ndim) if a != c)
    return norm_forward(x, gamma, beta, eps, reduce_axes, (c,))


def batch_norm_backward(dy, cache: NormCache):
    return norm_backward(dy, cache)


def batch_norm_inference(x, running_mean, running_var, gamma=None, beta=None, eps=1e-5, axis=1):
    """Inference-mode BatchNorm: the running (population) statistics replace the batch's."""
    x = _as_f64(x)
    c = _axis_index(x.ndim, axis)
    shape = [1] * x.ndim
    shape[c] = x.shape[c]
    m = _as_f64(running_mean).reshape(shape)
    v = _as_f64(running_var).reshape(shape)
    g = 1.0 if gamma is None else _as_f64(gamma).reshape(shape)
    b = 0.0 if beta is None else _as_f64(beta).reshape(shape)
    return g * (x - m) / np.sqrt(v + eps) + b


def layer_norm_forward(x, gamma=None, beta=None, eps=1e-5, normalized_ndim=1):
    """LayerNorm (Ba et al. 2016): statistics over the trailing ``normalized_ndim`` axes of each sample."""
    x = _as_f64(x)
    axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
    return norm_forward(x, gamma, beta, eps, axes, axes)


def instance_norm_forward(x, gamma=None, beta=None, eps=1e-5):
    """InstanceNorm (Ulyanov et al. 2016): statistics over the spatial axes of each (sample, channel)."""
    x = _as_f64(x)
    return norm_forward(x, gamma, beta, eps, tuple(range(2, x.ndim)), (1,))


def group_norm_forward(x, num_groups, gamma=None, beta=None, eps=1e-5):
    """GroupNorm (Wu & He 2018): view (N, C, *S) as (N, G, C/G, *S), normalize over all but (N, G), then
    apply the per-channel affine. Returns ``(y, cache)``; the cache holds the grouped view."""
    x = _as_f64(x)
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm_forward: {c} channels are not divisible into {num_groups} groups")
    xg = x.reshape(n, num_groups, c // num_groups, *x.shape[2:])
    y_hat, cache = norm_forward(xg, None, None, eps, tuple(range(2, xg.ndim)), ())
    y_hat = y_hat.reshape(x.shape)
    shape = [1, c] + [1] * (x.ndim - 2)
    g = np.ones(shape) if gamma is None else _as_f64(gamma).reshape(shape)
    b = np.zeros(shape) if beta is None else _as_f64(beta).reshape(shape)
    return g * y_hat + b, (cache, y_hat, g, num_groups)


def group_norm_backward(dy, cache):
    """Gradients of :func:`group_norm_forward`: the affine is per channel, the normalization per group."""
    inner, y_hat, g, num_groups = cache
    dy = _as_f64(dy)
    sum_axes = tuple(a for a in range(dy.ndim) if a != 1)
    dbeta = dy.sum(axis=sum_axes)
    dgamma = (dy * y_hat).sum(axis=sum_axes)
    d_hat = (dy * g).reshape(inner.x_hat.shape)
    dx, _, _ = norm_backward(d_hat, inner)
    return dx.reshape(dy.shape), dgamma, dbeta


def running_update(running, batch_value, momentum):
    """torch's convention: ``running <- (1 - momentum) * running + momentum * batch_value``.

    (Keras and ONNX write the same update with ``momentum' = 1 - momentum``, the weight of the old value.)"""
    return (1.0 - momentum) * _as_f64(running) + momentum * _as_f64(batch_value)


def numerical_gradient(f, x, h=1e-6):
    """Central finite differences of the scalar function ``f`` at ``x`` (float64, same shape as x)."""
    x = _as_f64(x).copy()
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f(x)
        x[i] = old - h
        fm = f(x)
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad
