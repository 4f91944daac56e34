"""How a tensor is handed to the kernels: an (N, C, S) or (M, C) NumPy view over the same memory.

* contiguous, channel axis not last  -> ``ncs``: (product of leading dims, C, product of trailing dims);
* channel innermost in memory (contiguous with ``axis=-1``, or channels-last NHWC/NDHWC strides with
  ``axis=1``, or trailing dims of size 1) -> ``mc``: (every other position, C);
* anything else (transposed, sliced, expanded) is first copied to contiguous memory.

Virtual batches split the outermost dim in both views, so ``groups`` must divide ``x.shape[0]``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

NCS, MC = "ncs", "mc"


class Plan(NamedTuple):
    """Where the channel sits in memory: ``kind`` and the permutation making the tensor contiguous."""

    kind: str
    perm: tuple[int, ...] | None  # None: the tensor is contiguous as it is
    n: int  # outer extent (N for ncs, M for mc)
    c: int
    s: int  # inner extent (1 for mc)


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def plan(x: Tensor, axis: int) -> Plan | None:
    """The view of ``x`` the kernels can use without copying, or None if ``x`` must be made contiguous first."""
    nd = x.ndim
    c = axis % nd
    C = int(x.shape[c])
    if x.is_contiguous():
        s = _prod(x.shape[c + 1 :])
        n = _prod(x.shape[:c])
        if s == 1:
            return Plan(MC, None, n, C, 1)
        return Plan(NCS, None, n, C, s)
    order = tuple(d for d in range(nd) if d != c) + (c,)
    if x.permute(order).is_contiguous():
        return Plan(MC, order, _prod(x.shape) // max(C, 1), C, 1)
    return None


def prepare(x: Tensor, axis: int) -> tuple[Tensor, Plan]:
    """``x`` itself when the kernels can read it in place, else a contiguous copy; and its plan."""
    p = plan(x, axis)
    if p is None:
        x = x.contiguous()
        p = plan(x, axis)
    assert p is not None  # a contiguous tensor always has a plan
    return x, p


def like(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` with exactly the strides of ``ref`` (copied only when they differ, e.g. an expanded gradient)."""
    if t.stride() == ref.stride() and t.dtype == ref.dtype:
        return t
    out = torch.empty_like(ref)
    out.copy_(t)
    return out


def view(t: Tensor, p: Plan) -> np.ndarray:
    """The NumPy array the kernels work on: (N, C, S) for ncs, (M, C) for mc, sharing ``t``'s memory."""
    t = t.detach()
    if p.perm is not None:
        t = t.permute(p.perm)
    a = t.numpy()
    if p.kind == NCS:
        return a.reshape(p.n, p.c, p.s)
    return a.reshape(p.n, p.c)


def mask_view(mask: Tensor, x: Tensor, axis: int, p: Plan) -> np.ndarray:
    """A position mask (size 1 along the channel axis) as uint8 (N, S) for ncs or (M,) for mc."""
    c = axis % x.ndim
    shape = list(x.shape)
    shape[c] = 1
    m = mask.expand(shape)
    if p.perm is not None:
        m = m.permute(p.perm)
    m = m.contiguous()
    m = m.view(torch.uint8) if m.dtype == torch.bool else m.to(torch.uint8)  # a bool is a byte: no copy
    if p.kind == NCS:
        return m.numpy().reshape(p.n, p.s)
    return m.numpy().reshape(p.n)


def empty_mask(p: Plan) -> np.ndarray:
    """The "no mask" argument: an empty array of the rank the kernel expects."""
    return np.empty((0, 0) if p.kind == NCS else (0,), dtype=np.uint8)
