"""Numba kernels for the steps of batch normalization on CPU: statistics, apply, and the fused backward.

Two memory layouts cover every contiguous input (see :mod:`normlab.kernels._layout` for the views):

* ``ncs`` — ``x`` viewed as ``(N, C, S)`` (NCHW and any channel-first rank; ``S`` = product of the trailing dims).
  Each channel is ``N`` contiguous rows of ``S`` values. The training kernels work one (virtual batch, channel)
  at a time on one thread: the statistics pass reads the channel from memory, the apply pass then finds it in L2
  (a 64x64x56x56 float32 channel is 800 KB), so a training step costs about the five tensor passes it must make
  (forward: read x, write y; backward: read dy and x, write dx) instead of eight.
* ``mc`` — ``x`` viewed as ``(M, C)`` with the channel innermost (channels-last, ``(N, C)`` and ``(N, L, C)``
  inputs). Work is split into blocks of rows (all channels), whose per-channel partial results are merged.

Precision. The inner loops run in the input's dtype (float32 SIMD lanes are twice as many as float64 ones, and
these loops are compute-bound once the data is in cache); everything that can cancel is kept out of them:

* statistics are exact-centred, never E[x^2] - E[x]^2: each row chunk (at most ``_CHUNK`` values, in L1) gets its
  mean ``m``, then ``e = sum(x - m)`` and ``q = sum((x - m)^2)`` in a second pass over the same cache lines; the
  chunk's mean is ``m + e/n`` and its centred sum of squares ``q - e^2/n`` (exact correction for the rounding of
  ``m``). Chunks and rows are merged in float64 with Chan et al.'s pairwise formula.
* the apply subtracts the mean first, ``(x - mu32) * a + b'``, with the float32 rounding error of ``mu`` folded
  into ``b'`` in float64: ``x * a + (b - mu * a)`` would cancel when |mean| >> std.
* per-channel coefficients (scale, shift, the backward's k's) are computed in float64.

Argument conventions (one signature per kernel, so numba compiles one specialization per dtype): ``groups``
splits the outermost dim into virtual batches (ghost batch norm); ``mask`` is a uint8 array over positions
(``(N, S)`` or ``(M,)``) or an empty array for "no mask" (masked-out outputs and gradients are 0); ``act`` is 0
(identity), 1 (ReLU) or 2 (LeakyReLU with ``slope``); ``res``/``yo``/``dres`` are the residual epilogue's
arrays (``y = act(bn(x) + res)``), empty when there is none; per-(group, channel) arrays are float64 ``(G, C)``,
except the inputs of ``train_backward_coefficients``/``train_parameter_grads``: the forward's outputs, the weight
and the bias as they are, C-contiguous in the input's dtype (the caller casts), converted to float64 inside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# reassociation lets LLVM vectorize the reductions; no nnan/ninf so that NaN and inf still propagate.
_FM = {"reassoc", "contract", "nsz", "arcp"}

_F = TypeVar("_F", bound=Callable[..., object])


# Typed decorators: numba's njit returns a Dispatcher, which calls like the function it wraps; the cast says so to
# the type checker (the bodies are plain Python it checks as such; numba compiles them on first call).
def _parallel(fn: _F) -> _F:
    """A top-level kernel: compiled with parallel loops (prange), cached on disk, releasing the GIL."""
    return cast(_F, njit(fn, parallel=True, cache=True, fastmath=_FM, nogil=True))


def _inline(fn: _F) -> _F:
    """A helper inlined into the kernels that call it."""
    return cast(_F, njit(fn, fastmath=_FM, cache=True, inline="always"))


def _serial(fn: _F) -> _F:
    """A small serial kernel (no parallel region), cached on disk."""
    return cast(_F, njit(fn, cache=True, fastmath=_FM))


def _plain(fn: _F) -> _F:
    """A serial kernel without fastmath (exact comparisons), cached on disk."""
    return cast(_F, njit(fn, cache=True))

RELU = 1
LEAKY = 2
_CHUNK = 4096  # values per two-pass chunk: 16-32 KB, resident in L1 between the two passes
_BLOCK_VALUES = 8192  # values per block of rows in the channels-last kernels
_BLOCK_ROWS = 256  # and at most this many rows, so that per-channel partial sums in float32 stay short


@_inline
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al. pairwise merge of (count, mean, sum of squared deviations)."""
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)


@_inline
def _split(mu, dtype):
    """``mu`` as (the input dtype's nearest value, the float64 remainder)."""
    hi = dtype.type(mu)
    return hi, mu - np.float64(hi)


# ----------------------------------------------------------------------------------------------------------------
# (N, C, S) layout
# ----------------------------------------------------------------------------------------------------------------


@_inline
def _chunk_moments(r):
    """(mean, centred sum of squares) of a 1-D chunk in two passes over L1, inner loops in r's dtype."""
    T = r.dtype.type
    k = r.shape[0]
    tot = T(0)
    for j in range(k):
        tot += r[j]
    m = T(tot / T(k))
    e, q = T(0), T(0)
    for j in range(k):
        d = r[j] - m
        e += d
        q += d * d
    ef = np.float64(e)
    return np.float64(m) + ef / k, np.float64(q) - ef * ef / k


@_inline
def _chunk_moments_masked(r, msk):
    """(count, mean, centred sum of squares) of the entries of ``r`` where ``msk`` is non-zero.

    Written with selects, not branches, so that LLVM vectorizes it; padded values are selected away before any
    arithmetic (a padded NaN times 0 would still be NaN).
    """
    T = r.dtype.type
    tot, kt = T(0), T(0)
    for j in range(r.shape[0]):
        tot += r[j] if msk[j] else T(0)
        kt += T(1) if msk[j] else T(0)  # counted in the dtype (exact below 2^24), so the loop stays one vector type
    k = int(kt)
    if k == 0:
        return 0.0, 0.0, 0.0
    m = T(tot / T(k))
    e, q = T(0), T(0)
    for j in range(r.shape[0]):
        d = (r[j] - m) if msk[j] else T(0)
        e += d
        q += d * d
    ef = np.float64(e)
    return np.float64(k), np.float64(m) + ef / k, np.float64(q) - ef * ef / k


@_inline
def _ncs_channel_moments(x, mask, n0, n1, c):
    """(count, mean, M2) of x[n0:n1, c, :] (under mask if non-empty), chunk by chunk, merged in float64."""
    S = x.shape[2]
    has_mask = mask.shape[0] > 0
    cnt, mean, m2 = 0.0, 0.0, 0.0
    for n in range(n0, n1):
        row = x[n, c]
        for s0 in range(0, S, _CHUNK):
            s1 = min(S, s0 + _CHUNK)
            if has_mask:
                k, mu, sq = _chunk_moments_masked(row[s0:s1], mask[n, s0:s1])
            else:
                k = np.float64(s1 - s0)
                mu, sq = _chunk_moments(row[s0:s1])
            cnt, mean, m2 = _merge(cnt, mean, m2, k, mu, sq)
    return cnt, mean, m2


@_parallel
def ncs_moments(x, mask, groups, mean, var, count):
    """Per (group, channel) mean, biased variance and count of x (N, C, S) into (G, C) arrays."""
    N, C = x.shape[0], x.shape[1]
    per = N // groups
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        k, mu, m2 = _ncs_channel_moments(x, mask, g * per, (g + 1) * per, c)
        mean[g, c] = mu
        var[g, c] = max(m2 / k, 0.0) if k > 0 else 0.0
        count[g, c] = k


@_inline
def _apply_row(r, o, msk, has_mask, mh, a, b, act, slope, q, has_res):
    """o = act((r - mh) * a + b [+ q]), 0 where the mask is 0; all in r's dtype (q: the residual row)."""
    T = r.dtype.type
    if has_res:  # the residual epilogue: no mask (the caller refuses one)
        if act == RELU:
            for j in range(r.shape[0]):
                v = (r[j] - mh) * a + b + q[j]
                o[j] = v if v > 0 else T(0)
        elif act == LEAKY:
            for j in range(r.shape[0]):
                v = (r[j] - mh) * a + b + q[j]
                o[j] = v if v > 0 else v * slope
        else:
            for j in range(r.shape[0]):
                o[j] = (r[j] - mh) * a + b + q[j]
    elif has_mask:
        for j in range(r.shape[0]):
            v = (r[j] - mh) * a + b
            if act == RELU:
                v = v if v > 0 else T(0)
            elif act == LEAKY:
                v = v if v > 0 else v * slope
            o[j] = v if msk[j] else T(0)
    elif act == RELU:
        for j in range(r.shape[0]):
            v = (r[j] - mh) * a + b
            o[j] = v if v > 0 else T(0)
    elif act == LEAKY:
        for j in range(r.shape[0]):
            v = (r[j] - mh) * a + b
            o[j] = v if v > 0 else v * slope
    else:
        for j in range(r.shape[0]):
            o[j] = (r[j] - mh) * a + b


@_inline
def _ncs_apply_channel(x, y, mask, n0, n1, c, mu, a, b, act, slope, res):
    """Apply to rows n0:n1 of channel c with float64 (mu, a, b): mu split so no cancellation in the dtype."""
    T = x.dtype.type
    mh, ml = _split(mu, x.dtype)
    a_t, b_t, s_t = T(a), T(b - ml * a), T(slope)
    has_mask = mask.shape[0] > 0
    has_res = res.shape[0] > 0
    for n in range(n0, n1):
        _apply_row(x[n, c], y[n, c], mask[n] if has_mask else mask[0:0, 0], has_mask, mh, a_t, b_t, act, s_t,
                   res[n, c] if has_res else x[n, c, 0:0], has_res)


@_parallel
def ncs_apply(x, mask, groups, mean, scale, shift, act, slope, res, y):
    """y = act((x - mean) * scale + shift [+ res]) with (G, C) parameters; 0 at masked positions."""
    N, C = x.shape[0], x.shape[1]
    per = N // groups
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        _ncs_apply_channel(x, y, mask, g * per, (g + 1) * per, c, mean[g, c], scale[g, c], shift[g, c], act, slope,
                           res)


@_inline
def _train_coefficients(mu, v, eps, w, b, renorm, c):
    """(scale, shift, r, d) of one channel: BN's ``w / sqrt(v + eps)`` and ``b``, or batch renormalization's
    ``w r / sqrt(v + eps)`` and ``w d + b`` with r, d clipped from the reference statistics in ``renorm``
    (rows: mean, std, r_max, d_max; Ioffe 2017)."""
    sd = np.sqrt(v + eps)
    if renorm.shape[0] == 0:
        return w / sd, b, 1.0, 0.0
    ref_sd, r_max, d_max = renorm[1, c], renorm[2, c], renorm[3, c]
    r = min(max(sd / ref_sd, 1.0 / r_max), r_max)
    d = min(max((mu - renorm[0, c]) / ref_sd, -d_max), d_max)
    return w * r / sd, w * d + b, r, d


@_plain
def train_backward_coefficients(mean, var, count, rd, weight, bias, eps, mu, scale, shift, coupling, rs):
    """The training backward's per-(group, channel) coefficients in float64, from the forward's outputs in the input's
    dtype (mean, var, count (G, C); rd (2, G, C); weight, bias (C,)): ``mu``, ``scale = w r rs``, ``shift = w d + b``,
    ``coupling = (1/m, 1/(m (var + eps)))`` (0 where m = 0) and ``rs = 1/sqrt(var + eps)``, into the (G, C) / (2, G, C)
    outputs. One call for what is a dozen NumPy operations on arrays of C values (~1 us each)."""
    G, C = mu.shape
    for g in range(G):
        for c in range(C):
            s = 1.0 / np.sqrt(np.float64(var[g, c]) + eps)
            n = np.float64(count[g, c])
            inv = 1.0 / n if n > 0 else 0.0
            w = np.float64(weight[c])
            mu[g, c] = mean[g, c]
            scale[g, c] = w * np.float64(rd[0, g, c]) * s
            shift[g, c] = w * np.float64(rd[1, g, c]) + np.float64(bias[c])
            coupling[0, g, c] = inv
            coupling[1, g, c] = inv * s * s
            rs[g, c] = s


@_plain
def train_parameter_grads(rd, rs, s_dy, s_dyx, dweight, dbias):
    """``dweight = sum_g (r rs sum dy' (x - mean) + d sum dy')`` and ``dbias = sum_g sum dy'`` per channel, summed in
    float64 and written in the outputs' dtype (C,)."""
    G, C = s_dy.shape
    for c in range(C):
        dw, db = 0.0, 0.0
        for g in range(G):
            dw += rd[0, g, c] * rs[g, c] * s_dyx[g, c] + rd[1, g, c] * s_dy[g, c]
            db += s_dy[g, c]
        dweight[c] = dw
        dbias[c] = db


@_serial
def train_coefficients(mean, var, eps, weight, bias, renorm, rd):
    """(scale, shift) per (group, channel) from the statistics (see :func:`_train_coefficients`); r, d into rd."""
    G, C = mean.shape
    scale, shift = np.empty((G, C)), np.empty((G, C))
    for g in range(G):
        for c in range(C):
            a, b, r, d = _train_coefficients(mean[g, c], var[g, c], eps, weight[c], bias[c], renorm, c)
            scale[g, c], shift[g, c] = a, b
            if renorm.shape[0] > 0:
                rd[0, g, c], rd[1, g, c] = r, d
    return scale, shift


@_parallel
def ncs_train_forward(x, mask, groups, weight, bias, eps, renorm, act, slope, res, y, mean, var, count, rd):
    """Fused training forward per (group, channel): statistics, then the apply while the channel is in L2.

    Writes mean, biased var and count (G, C); with a non-empty ``renorm`` (4, C) also r and d into rd (2, G, C).
    A non-empty ``res`` (shaped as x) is added before the activation: ``y = act(bn(x) + res)`` (residual epilogue).
    """
    N, C = x.shape[0], x.shape[1]
    per = N // groups
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        n0, n1 = g * per, (g + 1) * per
        k, mu, m2 = _ncs_channel_moments(x, mask, n0, n1, c)
        v = max(m2 / k, 0.0) if k > 0 else 0.0
        mean[g, c], var[g, c], count[g, c] = mu, v, k
        a, b, r, d = _train_coefficients(mu, v, eps, weight[c], bias[c], renorm, c)
        if renorm.shape[0] > 0:
            rd[0, g, c], rd[1, g, c] = r, d
        _ncs_apply_channel(x, y, mask, n0, n1, c, mu, a, b, act, slope, res)


@_inline
def _reduce_row(d, r, msk, has_mask, mh, a, b, act, slope):
    """(sum d', sum d' (r - mh)) in the dtype; d' = d where the mask is set, times act'(z), z = (r-mh) a + b.

    Selects rather than branches (vectorizable); padded positions are selected away before any arithmetic."""
    T = r.dtype.type
    s1, s2 = T(0), T(0)
    if has_mask:
        for j in range(r.shape[0]):
            xc = (r[j] - mh) if msk[j] else T(0)
            g = d[j] if msk[j] else T(0)
            if act == RELU:
                g = g if xc * a + b > 0 else T(0)
            elif act == LEAKY:
                g = g if xc * a + b > 0 else g * slope
            s1 += g
            s2 += g * xc
    elif act == RELU:
        for j in range(r.shape[0]):
            xc = r[j] - mh
            g = d[j] if xc * a + b > 0 else T(0)
            s1 += g
            s2 += g * xc
    elif act == LEAKY:
        for j in range(r.shape[0]):
            xc = r[j] - mh
            g = d[j] if xc * a + b > 0 else d[j] * slope
            s1 += g
            s2 += g * xc
    else:
        for j in range(r.shape[0]):
            s1 += d[j]
            s2 += d[j] * (r[j] - mh)
    return np.float64(s1), np.float64(s2)


@_inline
def _reduce_row_res(d, yo, r, dq, mh, act, slope):
    """The residual epilogue's reduction: d' = d act'(y) from the output y (y > 0 exactly where the pre-activation
    is, for ReLU and LeakyReLU with slope >= 0), written to dq (the residual's gradient); returns
    (sum d', sum d' (r - mh))."""
    T = r.dtype.type
    s1, s2 = T(0), T(0)
    if act == RELU:
        for j in range(r.shape[0]):
            g = d[j] if yo[j] > 0 else T(0)
            dq[j] = g
            s1 += g
            s2 += g * (r[j] - mh)
    elif act == LEAKY:
        for j in range(r.shape[0]):
            g = d[j] if yo[j] > 0 else d[j] * slope
            dq[j] = g
            s1 += g
            s2 += g * (r[j] - mh)
    else:
        for j in range(r.shape[0]):
            g = d[j]
            dq[j] = g
            s1 += g
            s2 += g * (r[j] - mh)
    return np.float64(s1), np.float64(s2)


@_inline
def _dx_row(d, r, o, msk, has_mask, mh, a, b, k_dy, k_x, k_0, act, slope):
    """o = k_dy d' + k_x (r - mh) + k_0 where the position is valid, 0 where masked (d' as in _reduce_row)."""
    T = r.dtype.type
    if has_mask or act != 0:
        for j in range(r.shape[0]):
            xc = r[j] - mh
            g = d[j]
            if act == RELU:
                g = g if xc * a + b > 0 else T(0)
            elif act == LEAKY:
                g = g if xc * a + b > 0 else g * slope
            v = k_dy * g + k_x * xc + k_0
            if has_mask:
                v = v if msk[j] else T(0)
            o[j] = v
    else:
        for j in range(r.shape[0]):
            o[j] = k_dy * d[j] + k_x * (r[j] - mh) + k_0


@_parallel
def ncs_backward(dy, x, mask, groups, mean, scale, shift, coupling, act, slope, yo, dres, dx, sum_dy, sum_dy_xc):
    """Backward of an apply ``y = act((x - mean) * scale + shift [+ res])``, fused per (group, channel).

    First ``sum_dy = sum dy'`` and ``sum_dy_xc = sum dy' (x - mean)`` (dy' = dy masked by the mask and act'),
    then, while dy and x are in L2, ``dx = scale (dy' - sum_dy / m - (x - mean) sum_dy_xc coupling)``, written
    with ``coupling = 1 / (m (var + eps))`` and ``1/m`` folded in by the caller as below:

    * batch statistics (BN, ghost, masked, renorm): ``coupling[0] = 1/m``, ``coupling[1] = 1 / (m (var + eps))``
      per (group, channel), where m is the number of valid values: the mean and variance depend on x.
    * fixed statistics (eval-mode apply, moving-average BN): coupling = 0, so dx = scale dy'.
    ``coupling`` is (2, G, C).

    Residual epilogue (``yo``, the forward's output, non-empty; no mask): act' is read from ``yo`` and dy' is
    written to ``dres`` (the residual's gradient) in the first sweep, which the dx sweep then reads instead of dy.
    """
    N, C, S = x.shape
    per = N // groups
    has_mask = mask.shape[0] > 0
    has_res = yo.shape[0] > 0
    T = x.dtype.type
    s_t = T(slope)
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        mh, ml = _split(mean[g, c], x.dtype)
        a = scale[g, c]
        a_t, b_t = T(a), T(shift[g, c] - ml * a)
        s1, s2 = 0.0, 0.0
        for n in range(g * per, (g + 1) * per):
            for s0 in range(0, S, _CHUNK):  # chunks: float32 partial sums stay short, merged in float64
                s_1 = min(S, s0 + _CHUNK)
                if has_res:
                    t1, t2 = _reduce_row_res(dy[n, c, s0:s_1], yo[n, c, s0:s_1], x[n, c, s0:s_1],
                                             dres[n, c, s0:s_1], mh, act, s_t)
                else:
                    t1, t2 = _reduce_row(dy[n, c, s0:s_1], x[n, c, s0:s_1],
                                         mask[n, s0:s_1] if has_mask else mask[0:0, 0], has_mask, mh, a_t, b_t, act,
                                         s_t)
                s1 += t1
                s2 += t2
        s2 -= ml * s1  # sum dy' (x - mean) from sum dy' (x - mh)
        sum_dy[g, c], sum_dy_xc[g, c] = s1, s2
        k_x = -a * s2 * coupling[1, g, c]
        k_0 = -a * s1 * coupling[0, g, c] - k_x * ml  # -k_x ml: dx is written with (x - mh)
        k1, k2, k3 = T(a), T(k_x), T(k_0)
        for n in range(g * per, (g + 1) * per):
            if has_res:  # dres holds dy' already
                _dx_row(dres[n, c], x[n, c], dx[n, c], mask[0:0, 0], False, mh, a_t, b_t, k1, k2, k3, 0, s_t)
            else:
                _dx_row(dy[n, c], x[n, c], dx[n, c], mask[n] if has_mask else mask[0:0, 0], has_mask, mh, a_t, b_t,
                        k1, k2, k3, act, s_t)


# ----------------------------------------------------------------------------------------------------------------
# (M, C) layout: channels innermost
# ----------------------------------------------------------------------------------------------------------------


@_plain
def _mc_blocks(M, C, groups):
    """Row blocks (start, stop, group) that never straddle a virtual batch; about _BLOCK_VALUES values each."""
    per = M // groups
    rows = max(1, min(_BLOCK_ROWS, _BLOCK_VALUES // max(C, 1)))
    nb = (per + rows - 1) // rows
    blocks = np.empty((groups * nb, 3), dtype=np.int64)
    for g in range(groups):
        for b in range(nb):
            i = g * nb + b
            blocks[i, 0] = g * per + b * rows
            blocks[i, 1] = min(g * per + (b + 1) * rows, (g + 1) * per)
            blocks[i, 2] = g
    return blocks


@_parallel
def mc_moments(x, mask, groups, mean, var, count):
    """Per (group, channel) mean, biased variance and count of x (M, C) into (G, C) arrays.

    One pass per block of rows (vectorized across channels), in the dtype, on data shifted by the block's first
    valid row K: ``s1 = sum(x - K)``, ``s2 = sum((x - K)^2)``, so the block's mean is ``K + s1/n`` and its M2
    ``s2 - s1^2/n`` (computed in float64). Shifting by a value from the data keeps the cancellation to the
    spread of the block itself (Chan, Golub & LeVeque 1983), not the mean: mean 1e4 / std 1 stays exact to float32
    rounding. (The two-pass form of the (N, C, S) kernels costs three times a sum here, where a block's rows are
    not contiguous per channel.) Blocks are merged in float64 with Chan's formula.
    """
    M, C = x.shape
    blocks = _mc_blocks(M, C, groups)
    B = blocks.shape[0]
    has_mask = mask.shape[0] > 0
    p_cnt = np.zeros(B)
    p_mean = np.zeros((B, C))
    p_m2 = np.zeros((B, C))
    scratch = np.zeros((B, 3, C), dtype=x.dtype)  # allocated outside the parallel region (NRT allocation serializes)
    for i in prange(B):
        r0, r1 = blocks[i, 0], blocks[i, 1]
        shift, s1, s2 = scratch[i, 0], scratch[i, 1], scratch[i, 2]
        k = 0
        for r in range(r0, r1):
            if has_mask and not mask[r]:
                continue
            row = x[r]
            if k == 0:
                shift[:] = row
            k += 1
            for c in range(C):
                d = row[c] - shift[c]
                s1[c] += d
                s2[c] += d * d
        p_cnt[i] = k
        if k == 0:
            continue
        for c in range(C):
            a = np.float64(s1[c])
            p_mean[i, c] = np.float64(shift[c]) + a / k
            p_m2[i, c] = max(np.float64(s2[c]) - a * a / k, 0.0)
    for gc in range(groups * C):  # serial: a few thousand merges; a second parallel region costs more
        g, c = gc // C, gc % C
        cnt, mu, m2 = 0.0, 0.0, 0.0
        for i in range(B):
            if blocks[i, 2] == g:
                cnt, mu, m2 = _merge(cnt, mu, m2, p_cnt[i], p_mean[i, c], p_m2[i, c])
        mean[g, c] = mu
        var[g, c] = max(m2 / cnt, 0.0) if cnt > 0 else 0.0
        count[g, c] = cnt


@_inline
def _mc_split(mean, scale, shift, dtype):
    """Per (group, channel): the mean in the dtype, the scale, and the shift with the mean's rounding folded in,
    as (3, G, C) arrays in the dtype."""
    G, C = mean.shape
    out = np.empty((3, G, C), dtype=dtype)
    for g in range(G):
        for c in range(C):
            hi, lo = _split(mean[g, c], dtype)
            out[0, g, c], out[1, g, c], out[2, g, c] = hi, scale[g, c], shift[g, c] - lo * scale[g, c]
    return out


@_inline
def _mc_apply_row(row, out, mh, a, b, act, slope, q, has_res):
    """out = act((row - mh) * a + b [+ q]) across the channels of one row."""
    T = row.dtype.type
    if has_res:
        for c in range(row.shape[0]):
            v = (row[c] - mh[c]) * a[c] + b[c] + q[c]
            if act == RELU:
                v = v if v > 0 else T(0)
            elif act == LEAKY:
                v = v if v > 0 else v * slope
            out[c] = v
    elif act == RELU:
        for c in range(row.shape[0]):
            v = (row[c] - mh[c]) * a[c] + b[c]
            out[c] = v if v > 0 else T(0)
    elif act == LEAKY:
        for c in range(row.shape[0]):
            v = (row[c] - mh[c]) * a[c] + b[c]
            out[c] = v if v > 0 else v * slope
    else:
        for c in range(row.shape[0]):
            out[c] = (row[c] - mh[c]) * a[c] + b[c]


@_parallel
def mc_apply(x, mask, groups, mean, scale, shift, act, slope, res, y):
    """y = act((x - mean) * scale + shift [+ res]) for x (M, C) with (G, C) parameters; 0 at masked positions."""
    M, C = x.shape
    blocks = _mc_blocks(M, C, groups)
    has_mask = mask.shape[0] > 0
    has_res = res.shape[0] > 0
    split = _mc_split(mean, scale, shift, x.dtype)
    s_t = x.dtype.type(slope)
    for i in prange(blocks.shape[0]):
        g = blocks[i, 2]
        for r in range(blocks[i, 0], blocks[i, 1]):
            if has_mask and not mask[r]:
                y[r, :] = 0
            else:
                _mc_apply_row(x[r], y[r], split[0, g], split[1, g], split[2, g], act, s_t,
                              res[r] if has_res else x[r, 0:0], has_res)


@_parallel
def mc_backward(dy, x, mask, groups, mean, scale, shift, coupling, act, slope, yo, dres, dx, sum_dy, sum_dy_xc):
    """:func:`ncs_backward` for (M, C) tensors: a reduction sweep over row blocks, then the dx sweep."""
    M, C = x.shape
    blocks = _mc_blocks(M, C, groups)
    B = blocks.shape[0]
    has_mask = mask.shape[0] > 0
    has_res = yo.shape[0] > 0
    split = _mc_split(mean, scale, shift, x.dtype)
    s_t = x.dtype.type(slope)
    partial = np.zeros((B, 2, C), dtype=x.dtype)
    for i in prange(B):
        g = blocks[i, 2]
        mh, a, b = split[0, g], split[1, g], split[2, g]
        t1, t2 = partial[i, 0], partial[i, 1]
        for r in range(blocks[i, 0], blocks[i, 1]):
            if has_mask and not mask[r]:
                continue
            row, drow = x[r], dy[r]
            if has_res:  # act' from the output; dy' to the residual's gradient
                yrow, qrow = yo[r], dres[r]
                for c in range(C):
                    d = drow[c]
                    if act == RELU:
                        d = d if yrow[c] > 0 else 0
                    elif act == LEAKY:
                        d = d if yrow[c] > 0 else d * s_t
                    qrow[c] = d
                    t1[c] += d
                    t2[c] += d * (row[c] - mh[c])
            elif act == RELU:
                for c in range(C):
                    xc = row[c] - mh[c]
                    d = drow[c] if xc * a[c] + b[c] > 0 else 0
                    t1[c] += d
                    t2[c] += d * xc
            elif act == LEAKY:
                for c in range(C):
                    xc = row[c] - mh[c]
                    d = drow[c] if xc * a[c] + b[c] > 0 else drow[c] * s_t
                    t1[c] += d
                    t2[c] += d * xc
            else:
                for c in range(C):
                    t1[c] += drow[c]
                    t2[c] += drow[c] * (row[c] - mh[c])
    G = sum_dy.shape[0]
    k = np.empty((3, G, C), dtype=x.dtype)  # k_dy, k_x, k_0 in the dtype
    for gc in range(G * C):  # serial, as in mc_moments
        g, c = gc // C, gc % C
        s1, s2 = 0.0, 0.0
        for i in range(B):
            if blocks[i, 2] == g:
                s1 += np.float64(partial[i, 0, c])
                s2 += np.float64(partial[i, 1, c])
        lo = mean[g, c] - np.float64(x.dtype.type(mean[g, c]))
        s2 -= lo * s1
        sum_dy[g, c], sum_dy_xc[g, c] = s1, s2
        a = scale[g, c]
        k_x = -a * s2 * coupling[1, g, c]
        k[0, g, c], k[1, g, c], k[2, g, c] = a, k_x, -a * s1 * coupling[0, g, c] - k_x * lo
    for i in prange(B):
        g = blocks[i, 2]
        mh, a, b = split[0, g], split[1, g], split[2, g]
        k1, k2, k3 = k[0, g], k[1, g], k[2, g]
        for r in range(blocks[i, 0], blocks[i, 1]):
            row, out = x[r], dx[r]
            drow = dres[r] if has_res else dy[r]
            if has_mask and not mask[r]:
                out[:] = 0
            elif act == RELU and not has_res:
                for c in range(C):
                    xc = row[c] - mh[c]
                    d = drow[c] if xc * a[c] + b[c] > 0 else 0
                    out[c] = k1[c] * d + k2[c] * xc + k3[c]
            elif act == LEAKY and not has_res:
                for c in range(C):
                    xc = row[c] - mh[c]
                    d = drow[c] if xc * a[c] + b[c] > 0 else drow[c] * s_t
                    out[c] = k1[c] * d + k2[c] * xc + k3[c]
            else:
                for c in range(C):
                    out[c] = k1[c] * drow[c] + k2[c] * (row[c] - mh[c]) + k3[c]


@intrinsic
def _address(typingctx, address):
    """An integer address (``Tensor.data_ptr()``) as a pointer ``numba.carray`` can view."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


# The small path's accuracy check (native.torch_train: whether |mean * invstd| > ratio for some channel), on the
# statistics' addresses: it runs on every training step, and reading two tensors through NumPy (.numpy() twice)
# costs ~1 us where this call costs ~0.2 us. One kernel per dtype (the view's dtype is a compile-time constant); the
# caller keeps the tensors alive, contiguous, of ``n`` values.
@_plain
def exceeds_ratio_at_f32(mean_address, invstd_address, n, ratio):
    """Whether |mean * invstd| > ratio for some channel, two contiguous float32 vectors of ``n`` values by address."""
    mean = carray(_address(mean_address), (n,), np.float32)  # type: ignore[call-arg]  # typingctx: numba's
    invstd = carray(_address(invstd_address), (n,), np.float32)
    for c in range(n):
        if abs(mean[c] * invstd[c]) > ratio:
            return True
    return False


@_plain
def exceeds_ratio_at_f64(mean_address, invstd_address, n, ratio):
    """Whether |mean * invstd| > ratio for some channel, two contiguous float64 vectors of ``n`` values by address."""
    mean = carray(_address(mean_address), (n,), np.float64)  # type: ignore[call-arg]  # typingctx: numba's
    invstd = carray(_address(invstd_address), (n,), np.float64)
    for c in range(n):
        if abs(mean[c] * invstd[c]) > ratio:
            return True
    return False
