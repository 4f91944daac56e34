"""Numba kernels for the four steps of batch normalization on CPU.

Two memory layouts cover every contiguous input (see :mod:`normlab.kernels.dispatch` for the views):

* ``ncs`` — ``x`` viewed as ``(N, C, S)`` (NCHW and any channel-first rank; ``S`` = product of the trailing dims).
  Each channel is ``N`` contiguous rows of ``S`` values. The training kernels work one (virtual batch, channel)
  at a time on one thread: the statistics pass reads the channel from memory, the apply pass then finds it in L2
  (a 64x64x56x56 float32 channel is 800 KB; dy and x together 1.6 MB, under this machine's 2 MB L2 per core), so a
  training step costs about the five tensor passes it must make (fwd: read x, write y; bwd: read dy and x,
  write dx) instead of eight.
* ``mc`` — ``x`` viewed as ``(M, C)`` with the channel innermost (channels-last, ``(N, C)`` and ``(N, L, C)``
  inputs). Work is split into blocks of rows (all channels), whose per-channel partial results are merged.

Statistics are exact-centred (no E[x^2] - E[x]^2): every row (or block of rows) gets a two-pass mean and sum of
squared deviations while it sits in L1, and the pieces are merged with Chan et al.'s pairwise formula
(``M2 = M2_a + M2_b + delta^2 n_a n_b / n``). Accumulation is float64 for both float32 and float64 input.

Argument conventions (kept to one signature per kernel so that numba compiles one specialization per dtype):
``groups`` splits the batch dim into that many virtual batches (ghost batch norm); ``mask`` is a uint8 array over
positions (``(N, S)`` or ``(M,)``) or an empty array for "no mask"; ``act`` is 0 (identity) or 1 (ReLU), a
runtime flag rather than a specialization; ``scale`` and ``shift`` are per-(group, channel) float64 arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# reassociation lets LLVM vectorize the reductions; no nnan/ninf so that NaN and inf still propagate.
_FM = {"reassoc", "contract", "nsz", "arcp"}
_OPTS = dict(parallel=True, cache=True, fastmath=_FM, nogil=True)

RELU = 1
_ROW_CHUNK = 4096  # values per two-pass chunk: 16-32 KB, resident in L1 between the two passes
_BLOCK_VALUES = 8192  # values per block of rows in the channels-last kernels


@njit(fastmath=_FM, cache=True, inline="always")
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al. pairwise merge of (count, mean, sum of squared deviations)."""
    n = n_a + n_b
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)


# ----------------------------------------------------------------------------------------------------------------
# (N, C, S) layout
# ----------------------------------------------------------------------------------------------------------------


@njit(fastmath=_FM, cache=True)
def _chunk_moments(r):
    """(mean, sum of squared deviations) of a 1-D chunk by two passes (the second one hits L1)."""
    tot = 0.0
    for j in range(r.shape[0]):
        tot += r[j]
    mu = tot / r.shape[0]
    sq = 0.0
    for j in range(r.shape[0]):
        d = r[j] - mu
        sq += d * d
    return mu, sq


@njit(fastmath=_FM, cache=True)
def _chunk_moments_masked(r, m):
    """(count, mean, sum of squared deviations) of the entries of ``r`` where ``m`` is non-zero."""
    tot = 0.0
    k = 0.0
    for j in range(r.shape[0]):
        if m[j]:
            tot += r[j]
            k += 1.0
    if k == 0.0:
        return 0.0, 0.0, 0.0
    mu = tot / k
    sq = 0.0
    for j in range(r.shape[0]):
        if m[j]:
            d = r[j] - mu
            sq += d * d
    return k, mu, sq


@njit(fastmath=_FM, cache=True)
def _ncs_channel_moments(x, mask, n0, n1, c):
    """(count, mean, M2) of x[n0:n1, c, :] (under mask if non-empty), chunk by chunk, merged exactly."""
    S = x.shape[2]
    has_mask = mask.shape[0] > 0
    cnt, mean, m2 = 0.0, 0.0, 0.0
    for n in range(n0, n1):
        row = x[n, c]
        for s0 in range(0, S, _ROW_CHUNK):
            s1 = min(S, s0 + _ROW_CHUNK)
            if has_mask:
                k, mu, sq = _chunk_moments_masked(row[s0:s1], mask[n, s0:s1])
            else:
                k = float(s1 - s0)
                mu, sq = _chunk_moments(row[s0:s1])
            cnt, mean, m2 = _merge(cnt, mean, m2, k, mu, sq)
    return cnt, mean, m2


@njit(**_OPTS)
def ncs_moments(x, mask, groups, mean, var, count):
    """Per (group, channel) mean, biased variance and count of x (N, C, S) into (G, C) arrays."""
    N, C = x.shape[0], x.shape[1]
    per = N // groups
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        k, mu, m2 = _ncs_channel_moments(x, mask, g * per, (g + 1) * per, c)
        mean[g, c] = mu
        var[g, c] = m2 / k if k > 0 else 0.0
        count[g, c] = k


@njit(fastmath=_FM, cache=True)
def _apply_row(r, o, mu, a, b, act):
    if act == RELU:
        for j in range(r.shape[0]):
            v = (r[j] - mu) * a + b
            o[j] = v if v > 0 else 0.0
    else:
        for j in range(r.shape[0]):
            o[j] = (r[j] - mu) * a + b


@njit(**_OPTS)
def ncs_apply(x, groups, mean, scale, shift, act, y):
    """y = act((x - mean) * scale + shift) with (G, C) parameters; parallel over rows (n, c)."""
    N, C = x.shape[0], x.shape[1]
    per = N // groups
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        g = n // per
        _apply_row(x[n, c], y[n, c], mean[g, c], scale[g, c], shift[g, c], act)


@njit(**_OPTS)
def ncs_train_forward(x, groups, weight, bias, eps, act, y, mean, var):
    """Fused training forward: statistics of each (group, channel), then the apply while the channel is in L2."""
    N, C = x.shape[0], x.shape[1]
    per = N // groups
    empty = np.empty((0, 0), dtype=np.uint8)
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        k, mu, m2 = _ncs_channel_moments(x, empty, g * per, (g + 1) * per, c)
        v = m2 / k
        mean[g, c] = mu
        var[g, c] = v
        a = weight[c] / np.sqrt(v + eps)
        for n in range(g * per, (g + 1) * per):
            _apply_row(x[n, c], y[n, c], mu, a, bias[c], act)


@njit(fastmath=_FM, cache=True)
def _reduce_row(d, r, mu, a, b, act):
    """(sum d', sum d' * (r - mu)); d' = d masked by ReLU'(z), z = (r - mu) * a + b recomputed, when act."""
    sdy, sdyx = 0.0, 0.0
    if act == RELU:
        for j in range(r.shape[0]):
            xc = r[j] - mu
            g = d[j] if xc * a + b > 0 else 0.0
            sdy += g
            sdyx += g * xc
    else:
        for j in range(r.shape[0]):
            g = d[j]
            sdy += g
            sdyx += g * (r[j] - mu)
    return sdy, sdyx


@njit(fastmath=_FM, cache=True)
def _dx_row(d, r, o, mu, a, b, k_dy, k_x, k_0, act):
    """o = k_dy * d' + k_x * (r - mu) + k_0 (d' as in _reduce_row)."""
    if act == RELU:
        for j in range(r.shape[0]):
            xc = r[j] - mu
            g = d[j] if xc * a + b > 0 else 0.0
            o[j] = k_dy * g + k_x * xc + k_0
    else:
        for j in range(r.shape[0]):
            o[j] = k_dy * d[j] + k_x * (r[j] - mu) + k_0


@njit(**_OPTS)
def ncs_train_backward(dy, x, groups, mean, var, weight, bias, eps, act, dx, sum_dy, sum_dy_xhat):
    """Fused training backward per (group, channel): the two reductions, then dx while dy and x are in L2.

    With xhat = (x - mu) * r, r = 1 / sqrt(var + eps), m values per (group, channel):
        dx = weight * r * (dy - sum(dy) / m - xhat * sum(dy * xhat) / m)
    ``sum_dy`` and ``sum_dy_xhat`` (G, C) are dbias and dweight before summing over groups.
    """
    N, C, S = x.shape[0], x.shape[1], x.shape[2]
    per = N // groups
    m = float(per * S)
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        mu = mean[g, c]
        r = 1.0 / np.sqrt(var[g, c] + eps)
        a = weight[c] * r
        b = bias[c]
        sdy, sdyx = 0.0, 0.0
        for n in range(g * per, (g + 1) * per):
            s1, s2 = _reduce_row(dy[n, c], x[n, c], mu, a, b, act)
            sdy += s1
            sdyx += s2
        sum_dy[g, c] = sdy
        sum_dy_xhat[g, c] = sdyx * r
        k_x = -a * r * r * sdyx / m
        k_0 = -a * sdy / m
        for n in range(g * per, (g + 1) * per):
            _dx_row(dy[n, c], x[n, c], dx[n, c], mu, a, b, a, k_x, k_0, act)


@njit(**_OPTS)
def ncs_apply_backward(dy, x, groups, mean, scale, shift, act, dx, sum_dy, sum_dy_xc):
    """Backward of ``ncs_apply`` per (group, channel): sum dy' and sum dy' * (x - mean) (dy' = dy masked by the
    recomputed ReLU'), then dx = scale * dy' while the channel's dy and x are still in L2."""
    N, C = x.shape[0], x.shape[1]
    per = N // groups
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        mu, a, b = mean[g, c], scale[g, c], shift[g, c]
        sdy, sdyx = 0.0, 0.0
        for n in range(g * per, (g + 1) * per):
            s1, s2 = _reduce_row(dy[n, c], x[n, c], mu, a, b, act)
            sdy += s1
            sdyx += s2
        sum_dy[g, c] = sdy
        sum_dy_xc[g, c] = sdyx
        for n in range(g * per, (g + 1) * per):
            _dx_row(dy[n, c], x[n, c], dx[n, c], mu, a, b, a, 0.0, 0.0, act)


# ----------------------------------------------------------------------------------------------------------------
# (M, C) layout: channels innermost
# ----------------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _mc_blocks(M, C, groups):
    """Row blocks (start, stop, group) that never straddle a virtual batch; about _BLOCK_VALUES values each."""
    per = M // groups
    rows = max(1, _BLOCK_VALUES // max(C, 1))
    nb = (per + rows - 1) // rows
    blocks = np.empty((groups * nb, 3), dtype=np.int64)
    for g in range(groups):
        for b in range(nb):
            i = g * nb + b
            blocks[i, 0] = g * per + b * rows
            blocks[i, 1] = min(g * per + (b + 1) * rows, (g + 1) * per)
            blocks[i, 2] = g
    return blocks


@njit(**_OPTS)
def mc_moments(x, mask, groups, mean, var, count):
    """Per (group, channel) mean, biased variance and count of x (M, C) into (G, C) arrays."""
    M, C = x.shape
    blocks = _mc_blocks(M, C, groups)
    B = blocks.shape[0]
    has_mask = mask.shape[0] > 0
    p_cnt = np.zeros(B)
    p_mean = np.zeros((B, C))
    p_m2 = np.zeros((B, C))
    for i in prange(B):
        r0, r1 = blocks[i, 0], blocks[i, 1]
        pm, pq = p_mean[i], p_m2[i]
        k = 0.0
        for r in range(r0, r1):
            if has_mask and not mask[r]:
                continue
            k += 1.0
            row = x[r]
            for c in range(C):
                pm[c] += row[c]
        p_cnt[i] = k
        if k == 0.0:
            continue
        for c in range(C):
            pm[c] /= k
        for r in range(r0, r1):
            if has_mask and not mask[r]:
                continue
            row = x[r]
            for c in range(C):
                d = row[c] - pm[c]
                pq[c] += d * d
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        cnt, mu, m2 = 0.0, 0.0, 0.0
        for i in range(B):
            if blocks[i, 2] == g:
                cnt, mu, m2 = _merge(cnt, mu, m2, p_cnt[i], p_mean[i, c], p_m2[i, c])
        mean[g, c] = mu
        var[g, c] = m2 / cnt if cnt > 0 else 0.0
        count[g, c] = cnt


@njit(**_OPTS)
def mc_apply(x, groups, mean, scale, shift, act, y):
    """y = act((x - mean) * scale + shift) for x (M, C) with (G, C) parameters."""
    M, C = x.shape
    blocks = _mc_blocks(M, C, groups)
    for i in prange(blocks.shape[0]):
        g = blocks[i, 2]
        mu, a, b = mean[g], scale[g], shift[g]
        for r in range(blocks[i, 0], blocks[i, 1]):
            row, out = x[r], y[r]
            if act == RELU:
                for c in range(C):
                    v = (row[c] - mu[c]) * a[c] + b[c]
                    out[c] = v if v > 0 else 0.0
            else:
                for c in range(C):
                    out[c] = (row[c] - mu[c]) * a[c] + b[c]


@njit(**_OPTS)
def mc_reduce(dy, x, groups, mean, scale, shift, act, sum_dy, sum_dy_xc):
    """Per (group, channel) sum dy' and sum dy' * (x - mean) for (M, C) tensors."""
    M, C = x.shape
    blocks = _mc_blocks(M, C, groups)
    B = blocks.shape[0]
    p_dy = np.zeros((B, C))
    p_dyx = np.zeros((B, C))
    for i in prange(B):
        g = blocks[i, 2]
        mu, a, b = mean[g], scale[g], shift[g]
        s1, s2 = p_dy[i], p_dyx[i]
        for r in range(blocks[i, 0], blocks[i, 1]):
            row, drow = x[r], dy[r]
            if act == RELU:
                for c in range(C):
                    xc = row[c] - mu[c]
                    d = drow[c] if xc * a[c] + b[c] > 0 else 0.0
                    s1[c] += d
                    s2[c] += d * xc
            else:
                for c in range(C):
                    d = drow[c]
                    s1[c] += d
                    s2[c] += d * (row[c] - mu[c])
    for gc in prange(groups * C):
        g, c = gc // C, gc % C
        t1, t2 = 0.0, 0.0
        for i in range(B):
            if blocks[i, 2] == g:
                t1 += p_dy[i, c]
                t2 += p_dyx[i, c]
        sum_dy[g, c] = t1
        sum_dy_xc[g, c] = t2


@njit(**_OPTS)
def mc_backward_apply(dy, x, groups, mean, scale, shift, k_dy, k_x, k_0, act, dx):
    """dx = k_dy * dy' + k_x * (x - mean) + k_0 for (M, C) tensors with (G, C) coefficients."""
    M, C = x.shape
    blocks = _mc_blocks(M, C, groups)
    for i in prange(blocks.shape[0]):
        g = blocks[i, 2]
        mu, a, b, k1, k2, k3 = mean[g], scale[g], shift[g], k_dy[g], k_x[g], k_0[g]
        for r in range(blocks[i, 0], blocks[i, 1]):
            row, drow, out = x[r], dy[r], dx[r]
            if act == RELU:
                for c in range(C):
                    xc = row[c] - mu[c]
                    d = drow[c] if xc * a[c] + b[c] > 0 else 0.0
                    out[c] = k1[c] * d + k2[c] * xc + k3[c]
            else:
                for c in range(C):
                    out[c] = k1[c] * drow[c] + k2[c] * (row[c] - mu[c]) + k3[c]
