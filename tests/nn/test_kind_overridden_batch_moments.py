"""Kind: a variant that overrides ``batch_moments`` without declaring ``plain_batch_moments``. Before the capability
was declared (issue 15, item 2), such a class left the fused paths by the method check itself; with the declared
flag defaulting to True, its statistics were silently replaced by the plain batch moments (in BatchNormBase's
path, BatchRenorm's fused path, MaskedBatchNorm's mask path and NormAct's fused activation). A class that brings its
own ``batch_moments`` is not plain unless it says so; checked against an independent float64 formula, on both
kernel paths, in train mode (where batch statistics are used)."""

import pytest
import torch

from normlab import kernels
from normlab import nn as nlnn


def _quadrupled(base):
    """``base`` with batch variances x4 (a user's variant whose statistics differ), plain_batch_moments not said."""

    class Quadrupled(base):
        def batch_moments(self, x, dims, *, mask=None):
            stats = super().batch_moments(x, dims, mask=mask)
            return stats._replace(var=stats.var * 4)

    return Quadrupled


def _want(x, eps, mask=None):
    """(x - mean) / sqrt(4 var + eps) per channel (axis 1) over the valid values, in float64; 0 where masked."""
    valid = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.expand_as(x)
    xt, vt = x.transpose(0, 1).reshape(x.shape[1], -1), valid.transpose(0, 1).reshape(x.shape[1], -1)
    n = vt.sum(1)
    mean = (xt * vt).sum(1) / n
    var = (((xt - mean[:, None]) ** 2) * vt).sum(1) / n
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = (x - mean.view(shape)) / torch.sqrt(4 * var.view(shape) + eps)
    return torch.where(valid, y, torch.zeros((), dtype=x.dtype))


BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])


@pytest.fixture(params=BACKENDS)
def kernel_path(request):
    with kernels.backend(request.param):
        yield request.param


def _x():
    return torch.randn(16, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 1


@pytest.mark.parametrize("base, kw", [(nlnn.BatchNorm1d, {}), (nlnn.BatchRenorm, {"r_max": 1.0, "d_max": 0.0}),
                                      (nlnn.MaskedBatchNorm, {})], ids=["BatchNorm1d", "BatchRenorm", "Masked"])
def test_kind_overridden_batch_moments_are_used(base, kw, kernel_path):
    cls = _quadrupled(base)
    assert cls.plain_batch_moments is False
    x = _x()
    layer = cls(3, dtype=torch.float64, **kw).train()
    torch.testing.assert_close(layer(x), _want(x, layer.eps), rtol=1e-10, atol=1e-12)  # r=1, d=0 for renorm


def test_kind_overridden_batch_moments_are_used_under_a_mask(kernel_path):
    x = _x()
    mask = torch.rand(16, 1, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    layer = _quadrupled(nlnn.MaskedBatchNorm)(3, dtype=torch.float64).train()
    torch.testing.assert_close(layer(x, mask=mask[:, 0]), _want(x, layer.eps, mask), rtol=1e-10, atol=1e-12)


def test_kind_overridden_batch_moments_are_used_by_norm_act(kernel_path):
    x = _x()
    layer = nlnn.NormAct(_quadrupled(nlnn.BatchNorm1d)(3, dtype=torch.float64), activation="relu").train()
    torch.testing.assert_close(layer(x), torch.relu(_want(x, 1e-5)), rtol=1e-10, atol=1e-12)


def test_kind_overridden_batch_moments_declared_plain_keeps_the_fused_path():
    """A class that overrides batch_moments and says its statistics are still the plain ones keeps the flag."""

    class Logged(nlnn.BatchNorm1d):
        plain_batch_moments = True

        def batch_moments(self, x, dims, *, mask=None):
            return super().batch_moments(x, dims, mask=mask)

    class Child(_quadrupled(nlnn.BatchNorm1d)):  # inherits the override, and with it the undeclared False
        pass

    assert Logged.plain_batch_moments is True and Logged(3)._local_plain_moments()
    assert Child.plain_batch_moments is False
