"""The dispatch setting, and the layers built on functional.batch_norm giving the same results on both paths."""

from __future__ import annotations

import pytest
import torch

from normlab import functional as F
from normlab import kernels
from normlab.kernels import dispatch
from normlab.nn import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchRenorm,
    GhostBatchNorm,
    MaskedBatchNorm,
    MovingAverageBatchNorm,
)

needs_numba = pytest.mark.skipif(not kernels.numba_available(), reason="numba (the kernels extra) is not installed")


@pytest.fixture(autouse=True)
def _no_override():
    """Every test starts and ends without a set_backend() override."""
    dispatch.set_backend(None)
    yield
    dispatch.set_backend(None)


def test_env_variable_and_override(monkeypatch):
    monkeypatch.setenv("NORMLAB_KERNELS", "native")
    assert kernels.get_backend() == "native"
    monkeypatch.setenv("NORMLAB_KERNELS", " Auto ")
    assert kernels.get_backend() == "auto"
    monkeypatch.delenv("NORMLAB_KERNELS")
    assert kernels.get_backend() == "auto"
    kernels.set_backend("native")
    monkeypatch.setenv("NORMLAB_KERNELS", "auto")
    assert kernels.get_backend() == "native"  # the function wins over the environment


def test_bad_names_raise(monkeypatch):
    with pytest.raises(ValueError, match=r"set_backend: expected one of auto, fast, native, got 'numba'"):
        kernels.set_backend("numba")
    monkeypatch.setenv("NORMLAB_KERNELS", "fastest")
    with pytest.raises(ValueError, match=r"environment variable NORMLAB_KERNELS: expected one of auto, fast, native, "
                                         r"got 'fastest'"):
        kernels.get_backend()


def test_context_manager_restores_even_on_error():
    kernels.set_backend("native")
    with pytest.raises(RuntimeError, match="inside"):
        with kernels.backend("auto"):
            assert kernels.get_backend() == "auto"
            raise RuntimeError("inside")
    assert kernels.get_backend() == "native"


@needs_numba
def test_decisions():
    big = torch.randn(2, 4, kernels.AUTO_MIN_NUMEL // 8)
    tiny = torch.randn(4, 3)
    with kernels.backend("auto"):
        assert kernels.use_fast(big) and not kernels.use_fast(tiny)
        assert not kernels.use_fast(big.half())  # no half kernels: native (float32 accumulation in _stats)
        assert not kernels.use_fast(big.to(torch.int32))
        assert not kernels.use_fast(torch.randn(0, 3))
        assert not kernels.use_fast(torch.randn(2, 4, kernels.AUTO_MIN_NUMEL, device="meta"))  # not a CPU tensor
    with kernels.backend("fast"):
        assert kernels.use_fast(tiny) and not kernels.use_fast(tiny.bfloat16())
    with kernels.backend("native"):
        assert not kernels.use_fast(big)


@needs_numba
def test_auto_decision_table_per_layout():
    """Each layout takes the kernels under "auto" exactly from its row of the decision table (the sizes are a table,
    not a timing: the test reads the thresholds, so changing a crossover means editing dispatch.AUTO_TABLE)."""
    table = dispatch.AUTO_TABLE
    assert set(table) == {"channel_first", "channels_last", "rows"}

    def at(n_values, make):
        x = make(n_values)
        return x, kernels.use_fast(x, 1)

    cases = {
        "channel_first": lambda n: torch.empty(4, 8, n // 32),  # NCHW-like (N, C, L)
        "channels_last": lambda n: torch.empty(4, n // 64, 4, 4).contiguous(memory_format=torch.channels_last),
        "rows": lambda n: torch.empty(n // 64, 64),  # BatchNorm1d after a Linear layer
    }
    with kernels.backend("auto"):
        for layout, make in cases.items():
            least = table[layout]
            assert least is not None
            x, fast = at(least, make)
            assert dispatch.layout_of(x, 1) == layout and x.numel() == least and fast, layout
            x, fast = at(least // 2, make)
            assert x.numel() < least and not fast, layout
        # (N, L, C) with the channel last is the channels-last row; the MLP's (256, 1024) BatchNorm1d stays on torch
        assert dispatch.layout_of(torch.empty(2, 3, 5), -1) == "channels_last"
        assert not kernels.use_fast(torch.empty(256, 1024), 1)
        assert dispatch.layout_of(torch.empty(3, 5), None) == "channel_first"  # axis unknown
    with kernels.backend("fast"):  # "fast" ignores the table
        assert kernels.use_fast(torch.empty(256, 1024), 1)


@needs_numba
def test_auto_decision_table_never(monkeypatch):
    """A layout whose row is None never takes the kernels under "auto"; "fast" still forces them."""
    monkeypatch.setitem(dispatch.AUTO_TABLE, "rows", None)
    x = torch.empty(1 << 16, 128)
    with kernels.backend("auto"):
        assert not kernels.use_fast(x, 1)
    with kernels.backend("fast"):
        assert kernels.use_fast(x, 1)


def test_numba_missing_means_native(monkeypatch):
    monkeypatch.setattr(dispatch, "_numba_available", False)
    before = kernels.get_backend()
    with pytest.raises(RuntimeError, match=r"set_backend\('fast'\): the kernels need numba, which is not installed"
                       ) as err:
        kernels.set_backend("fast")
    assert "normlab[kernels]" not in str(err.value)  # numba is a plain dependency now, not an extra to ask for
    assert "pip install numba" in str(err.value)
    assert kernels.get_backend() == before  # state unchanged
    assert not kernels.use_fast(torch.randn(64, 64, 32))


def _run_steps(make, shapes, mode, memory_format=None, seed=0):
    """Train-mode steps then an eval step under one backend; outputs, input grads, parameter grads and buffers."""
    torch.manual_seed(seed)
    layer = make()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    outs = []
    with kernels.backend(mode):
        for i, shape in enumerate(shapes):
            g = torch.Generator().manual_seed(100 + i)
            x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1
            if memory_format is not None:
                x = x.contiguous(memory_format=memory_format)
            x.requires_grad_()
            if i == len(shapes) - 1:
                layer.eval()
            y = layer(x)
            y.backward(torch.cos(y))
            assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
            outs += [y.detach(), x.grad]
        outs += [layer.weight.grad, layer.bias.grad, layer.running_mean.clone(), layer.running_var.clone()]
    return outs


LAYERS = [
    (lambda: BatchNorm1d(5, dtype=torch.float64), [(8, 5), (6, 5), (8, 5)], None),
    (lambda: BatchNorm1d(5, momentum=None, dtype=torch.float64), [(4, 5, 7), (3, 5, 7), (2, 5, 7)], None),
    (lambda: BatchNorm2d(3, dtype=torch.float64), [(4, 3, 5, 6), (2, 3, 5, 6), (3, 3, 5, 6)], None),
    (lambda: BatchNorm2d(3, dtype=torch.float64), [(4, 3, 5, 6), (2, 3, 5, 6), (3, 3, 5, 6)], torch.channels_last),
    (lambda: BatchNorm3d(2, dtype=torch.float64), [(2, 2, 3, 4, 5), (3, 2, 3, 4, 5), (2, 2, 3, 4, 5)], None),
    (lambda: BatchNorm(4, axis=-1, dtype=torch.float64), [(3, 7, 4), (2, 7, 4), (3, 7, 4)], None),
    # the variants on the fused kernel: virtual batches, a position mask, batch renormalization
    (lambda: GhostBatchNorm(3, 2, dtype=torch.float64), [(6, 3, 5, 4), (4, 3, 5, 4), (4, 3, 5, 4)], None),
    (lambda: GhostBatchNorm(3, 2, dtype=torch.float64), [(6, 3, 5, 4), (4, 3, 5, 4), (4, 3, 5, 4)],
     torch.channels_last),
    (lambda: GhostBatchNorm(4, 3, axis=-1, dtype=torch.float64), [(6, 5, 4), (3, 5, 4), (6, 5, 4)], None),
    (lambda: _LengthMasked(MaskedBatchNorm(3, dtype=torch.float64)), [(5, 3, 7), (4, 3, 7), (5, 3, 7)], None),
    (lambda: _LengthMasked(MaskedBatchNorm(3, axis=-1, dtype=torch.float64)), [(5, 7, 3), (4, 7, 3), (5, 7, 3)], None),
    (lambda: BatchRenorm(3, r_max=1.2, d_max=0.3, warmup_steps=0, r_max_steps=0, d_max_steps=0, momentum=0.5,
                         dtype=torch.float64), [(4, 3, 5, 6), (5, 3, 5, 6), (6, 3, 5, 6), (3, 3, 5, 6)], None),
    (lambda: BatchRenorm(3, r_max=1.2, d_max=0.3, warmup_steps=0, r_max_steps=0, d_max_steps=0, momentum=0.5,
                         dtype=torch.float64), [(4, 3, 5, 6), (5, 3, 5, 6), (3, 3, 5, 6)], torch.channels_last),
    (lambda: MovingAverageBatchNorm(3, buffer_size=2, warmup_iters=2, renorm_warmup_iters=1, dtype=torch.float64),
     [(2, 3, 5, 6), (2, 3, 5, 6), (3, 3, 5, 6), (2, 3, 5, 6)], None),
]


class _LengthMasked(torch.nn.Module):
    """A MaskedBatchNorm fed lengths N_i = L - (i % 3), padded positions filled with NaN (they must not matter)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.weight, self.bias = layer.weight, layer.bias

    def __getattr__(self, name):
        if name in ("running_mean", "running_var"):
            return getattr(self._modules["layer"], name)
        return super().__getattr__(name)

    def forward(self, x):
        t = 2 if self.layer.axis == 1 else 1
        lengths = torch.tensor([x.shape[t] - i % 3 for i in range(x.shape[0])])
        positions = torch.arange(x.shape[t]).reshape([-1 if d == t else 1 for d in range(x.ndim)])
        padded = positions >= lengths.reshape([-1] + [1] * (x.ndim - 1))
        return self.layer(torch.where(padded, torch.full_like(x, float("nan")), x), lengths=lengths)


@needs_numba
@pytest.mark.parametrize("make,shapes,memory_format", LAYERS)
def test_layers_agree_on_both_paths(make, shapes, memory_format):
    fast = _run_steps(make, shapes, "fast", memory_format)
    native = _run_steps(make, shapes, "native", memory_format)
    for a, b in zip(fast, native):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@needs_numba
@pytest.mark.parametrize("mode", ["fast", "native"])
def test_batchnorm2d_matches_torch_over_steps(mode):
    """Several training steps then eval, float32 channels-last, against torch.nn.BatchNorm2d."""
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.linspace(0.5, 1.5, 6))
            m.bias.copy_(torch.linspace(-1, 1, 6))
    with kernels.backend(mode):
        for step in range(4):
            if step == 3:
                ours.eval(), theirs.eval()
            x = (torch.randn(5, 6, 7, 3) * 3 + 2).contiguous(memory_format=torch.channels_last)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ours(xa), theirs(xb)
            ya.square().sum().backward(), yb.square().sum().backward()
            torch.testing.assert_close(ya, yb, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(xa.grad, xb.grad, atol=5e-4, rtol=1e-4)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-3, rtol=1e-4)


@needs_numba
def test_functional_eval_without_grad_on_fast_path_keeps_buffers():
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    before = (rm.clone(), rv.clone())
    x = torch.randn(4, 3, 5)
    with kernels.backend("fast"):
        y = F.batch_norm(x, rm, rv, training=False)
    with kernels.backend("native"):
        y_native = F.batch_norm(x, rm, rv, training=False)
    torch.testing.assert_close(y, y_native)
    assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])


@needs_numba
def test_jit_tracing_takes_native_path():
    """The ONNX exporter traces with TorchScript, which cannot map normlab's custom ops: stay on torch ops."""
    layer = BatchNorm2d(3).eval()
    with kernels.backend("fast"):
        traced = torch.jit.trace(layer, torch.randn(2, 3, 4, 4))
    assert "normlab::" not in str(traced.graph)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(traced(x), layer(x))


def _at_each_row():
    """(tensor, channel axis) at the "auto" threshold of every layout row: the calls "auto" sends to the kernels."""
    t = dispatch.AUTO_TABLE
    return [(torch.empty(2, 4, t["channel_first"] // 8), 1),
            (torch.empty(2, t["channels_last"] // 8, 4), -1),
            (torch.empty(t["rows"] // 4, 4), 1)]


@needs_numba
@pytest.mark.parametrize("backend", ["fast", "auto"])
def test_tracing_takes_torch_ops_at_every_size(backend):
    """The tracing check comes after the "auto" table (it is the slower test): above every row's threshold, and with
    "fast" at every size, a TorchScript trace still gets False, where the same calls outside it get True."""
    cases = _at_each_row() + [(torch.empty(2, 3, 4, 4), 1)]
    seen = []

    def probe(t):
        seen.extend(kernels.use_fast(x, axis, backward=b) for x, axis in cases for b in (True, False))
        return t * 2

    with kernels.backend(backend):
        outside = [kernels.use_fast(x, axis) for x, axis in cases[:3]]
        torch.jit.trace(probe, torch.ones(1), check_trace=False)  # (the check reruns probe untraced)
        layer = BatchNorm2d(4).train()  # a training forward at the channel-first threshold: torch's operators
        traced = torch.jit.trace(layer, torch.randn(2, 4, dispatch.AUTO_MIN_NUMEL // 64, 8))
    assert outside == [True, True, True]
    assert seen and not any(seen)
    assert "normlab::" not in str(traced.graph)


@needs_numba
@pytest.mark.parametrize("backend", ["fast", "auto"])
def test_onnx_export_takes_torch_ops_above_the_threshold(backend):
    """torch.onnx.export (TorchScript exporter) has no symbol for normlab's ops: use_fast is False inside it."""
    pytest.importorskip("onnx")
    import io
    import warnings

    cases = _at_each_row()
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t):
            seen.extend(kernels.use_fast(x, axis) for x, axis in cases)
            return t * 2

    with kernels.backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        assert all(kernels.use_fast(x, axis) for x, axis in cases)
        torch.onnx.export(Probe(), (torch.ones(3),), io.BytesIO(), dynamo=False)
    assert len(seen) == len(cases) and not any(seen)


@needs_numba
@pytest.mark.parametrize("mode", ["fast", "native"])
@pytest.mark.parametrize("training", [True, False])
def test_regression_native_path_keeps_large_mean_accuracy(mode, training):
    """Regression: an early native path stepped aside to torch's own batch_norm kernel for speed, which on CPU
    is 9e-4 off at mean 1e4 / std 1 in float32 (training); normlab's paths stay within half an ulp of the float32
    mean (4.9e-4), from float64 statistics (fast) or the float32-rounded mean (native, running stats)."""
    x64 = torch.randn(16, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1e4
    x64 = x64.float().double()  # the float32 input exactly, so only the computation's error is measured
    mean, var = x64.mean((0, 2, 3)), x64.var((0, 2, 3), unbiased=False)
    with kernels.backend(mode):
        y32 = F.batch_norm(x64.float(), mean.float(), var.float(), training=training)
    y64 = (x64 - mean.reshape(1, -1, 1, 1)) / torch.sqrt(var.reshape(1, -1, 1, 1) + 1e-5)
    assert (y32.double() - y64).abs().max().item() < 6e-4


@needs_numba
def test_auto_keeps_fixed_statistics_on_torch_and_uses_the_kernel_when_they_need_a_gradient(monkeypatch):
    """Eval-mode normalization is one pass torch already makes at copy speed: "auto" leaves it there; the apply
    kernel (with its fused backward) is used under "auto" only when the statistics carry a gradient."""
    from normlab.kernels import ops

    calls = []
    real = ops.apply_affine
    monkeypatch.setattr(ops, "apply_affine", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 4, kernels.AUTO_MIN_NUMEL // 8)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    with kernels.backend("auto"):
        y = kernels.normalize(x, mean, var, None, None, 1e-5)
        assert not calls
        mean_g = mean.clone().requires_grad_()
        y_g = kernels.normalize(x, mean_g, var, None, None, 1e-5)
        assert calls
    torch.testing.assert_close(y, y_g.detach())
    with kernels.backend("fast"):
        kernels.normalize(x, mean, var, None, None, 1e-5)
    assert len(calls) == 2
