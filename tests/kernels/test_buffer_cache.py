"""The kernels' output buffer cache: reuse only after an output dies, same strides, limits, and no stale data."""

from __future__ import annotations

import gc

import pytest
import torch

from normlab import kernels
from normlab.kernels import _buffer_cache

needs_numba = pytest.mark.skipif(not kernels.numba_available(), reason="numba (the kernels extra) is not installed")
BIG = (4, 8, 128, 128)  # 2 MB of float32: above MIN_BYTES


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.delenv(_buffer_cache.ENV_VAR, raising=False)
    _buffer_cache.empty_cache()
    yield
    _buffer_cache.empty_cache()


def _address(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_buffer_is_reused_only_after_its_output_dies():
    x = torch.randn(BIG)
    a = _buffer_cache.empty_like(x)
    a_ptr = _address(a)
    b = _buffer_cache.empty_like(x)
    assert _address(b) != a_ptr  # a is alive: never handed out twice
    view = a[1:]
    del a
    gc.collect()
    c = _buffer_cache.empty_like(x)
    assert _address(c) != a_ptr  # a view still holds a's memory
    del view
    gc.collect()
    d = _buffer_cache.empty_like(x)
    assert _address(d) == a_ptr


def test_same_shape_dtype_and_strides_as_torch_empty_like():
    for fmt in (torch.contiguous_format, torch.channels_last):
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(BIG, dtype=dtype).contiguous(memory_format=fmt)
            out = _buffer_cache.empty_like(x)
            ref = torch.empty_like(x)
            assert (out.shape, out.dtype, out.stride()) == (ref.shape, ref.dtype, ref.stride())
            assert out._base is None  # a tensor of its own (custom ops may not return views)


def test_small_tensors_and_disabled_cache_use_torch(monkeypatch):
    small = torch.randn(8, 8)
    s = _buffer_cache.empty_like(small)
    del s
    gc.collect()
    assert _buffer_cache.cache_info()["free_buffers"] == 0
    monkeypatch.setenv(_buffer_cache.ENV_VAR, "0")
    misses = _buffer_cache.cache_info()["misses"]
    a = _buffer_cache.empty_like(torch.randn(BIG))
    del a
    gc.collect()
    assert _buffer_cache.cache_info()["free_buffers"] == 0 and _buffer_cache.cache_info()["misses"] == misses


def test_limit_drops_the_oldest_free_buffers(monkeypatch):
    monkeypatch.setenv(_buffer_cache.ENV_VAR, "5")  # 5 MB: room for two 2 MB buffers
    outs = [_buffer_cache.empty_like(torch.randn(BIG)) for _ in range(4)]
    del outs
    gc.collect()
    info = _buffer_cache.cache_info()
    assert info["free_buffers"] == 2 and info["free_bytes"] <= info["limit_bytes"]
    monkeypatch.setenv(_buffer_cache.ENV_VAR, "lots")
    with pytest.raises(ValueError, match=r"NORMLAB_BUFFER_CACHE_MB: expected a number of megabytes, got 'lots'"):
        _buffer_cache.empty_like(torch.randn(BIG))


@needs_numba
def test_reused_buffers_give_the_same_results():
    """Steps reusing cached buffers (old contents in them) equal a first step on fresh memory."""
    torch.manual_seed(0)
    x = (torch.randn(BIG) * 3 + 1).requires_grad_()
    w, b = torch.rand(8) + 0.5, torch.randn(8)
    dy = torch.randn(BIG)
    hits = _buffer_cache.cache_info()["hits"]
    with kernels.backend("fast"):
        results = []
        for _ in range(3):
            y, _ = kernels.batch_norm_train(x, w, b, 1e-5)
            (dx,) = torch.autograd.grad(y, x, dy)
            results.append((y.detach().clone(), dx.clone()))
            del y, dx
            gc.collect()
    assert _buffer_cache.cache_info()["hits"] - hits >= 4  # y and dx of the second and third step
    for y, dx in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(dx, results[0][1], rtol=0, atol=0)
