"""Issue 15, item 2: whether a layer's forward may go through functional.batch_norm's fused paths is a capability
the class declares (``plain_batch_moments``), not a check of which method object the class holds."""

import numpy as np
import pytest
import torch

from normlab import nn as nlnn
from normlab import reference
from normlab.nn import BatchNormBase, make_norm

# the registered batch-statistic norms and what each declares
DECLARED = {"bn": True, "brn": True, "gbn:2": True, "masked": True, "ran": True,
            "mabn": False, "bln": False, "tbn:3": False, "fn": False}


@pytest.mark.parametrize("spec, plain", DECLARED.items(), ids=list(DECLARED))
def test_plain_batch_moments_is_declared_per_class(spec, plain):
    layer = make_norm(spec, 4)
    assert isinstance(layer, BatchNormBase)
    assert type(layer).plain_batch_moments is plain
    assert layer._local_plain_moments() is plain
    layer.sync_statistics = True  # synchronized statistics are pooled: never the local fused path
    assert layer._local_plain_moments() is False


def test_no_class_of_normlab_nn_overrides_batch_moments_while_declaring_plain_moments():
    classes = [c for c in vars(nlnn).values() if isinstance(c, type) and issubclass(c, BatchNormBase)]
    assert len(classes) >= 9
    for cls in classes:
        overrides = any("batch_moments" in vars(k) for k in cls.__mro__[:cls.__mro__.index(BatchNormBase)])
        assert not (overrides and cls.plain_batch_moments), cls.__name__


class _DoubledStd(nlnn.BatchNorm1d):
    """A user's variant whose statistics differ: it says so, and its batch_moments is then the one used."""

    plain_batch_moments = False

    def batch_moments(self, x, dims, *, mask=None):
        stats = super().batch_moments(x, dims, mask=mask)
        return stats._replace(var=stats.var * 4)


def test_a_variant_declaring_other_statistics_normalizes_with_them():
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = _DoubledStd(3, dtype=torch.float64).train()
    y = layer(x)
    xn = x.numpy()
    mean, var = xn.mean(axis=0), xn.var(axis=0) * 4
    np.testing.assert_allclose(y.detach().numpy(), (xn - mean) / np.sqrt(var + layer.eps), rtol=1e-10, atol=1e-12)
    # a plain BatchNorm1d on the same input: the reference batch norm (plain moments)
    plain = nlnn.BatchNorm1d(3, dtype=torch.float64).train()
    np.testing.assert_allclose(plain(x).detach().numpy(), reference.batch_norm_forward(xn)[0], rtol=1e-10,
                               atol=1e-12)
