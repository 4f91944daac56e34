import math

import numpy as np
import pytest
import torch
from _layer_helpers import randomize_affine as _randomize

from normlab import kernels
from normlab import reference as ref
from normlab.nn import BatchLayerNorm, BatchNorm, BatchRenorm, GhostBatchNorm, MovingAverageBatchNorm


def _np(t):
    return t.detach().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------- BatchRenorm
@pytest.mark.parametrize("kernel_backend", ["native", "fast"])
def test_renorm_with_r1_d0_is_batchnorm_over_steps_then_eval(kernel_backend):
    # r = 1, d = 0 is BatchNorm up to rounding: plain BatchNorm runs on torch's fused operator (native path) or on
    # normlab's fused kernel (fast path), renorm on _stats' composite -- so float64 and round-off tolerances.
    exact = dict(rtol=1e-12, atol=1e-12)
    with kernels.backend(kernel_backend):
        brn = _randomize(BatchRenorm(4, r_max=1.0, d_max=0.0, warmup_steps=0, r_max_steps=0, d_max_steps=0,
                                     dtype=torch.float64))
        bn = BatchNorm(4, dtype=torch.float64)
        bn.load_state_dict(brn.state_dict())
        for _ in range(4):
            x = torch.randn(6, 4, 3, dtype=torch.float64) * 2 + 1
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = brn(xa), bn(xb)
            torch.testing.assert_close(ya, yb, **exact)
            g = torch.randn_like(ya)
            ya.backward(g), yb.backward(g)
            torch.testing.assert_close(xa.grad, xb.grad, **exact)
        torch.testing.assert_close(brn.running_var, bn.running_var, **exact)
        brn.eval(), bn.eval()
        x = torch.randn(3, 4, 3, dtype=torch.float64)
        torch.testing.assert_close(brn(x), bn(x), **exact)


def test_renorm_matches_float64_formula_with_clipping_over_steps():
    torch.manual_seed(1)
    rmax, dmax, mom, eps = 1.5, 0.5, 0.3, 1e-5
    brn = _randomize(BatchRenorm(3, eps=eps, momentum=mom, r_max=rmax, d_max=dmax, warmup_steps=0, r_max_steps=0,
                                 d_max_steps=0, dtype=torch.float64))
    gamma, beta = _np(brn.weight), _np(brn.bias)
    rm, rv = np.zeros(3), np.ones(3)
    clipped = 0
    for step in range(5):
        x = torch.randn(8, 3, 2, dtype=torch.float64) * (step + 1) + step  # drifting scale: clipping engages
        x.requires_grad_()
        y = brn(x)
        xn = _np(x)
        mu = xn.mean(axis=(0, 2))
        var = xn.var(axis=(0, 2))
        r_raw = np.sqrt(var + eps) / np.sqrt(rv + eps)
        d_raw = (mu - rm) / np.sqrt(rv + eps)
        r, d = np.clip(r_raw, 1 / rmax, rmax), np.clip(d_raw, -dmax, dmax)
        clipped += int((r != r_raw).sum() + (d != d_raw).sum())
        xhat = (xn - mu[None, :, None]) / np.sqrt(var + eps)[None, :, None]
        want = gamma[None, :, None] * (xhat * r[None, :, None] + d[None, :, None]) + beta[None, :, None]
        np.testing.assert_allclose(_np(y), want, rtol=1e-10, atol=1e-10)
        # r and d are constants: the gradient is BatchNorm's with gamma * r
        dy = np.random.default_rng(step).standard_normal(xn.shape)
        y.backward(torch.from_numpy(dy))
        _, cache = ref.batch_norm_forward(xn, gamma * r, None, eps)
        dx, _, _ = ref.batch_norm_backward(dy, cache)
        np.testing.assert_allclose(_np(x.grad), dx, rtol=1e-8, atol=1e-10)
        rm = ref.running_update(rm, mu, mom)
        rv = ref.running_update(rv, var * 16 / 15, mom)
        np.testing.assert_allclose(_np(brn.running_mean), rm, rtol=1e-12)
        np.testing.assert_allclose(_np(brn.running_var), rv, rtol=1e-12)
    assert clipped > 0  # the test exercised the clipping
    brn.eval()
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    want = ref.batch_norm_inference(_np(x), rm, rv, gamma, beta, eps)
    np.testing.assert_allclose(_np(brn(x)), want, rtol=1e-10)


def test_renorm_warmup_schedule():
    brn = BatchRenorm(2, r_max=3.0, d_max=5.0, warmup_steps=100, r_max_steps=300, d_max_steps=200)
    assert brn.limits(0) == (1.0, 0.0)
    assert brn.limits(99) == (1.0, 0.0)
    assert brn.limits(200) == pytest.approx((2.0, 5.0))
    assert brn.limits(150) == pytest.approx((1.5, 2.5))
    assert brn.limits(10_000) == (3.0, 5.0)
    paper = BatchRenorm(2)
    assert paper.limits(5000) == (1.0, 0.0) and paper.limits(40000) == (3.0, 5.0) and paper.limits(25000)[1] == 5.0


def test_renorm_gradcheck_float64():
    # r and d are constants of the gradient; where they are clipped they are locally constant in fact, so there
    # finite differences must agree with the stop-gradient backward.
    brn = _randomize(BatchRenorm(3, momentum=0.0, r_max=1.2, d_max=0.3, warmup_steps=0, r_max_steps=0,
                                 d_max_steps=0, dtype=torch.float64))
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([5.0, -5.0, 5.0]))
        brn.running_var.copy_(torch.tensor([0.01, 0.01, 100.0]))
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: brn(x), (x, brn.weight, brn.bias))


def test_renorm_gradient_with_unclipped_r_d_treats_them_as_constants():
    # Inside the limits r and d depend on the batch, and the paper's gradient holds them constant, so finite
    # differences in x would not match by design: gradcheck the parameters (r, d do not depend on them), and
    # compare the input gradient with the float64 formula y = gamma * (x_hat * r + d) + beta with r, d detached.
    torch.manual_seed(4)
    brn = _randomize(BatchRenorm(3, momentum=0.0, r_max=3.0, d_max=5.0, warmup_steps=0, r_max_steps=0,
                                 d_max_steps=0, dtype=torch.float64))
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
        brn.running_var.copy_(torch.tensor([4.0, 0.25, 2.5]))
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    mu = x.mean(dim=(0, 2))
    sigma_b = torch.sqrt(x.var(dim=(0, 2), unbiased=False) + brn.eps)
    sigma = torch.sqrt(brn.running_var + brn.eps)
    r, d = (sigma_b / sigma).detach(), ((mu - brn.running_mean) / sigma).detach()
    assert bool(((r - 1).abs() > 0.05).all()) and bool((r < 3.0).all()) and bool((r > 1 / 3.0).all())
    assert bool((d.abs() > 0.01).all()) and bool((d.abs() < 5.0).all())  # unclipped and far from r=1, d=0
    assert torch.autograd.gradcheck(lambda w, b: brn(x.detach()), (brn.weight, brn.bias))
    view = lambda t: t[None, :, None]  # noqa: E731
    want = view(brn.weight) * ((x - view(mu)) / view(sigma_b) * view(r) + view(d)) + view(brn.bias)
    got = brn(x)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    (dx_got,) = torch.autograd.grad(got, x, g)
    (dx_want,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(dx_got, dx_want)


def test_renorm_state_dict_round_trip_and_errors():
    a = _randomize(BatchRenorm(3))
    a(torch.randn(4, 3))
    b = BatchRenorm(3)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == set(torch.nn.BatchNorm1d(3).state_dict())
    a.eval(), b.eval()
    x = torch.randn(4, 3)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match=r"BatchRenorm: r_max must be >= 1, got 0.5"):
        BatchRenorm(3, r_max=0.5)
    with pytest.raises(ValueError, match=r"BatchRenorm: needs running statistics"):
        BatchRenorm(3, track_running_stats=False)
    with pytest.raises(ValueError, match=r"BatchRenorm\(3\): expected 3 channels on axis 1"):
        BatchRenorm(3)(torch.randn(4, 2))


# ------------------------------------------------------------------------------------------- GhostBatchNorm
def test_ghost_normalizes_each_virtual_batch_and_tracks_whole_batch():
    gbn = _randomize(GhostBatchNorm(3, virtual_batch_size=4, momentum=0.2))
    whole = torch.nn.BatchNorm2d(3, momentum=0.2)
    for _ in range(3):
        x = torch.randn(12, 3, 2, 2) * 3 - 1
        y = gbn(x)
        for k in range(3):
            chunk = x[4 * k: 4 * k + 4]
            want = torch.nn.functional.batch_norm(chunk, None, None, gbn.weight, gbn.bias, True, 0.0, gbn.eps)
            torch.testing.assert_close(y[4 * k: 4 * k + 4], want)
        whole(x)
    torch.testing.assert_close(gbn.running_mean, whole.running_mean)
    torch.testing.assert_close(gbn.running_var, whole.running_var)
    gbn.eval(), whole.eval()
    x = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(gbn(x), whole(x) * gbn.weight[:, None, None] + gbn.bias[:, None, None])


def test_ghost_with_virtual_batch_of_whole_batch_is_batchnorm():
    gbn = _randomize(GhostBatchNorm(3, virtual_batch_size=8))
    bn = BatchNorm(3)
    bn.load_state_dict(gbn.state_dict())
    x = torch.randn(8, 3)
    torch.testing.assert_close(gbn(x), bn(x), rtol=0, atol=0)


def test_ghost_remainder_rule_and_channels_last():
    gbn = GhostBatchNorm(3, virtual_batch_size=4, axis=-1)
    x = torch.randn(10, 5, 3)  # virtual batches of 4, 4 and 2 samples
    y = gbn(x)
    last = torch.nn.functional.batch_norm(x[8:].reshape(-1, 3), None, None, training=True).reshape(2, 5, 3)
    torch.testing.assert_close(y[8:], last)
    with pytest.raises(ValueError, match=r"GhostBatchNorm\(3\): the last virtual batch of a batch of 9 .* holds 1 sample"):
        GhostBatchNorm(3, virtual_batch_size=4)(torch.randn(9, 3))
    with pytest.raises(ValueError, match=r"virtual_batch_size must be a positive int, got 0"):
        GhostBatchNorm(3, virtual_batch_size=0)


def test_ghost_gradcheck_float64():
    gbn = _randomize(GhostBatchNorm(2, virtual_batch_size=3, dtype=torch.float64))
    x = torch.randn(6, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: gbn(x), (x, gbn.weight, gbn.bias))


# ----------------------------------------------------------------------------------- MovingAverageBatchNorm
def _mabn_reference(xs, dys, gamma, beta, eps, mom, m, warmup, renorm_warmup, rmax):
    """Independent float64 transcription of MABN (Yan et al. 2020, authors' algorithm), (N, C, L) inputs."""
    C = gamma.shape[0]
    x2_hist, gz_hist, rv = np.zeros((m, C)), np.zeros((m, C)), np.ones(C)
    outs = []
    for it, (x, dy) in enumerate(zip(xs, dys), start=1):
        x2 = (x**2).mean(axis=(0, 2))
        x2_hist[it % m] = x2
        avg = it > m and it >= warmup
        var = x2_hist.mean(axis=0) if avg else x2
        z = x / np.sqrt(var + eps)[None, :, None]
        r = np.ones(C) if it <= renorm_warmup else np.clip(np.sqrt(var + eps) / np.sqrt(rv + eps), 1 / rmax, rmax)
        y = gamma[None, :, None] * r[None, :, None] * z + beta[None, :, None]
        rv = (1 - mom) * rv + mom * var
        g = dy * gamma[None, :, None] * r[None, :, None]
        gz = (g * z).mean(axis=(0, 2))
        gz_hist[it % m] = gz
        psi = gz_hist.mean(axis=0) if avg else gz
        dx = (g - z * psi[None, :, None]) / np.sqrt(var + eps)[None, :, None]
        outs.append((y, dx, rv.copy()))
    return outs


def test_mabn_matches_float64_transcription_through_all_phases_then_eval():
    eps, mom, m, warmup, renorm_warmup, rmax = 1e-5, 0.1, 3, 2, 5, 1.3
    layer = _randomize(MovingAverageBatchNorm(2, eps=eps, momentum=mom, buffer_size=m, warmup_iters=warmup,
                                              renorm_warmup_iters=renorm_warmup, r_max=rmax, dtype=torch.float64))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 2, 3)) * (1 + 0.5 * k) + 0.2 for k in range(9)]
    dys = [rng.standard_normal((2, 2, 3)) for _ in range(9)]
    want = _mabn_reference(xs, dys, _np(layer.weight), _np(layer.bias), eps, mom, m, warmup, renorm_warmup, rmax)
    for x, dy, (y_ref, dx_ref, rv_ref) in zip(xs, dys, want):
        xt = torch.from_numpy(x).requires_grad_()
        y = layer(xt)
        y.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(_np(y), y_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(_np(xt.grad), dx_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(_np(layer.running_var), rv_ref, rtol=1e-12)
    layer.eval()
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    want = _np(layer.weight)[None, :, None] * _np(x) / np.sqrt(want[-1][2] + eps)[None, :, None] + _np(layer.bias)[None, :, None]
    np.testing.assert_allclose(_np(layer(x)), want, rtol=1e-10)


def test_mabn_warmup_gradient_is_exact_gradcheck():
    layer = _randomize(MovingAverageBatchNorm(2, warmup_iters=10**9, renorm_warmup_iters=10**9, dtype=torch.float64))
    x = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, layer.weight, layer.bias))


def test_mabn_batch_size_one_state_dict_and_errors():
    layer = MovingAverageBatchNorm(3, buffer_size=4)
    layer(torch.randn(1, 3))  # batch size 1 on (N, C): the second moment is defined
    b = MovingAverageBatchNorm(3, buffer_size=4)
    b.load_state_dict(layer.state_dict())
    torch.testing.assert_close(b.x2_history, layer.x2_history)
    assert {"x2_history", "gz_history", "running_var", "num_batches_tracked"} <= set(layer.state_dict())
    with pytest.raises(ValueError, match=r"MovingAverageBatchNorm: buffer_size must be a positive int, got 0"):
        MovingAverageBatchNorm(3, buffer_size=0)
    with pytest.raises(ValueError, match=r"MovingAverageBatchNorm\(3\): expected 3 channels"):
        layer(torch.randn(2, 4))


# ------------------------------------------------------------------------------------------- BatchLayerNorm
def _bln_formula(x, mean_b, var_b, gamma, beta, eps, B):
    C = x.shape[1]
    x_b = (x - mean_b) / np.sqrt(var_b + eps)
    mu_l = x.mean(axis=1, keepdims=True)
    var_l = x.var(axis=1, keepdims=True)
    x_f = (x - mu_l) / np.sqrt(var_l + eps)
    return gamma * ((1 / B - 1e-4) * x_f + (1 - 1 / B - 1e-4) * x_b) / math.sqrt(C) + beta


def test_bln_matches_paper_equation_train_and_eval():
    layer = _randomize(BatchLayerNorm(5, dtype=torch.float64))
    gamma, beta = _np(layer.weight), _np(layer.bias)
    means, vars_ = [], []
    for _ in range(3):
        x = torch.randn(4, 5, dtype=torch.float64) * 2 + 1
        xn = _np(x)
        np.testing.assert_allclose(
            _np(layer(x)), _bln_formula(xn, xn.mean(0), xn.var(0), gamma, beta, 1e-3, 4), rtol=1e-10
        )
        means.append(xn.mean(0)), vars_.append(xn.var(0) * 4 / 3)
    # momentum=None: the running statistics are the average of the batches' (unbiased variance), as the paper
    np.testing.assert_allclose(_np(layer.running_mean), np.mean(means, 0), rtol=1e-10)
    np.testing.assert_allclose(_np(layer.running_var), np.mean(vars_, 0), rtol=1e-10)
    layer.eval()
    x = torch.randn(1, 5, dtype=torch.float64)  # eval uses the training B (4), not this batch's 1
    want = _bln_formula(_np(x), np.mean(means, 0), np.mean(vars_, 0), gamma, beta, 1e-3, 4)
    np.testing.assert_allclose(_np(layer(x)), want, rtol=1e-10)


def test_bln_batch_size_one_is_nearly_layernorm_and_4d_shape():
    layer = BatchLayerNorm(6, scale_by_sqrt_features=False)
    x = torch.randn(1, 6)
    want = (1 - 1e-4) * torch.nn.functional.layer_norm(x, (6,), eps=1e-3)
    torch.testing.assert_close(layer(x), want)
    assert BatchLayerNorm(6)(torch.randn(2, 6, 3, 3)).shape == (2, 6, 3, 3)


def test_bln_gradcheck_float64():
    layer = _randomize(BatchLayerNorm(3, dtype=torch.float64))
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, layer.weight, layer.bias))


def test_bln_state_dict_round_trip_and_errors():
    a = _randomize(BatchLayerNorm(3))
    a(torch.randn(4, 3))
    b = BatchLayerNorm(3)
    b.load_state_dict(a.state_dict())
    assert int(b.train_batch_size) == 4
    a.eval(), b.eval()
    x = torch.randn(2, 3)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match=r"BatchLayerNorm: batch_size must be a positive int or None, got 0"):
        BatchLayerNorm(3, batch_size=0)
    with pytest.raises(ValueError, match=r"BatchLayerNorm\(3\): the channel axis cannot be the batch axis 0"):
        BatchLayerNorm(3, axis=0)(torch.randn(3, 4))


def test_ghost_single_virtual_batch_stays_local_when_synchronized(monkeypatch):
    """A batch no larger than one virtual batch must still be normalized with its own (local) statistics when the
    layer is synchronized; only the running statistics pool. The other process is faked by a fixed batch."""
    from normlab import _stats

    torch.manual_seed(0)
    other = torch.randn(5, 3, 4, dtype=torch.float64) * 3 + 2
    calls = []

    def fake_all_merge(stats, group=None):
        calls.append(group)
        theirs = _stats.moments(other, (0, 2))
        counts = torch.tensor([[float(stats.count)], [float(theirs.count)]], dtype=torch.float64)
        pooled = _stats.merge_moments(torch.stack([stats.mean, theirs.mean]), torch.stack([stats.var, theirs.var]), counts)
        return _stats.Moments(pooled.mean, pooled.var, int(stats.count) + theirs.count)

    # the collective lives in _stats (beside merge_moments) since issue 15
    monkeypatch.setattr(_stats, "all_merge_moments", fake_all_merge)
    gbn = GhostBatchNorm(3, virtual_batch_size=8, momentum=1.0).double()
    gbn.sync_statistics = True
    x = torch.randn(4, 3, 4, dtype=torch.float64)
    y = gbn(x)
    bn = BatchNorm(3).double()
    torch.testing.assert_close(y, bn(x))  # local statistics: BatchNorm on this process's batch alone
    assert calls  # ... and the running statistics were pooled
    both = torch.cat([x, other]).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(gbn.running_mean, both.mean(dim=1))
    torch.testing.assert_close(gbn.running_var, both.var(dim=1, unbiased=True))


@pytest.mark.parametrize("build, what", [
    (lambda v: BatchNorm(v), "num_features"),
    (lambda v: GhostBatchNorm(3, v), "virtual_batch_size"),
    (lambda v: MovingAverageBatchNorm(3, buffer_size=v), "buffer_size"),
    (lambda v: BatchLayerNorm(3, batch_size=v), r"batch_size must be a positive int or None"),
])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_positive_int_arguments_share_one_check(build, what, bad):
    what = what if " " in what else f"{what} must be a positive int"
    with pytest.raises(ValueError, match=rf"\w+: {what}, got {bad!r}"):
        build(bad)


@pytest.mark.parametrize("build, what", [
    (lambda v: BatchRenorm(3, warmup_steps=v), "warmup_steps"),
    (lambda v: MovingAverageBatchNorm(3, renorm_warmup_iters=v), "renorm_warmup_iters"),
])
@pytest.mark.parametrize("bad", [-1, 2.0, True])
def test_non_negative_int_arguments_share_one_check(build, what, bad):
    with pytest.raises(ValueError, match=rf"{what} must be a non-negative int, got {bad!r}"):
        build(bad)
