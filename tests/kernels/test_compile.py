"""The custom ops seen as one operator by fx, torch.compile and torch.export (no graph break)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from normlab import kernels
from normlab.nn import BatchNorm2d, BatchRenorm, GhostBatchNorm, MaskedBatchNorm

pytestmark = pytest.mark.skipif(not kernels.numba_available(), reason="numba (the kernels extra) is not installed")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), BatchNorm2d(2))


def _step(model, x):
    y = model(x)
    y.square().mean().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


def test_compiled_model_equals_eager_outputs_grads_buffers():
    x = torch.randn(4, 3, 6, 5)
    with kernels.backend("fast"):
        eager = _step(_model(), x)
        compiled_model = _model()
        # aot_eager: dynamo + AOTAutograd (the custom ops' fake functions and autograd), without inductor's
        # code generation, which would only add compile time here. fullgraph=True fails on any graph break.
        compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
        got = _step(compiled, x)
    for a, b in zip([eager[0], *eager[1], *eager[2]], [got[0], *got[1], *got[2]]):
        torch.testing.assert_close(a, b)


class _Family(nn.Module):
    """Ghost BN, batch renorm and masked BN (fixed lengths) after a convolution: the variants' kernel paths."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.ghost = GhostBatchNorm(4, 2)
        self.renorm = BatchRenorm(4, r_max=1.5, d_max=0.5, warmup_steps=0, r_max_steps=0, d_max_steps=0)
        self.masked = MaskedBatchNorm(4)
        self.register_buffer("lengths", torch.tensor([7, 5, 6, 7]))

    def forward(self, x):
        return self.masked(self.renorm(torch.relu(self.ghost(self.conv(x)))), lengths=self.lengths)


def test_compiled_family_equals_eager():
    """The variants compile too (renorm's step counter and masked's count check are data-dependent Python, so
    they break the graph: no fullgraph here; what matters is equal outputs, gradients and buffers)."""
    x = torch.randn(4, 3, 7)
    with kernels.backend("fast"):
        eager = _step(_Family(), x)
        got = _step(torch.compile(_Family(), backend="aot_eager"), x)
        ghost = _Family().ghost
        gx = torch.randn(4, 4, 7)
        torch.testing.assert_close(torch.compile(ghost, backend="aot_eager", fullgraph=True)(gx), _Family().ghost(gx))
    for a, b in zip([eager[0], *eager[1], *eager[2]], [got[0], *got[1], *got[2]]):
        torch.testing.assert_close(a, b)


def test_fx_and_export_see_one_operator():
    model = _model().eval()
    x = torch.randn(2, 3, 6, 5)
    with kernels.backend("fast"):
        exported = torch.export.export(model, (x,))
        targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
        assert targets.count("normlab.apply.default") == 2, targets
        torch.testing.assert_close(exported.module()(x), model(x))
        model.train()
        # make_fx: the fx graph of a call, traced with tensors (symbolic_trace cannot pass the shape checks)
        gm = make_fx(lambda t: kernels.batch_norm_train(t, None, None, 1e-5)[0])(x)
    assert [str(n.target) for n in gm.graph.nodes].count("normlab.batch_norm_train.default") == 1
