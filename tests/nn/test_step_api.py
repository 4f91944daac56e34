"""Issue 15, items 1 and 3: layers normalize through the one step API (``normlab.kernels``), which alone chooses
between the numba kernels, torch's operators and the composed steps."""

import numpy as np
import pytest
import torch
from test_kind_higher_order_derivatives import _check_third

from normlab import kernels, reference
from normlab.nn import GhostBatchNorm


def test_ghost_unequal_virtual_batches_normalize_through_kernels_normalize(monkeypatch):
    calls = []
    real = kernels.normalize

    def spy(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "normalize", spy)
    x = torch.randn(10, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer = GhostBatchNorm(3, 4, dtype=torch.float64).train()  # virtual batches of 4, 4 and 2
    y = layer(x)
    assert calls == [(4, 3, 4), (4, 3, 4), (2, 3, 4)]
    want = np.concatenate([reference.batch_norm_forward(c)[0] for c in np.split(x.numpy(), [4, 8])])
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["native", "fast"])
def test_ghost_unequal_virtual_batches_third_derivative_exact_on_both_kernel_paths(backend):
    # the kind of tests/nn/test_kind_higher_order_derivatives.py, for the unequal-chunk branch (4 + 2 samples)
    torch.manual_seed(2)
    layer = GhostBatchNorm(3, 4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    x = torch.randn(6, 3, 5, dtype=torch.float64) * 2 + 1
    with kernels.backend(backend):
        _check_third(layer, x)
