"""A cache of large output buffers for the kernels, so a training loop does not page-fault every step.

Why: torch's CPU allocator hands large tensors to glibc, which maps fresh pages for anything above its mmap
threshold (at most 32 MB, often much less after a trim) and unmaps them on free. Every fresh page faults on first
touch; on this project's 2-core machine that costs ~12 ms for a 51 MB tensor (64x64x56x56 float32), five times
the ~2.3 ms of copying that tensor. BN writes two such tensors per step (y forward, dx backward), so the faults
cost more than the arithmetic. (torch's CUDA path has a caching allocator for the same reason; its CPU path has
none.)

How: a buffer is a NumPy byte array; an output is a NumPy view of it wrapped by ``torch.from_numpy``. When torch
frees the tensor it drops the view, a ``weakref.finalize`` on the view returns the buffer to the free list, and
the next output of the same size reuses its pages. Only buffers of at least :data:`MIN_BYTES` are cached;
free buffers above the limit (``NORMLAB_BUFFER_CACHE_MB``, default 512; 0 turns the cache off) are dropped,
oldest first. :func:`empty_cache` releases every free buffer. Buffers in use are never touched: a buffer is
free only once nothing, not even a view, refers to its output.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

ENV_VAR = "NORMLAB_BUFFER_CACHE_MB"
DEFAULT_LIMIT_MB = 512
MIN_BYTES = 1 << 20
_GRAIN = 1 << 16  # sizes are rounded up to 64 KB, so the same shape always maps to the same free list

_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


class BufferCache:
    """Free buffers by rounded size; ``take`` one or allocate, get it back when its output dies."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a finalizer may run inside take() when a GC pass triggers
        self._free: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._free_bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def limit_bytes() -> int:
        raw = os.environ.get(ENV_VAR, "").strip()
        try:
            mb = float(raw) if raw else DEFAULT_LIMIT_MB
        except ValueError:
            raise ValueError(f"environment variable {ENV_VAR}: expected a number of megabytes, got {raw!r}") from None
        return int(max(mb, 0.0) * (1 << 20))

    def take(self, nbytes: int) -> np.ndarray:
        size = -(-nbytes // _GRAIN) * _GRAIN
        with self._lock:
            bufs = self._free.get(size)
            if bufs:
                buf = bufs.pop()
                self._free_bytes -= size
                if not bufs:
                    del self._free[size]
                self.hits += 1
                return buf
            self.misses += 1
        return np.empty(size, dtype=np.uint8)

    def give_back(self, buf: np.ndarray) -> None:
        size = buf.nbytes
        limit = self.limit_bytes()
        with self._lock:
            if size > limit:
                return
            self._free.setdefault(size, []).append(buf)
            self._free.move_to_end(size)
            self._free_bytes += size
            while self._free_bytes > limit:  # drop the least recently returned sizes first
                old_size, old = next(iter(self._free.items()))
                old.pop(0)
                self._free_bytes -= old_size
                if not old:
                    del self._free[old_size]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._free_bytes = 0

    def info(self) -> dict:
        with self._lock:
            return {"free_bytes": self._free_bytes, "free_buffers": sum(map(len, self._free.values())),
                    "hits": self.hits, "misses": self.misses, "limit_bytes": self.limit_bytes()}


CACHE = BufferCache()


def empty_like(t: Tensor) -> Tensor:
    """``torch.empty_like(t)`` (same shape, dtype and strides; ``t`` dense, on CPU) from the cache when it pays."""
    nbytes = t.numel() * t.element_size()
    if nbytes < MIN_BYTES or t.dtype not in _NUMPY or CACHE.limit_bytes() < nbytes:
        return torch.empty_like(t)
    strides = t.stride()
    order = sorted(range(t.ndim), key=lambda d: -strides[d])  # memory order, outermost first
    buf = CACHE.take(nbytes)
    arr = buf[:nbytes].view(_NUMPY[t.dtype]).reshape([t.shape[d] for d in order])
    weakref.finalize(arr, CACHE.give_back, buf)
    base = torch.from_numpy(arr)
    if order == list(range(t.ndim)):
        return base
    # same storage with t's strides, as a tensor of its own (not a view: custom ops may not return views)
    return torch.empty(0, dtype=t.dtype).set_(base.untyped_storage(), 0, t.shape, t.stride())


def empty_cache() -> None:
    """Release every cached free buffer to the system (buffers in use are unaffected)."""
    CACHE.clear()


def cache_info() -> dict:
    """``free_bytes``, ``free_buffers``, ``hits``, ``misses`` and ``limit_bytes`` of the buffer cache."""
    return CACHE.info()
