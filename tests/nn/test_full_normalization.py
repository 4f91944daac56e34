"""FullNormalization (Lian & Liu 2019): the estimate in value, the batch's moments in gradient.

The float64 references below are written from the paper's compositional formulation (raw moments m1 = E[x],
m2 = E[x^2], normalization by m1 and m2 - m1^2; SCGD's moving estimate of (m1, m2) in value and the batch's Jacobian
in gradient), not from the layer's centred implementation.
"""

import copy

import numpy as np
import pytest
import torch
from _layer_helpers import randomize_affine

from normlab import kernels
from normlab.nn import BatchNorm, FullNormalization, MaskedBatchNorm, make_norm
from normlab.tools import fold_batchnorm, plan_fold, recalibrate

BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])
F64 = torch.float64


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def _fn_step_reference(x, gamma, beta, m1, m2, alpha, eps, g, axis=1):
    """One FN training step in float64 from the equations: returns (y, dx, dgamma, dbeta, m1', m2').

    x: any rank, channels on ``axis``; m1, m2: the estimate of E[x], E[x^2] before the step; g = dL/dy."""
    x = np.moveaxis(x, axis, -1)
    g = np.moveaxis(g, axis, -1)
    red = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    b1, b2 = x.mean(axis=red), (x * x).mean(axis=red)  # the batch's inner function g_B = (E_B[x], E_B[x^2])
    m1 = (1 - alpha) * m1 + alpha * b1  # SCGD's estimate y_t
    m2 = (1 - alpha) * m2 + alpha * b2
    var = m2 - m1 * m1  # the outer function at the estimate
    s = np.sqrt(var + eps)
    xhat = (x - m1) / s
    y = gamma * xhat + beta
    # gradient: d/dx of f(x; m1, m2) directly, plus the chain through (m1, m2) with the *batch's* Jacobian
    # dm1/dx_i = 1/n, dm2/dx_i = 2 x_i / n (the estimate's value m1 enters the outer derivative dvar = dm2 - 2 m1 dm1)
    dl_dm = (gamma * g * (-1.0 / s)).sum(axis=red)
    dl_dvar = (gamma * g * (x - m1) * (-0.5) * s**-3).sum(axis=red)
    dl_dm1 = dl_dm + dl_dvar * (-2.0 * m1)
    dl_dm2 = dl_dvar
    dx = gamma * g / s + dl_dm1 / n + dl_dm2 * 2.0 * x / n
    dgamma, dbeta = (g * xhat).sum(axis=red), g.sum(axis=red)
    return np.moveaxis(y, -1, axis), np.moveaxis(dx, -1, axis), dgamma, dbeta, m1, m2


def _set_estimate(layer, mean, var, batches_seen):
    with torch.no_grad():
        layer.running_mean.copy_(torch.as_tensor(mean))
        layer.running_var.copy_(torch.as_tensor(var))
        layer.num_batches_tracked.fill_(batches_seen)


# ------------------------------------------------------------------------------------ against the equations
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, axis", [((7, 3, 4), 1), ((6, 5, 3), -1), ((9, 3), 1)])
def test_fn_steps_match_float64_equations_through_warmup(backend, shape, axis):
    # momentum 0.3 with warm-up: alpha_t = 1, 1/2, 1/3, 0.3, 0.3 -- the BN step, the averaging steps, the steady ones
    torch.manual_seed(3)
    eps, mom = 1e-5, 0.3
    layer = randomize_affine(FullNormalization(3, eps=eps, momentum=mom, axis=axis, dtype=F64))
    gamma, beta = _np(layer.weight), _np(layer.bias)
    m1, m2 = np.zeros(3), np.ones(3)  # buffers 0 / 1: E[x^2] = var + mean^2 = 1
    alphas = []
    with kernels.backend(backend):
        for step in range(5):
            x = (torch.randn(*shape, dtype=F64) * (1 + step) + 2 * step - 1).requires_grad_()
            alpha = layer.step_size()
            alphas.append(alpha)
            y = layer(x)
            g = torch.randn_like(y)
            y.backward(g)
            want = _fn_step_reference(_np(x), gamma, beta, m1, m2, alpha, eps, _np(g), axis=axis)
            y_ref, dx_ref, dgamma_ref, dbeta_ref, m1, m2 = want
            np.testing.assert_allclose(_np(y), y_ref, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(_np(x.grad), dx_ref, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(_np(layer.weight.grad), dgamma_ref, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(_np(layer.bias.grad), dbeta_ref, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(_np(layer.running_mean), m1, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(_np(layer.running_var), m2 - m1 * m1, rtol=1e-10, atol=1e-12)
            layer.zero_grad()
        assert alphas == pytest.approx([1.0, 0.5, 1 / 3, 0.3, 0.3])
        assert int(layer.num_batches_tracked) == 5
        layer.eval()  # inference: the estimate
        x = torch.randn(*shape, dtype=F64)
        want = gamma * (np.moveaxis(_np(x), axis, -1) - m1) / np.sqrt(m2 - m1 * m1 + eps) + beta
        np.testing.assert_allclose(_np(layer(x)), np.moveaxis(want, -1, axis), rtol=1e-10, atol=1e-10)


def test_fn_input_gradient_is_the_scgd_estimator_checked_by_finite_differences():
    # gradcheck of the estimator itself: the layer's Jacobian equals the finite-difference Jacobian of
    # G(x) = f(x; c1 + E_B[x], c2 + E_B[x^2]) with constants c making G's value the layer's at x0 (the outer function
    # at the estimate, the batch's inner Jacobian). It is *not* the derivative of the layer's forward map (alpha < 1).
    torch.manual_seed(5)
    layer = randomize_affine(FullNormalization(2, momentum=0.25, warmup=False, dtype=F64))
    _set_estimate(layer, [0.5, -1.0], [2.0, 0.5], 10)
    state = copy.deepcopy(layer.state_dict())
    x0 = torch.randn(4, 2, 3, dtype=F64) * 1.5 + 0.3

    def layer_out(x):
        layer.load_state_dict(state)
        return layer(x)

    jac_layer = torch.autograd.functional.jacobian(layer_out, x0)
    alpha, eps = 0.25, layer.eps
    rm, rv = state["running_mean"], state["running_var"]
    b1 = x0.mean(dim=(0, 2))
    b2 = (x0 * x0).mean(dim=(0, 2))
    m1_hat = (1 - alpha) * rm + alpha * b1
    m2_hat = (1 - alpha) * (rv + rm * rm) + alpha * b2
    c1, c2 = m1_hat - b1, m2_hat - b2
    w, b = layer.weight.detach(), layer.bias.detach()

    def surrogate(x):
        m1 = c1 + x.mean(dim=(0, 2))
        m2 = c2 + (x * x).mean(dim=(0, 2))
        view = lambda t: t[None, :, None]  # noqa: E731
        return view(w) * (x - view(m1)) / torch.sqrt(view(m2 - m1 * m1) + eps) + view(b)

    torch.testing.assert_close(layer_out(x0), surrogate(x0), rtol=1e-12, atol=1e-12)

    def finite_differences(f, x, h=1e-6):
        cols = []
        flat = x.reshape(-1)
        for i in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[i] = h
            cols.append(((f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * h)).reshape(-1))
        return torch.stack(cols, dim=1).reshape(*x.shape, *x.shape)  # (output dims, input dims), as jacobian()

    jac_scgd = finite_differences(surrogate, x0)
    torch.testing.assert_close(jac_layer, jac_scgd, rtol=1e-6, atol=1e-7)
    # and the estimator is not the forward map's derivative (the value sees the batch only with weight alpha)
    jac_forward = finite_differences(layer_out, x0)
    assert float((jac_forward - jac_layer).detach().abs().max()) > 1e-2


def test_fn_gradcheck_float64():
    # alpha = 1 (momentum 1): FN's estimator is the exact derivative, so torch's gradcheck holds for x, gamma, beta;
    # for gamma and beta it holds at any alpha (the statistics do not depend on them).
    exact = randomize_affine(FullNormalization(3, momentum=1.0, dtype=F64))
    state = copy.deepcopy(exact.state_dict())

    def run(layer, saved):
        def f(x, w, b):
            with torch.no_grad():  # the estimate moves at every call: each evaluation starts from the same one
                for name, buf in layer.named_buffers():
                    buf.copy_(saved[name])
            return layer(x)
        return f

    x = torch.randn(5, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(run(exact, state), (x, exact.weight, exact.bias))
    moving = randomize_affine(FullNormalization(3, momentum=0.2, warmup=False, dtype=F64))
    _set_estimate(moving, [0.3, -0.2, 1.0], [0.5, 2.0, 1.5], 7)
    saved = copy.deepcopy(moving.state_dict())
    assert torch.autograd.gradcheck(lambda w, b: run(moving, saved)(x.detach(), w, b), (moving.weight, moving.bias))


# -------------------------------------------------------------------------------------------- BatchNorm limit
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [1, -1])
def test_fn_with_step_size_one_is_batchnorm_over_steps_then_eval(backend, axis):
    # alpha = 1: the estimate is the batch's statistics. Plain BatchNorm runs on torch's fused operator or normlab's
    # fused kernel and FN on the composite normalize, so equality is to float64 round-off (1e-12), for outputs, input
    # and parameter gradients, the buffers (BN with momentum 1 and the biased running variance) and eval.
    exact = dict(rtol=1e-12, atol=1e-12)
    with kernels.backend(backend):
        fn = randomize_affine(FullNormalization(4, momentum=1.0, axis=axis, dtype=F64))
        bn = BatchNorm(4, momentum=1.0, axis=axis, running_var_unbiased=False, dtype=F64)
        bn.load_state_dict(fn.state_dict())
        for step in range(4):
            x = torch.randn(6, 4, 3, dtype=F64) * (2 + step) + step
            if axis == -1:
                x = x.transpose(1, 2).contiguous()
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = fn(xa), bn(xb)
            torch.testing.assert_close(ya, yb, **exact)
            g = torch.randn_like(ya)
            ya.backward(g), yb.backward(g)
            torch.testing.assert_close(xa.grad, xb.grad, **exact)
            torch.testing.assert_close(fn.weight.grad, bn.weight.grad, **exact)
            torch.testing.assert_close(fn.bias.grad, bn.bias.grad, **exact)
            fn.zero_grad(), bn.zero_grad()
            for key, value in bn.state_dict().items():
                torch.testing.assert_close(fn.state_dict()[key], value, **exact, msg=key)
        fn.eval(), bn.eval()
        x = torch.randn(3, 4, 3, dtype=F64)
        if axis == -1:
            x = x.transpose(1, 2).contiguous()
        torch.testing.assert_close(fn(x), bn(x), **exact)


def test_fn_differs_from_batchnorm_when_alpha_below_one():
    # the converse, so that the BN-limit test could fail: with alpha < 1 the output is not BN's
    fn = FullNormalization(3, momentum=0.5, warmup=False, dtype=F64)
    bn = BatchNorm(3, dtype=F64)
    x = torch.randn(8, 3, dtype=F64) * 3 + 2
    assert float((fn(x) - bn(x)).detach().abs().max()) > 0.1


def test_fn_step_size_schedule():
    fn = FullNormalization(2, momentum=0.1)
    assert [fn.step_size(t) for t in (1, 2, 5, 10, 11, 1000)] == pytest.approx([1, 0.5, 0.2, 0.1, 0.1, 0.1])
    assert FullNormalization(2, momentum=0.1, warmup=False).step_size(1) == 0.1
    assert FullNormalization(2, momentum=None).step_size(1000) == pytest.approx(1e-3)
    fn(torch.randn(4, 2))
    assert fn.step_size() == 0.5  # the next batch is the second


# ---------------------------------------------------------------------------------------------------- masks
def test_fn_masked_equals_fn_on_the_valid_positions_and_pads_are_zero():
    torch.manual_seed(2)
    a = randomize_affine(FullNormalization(3, momentum=0.4, axis=-1, dtype=F64))
    b = copy.deepcopy(a)
    for step in range(3):
        x = torch.randn(4, 6, 3, dtype=F64) * 2 + step
        lengths = torch.tensor([6, 2, 4, 5])
        x[1, 2:] = float("nan")  # padded values never enter the arithmetic
        xa = x.clone().requires_grad_()
        ya = a(xa, lengths=lengths)
        valid = torch.cat([x[i, :n] for i, n in enumerate(lengths.tolist())]).clone().requires_grad_()  # (sum L, C)
        yb = b(valid)
        got = torch.cat([ya[i, :n] for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(got, yb, rtol=1e-12, atol=1e-12)
        assert torch.equal(ya[1, 2:], torch.zeros(4, 3, dtype=F64))
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(torch.cat([g[i, :n] for i, n in enumerate(lengths.tolist())]))
        grad_valid = torch.cat([xa.grad[i, :n] for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(grad_valid, valid.grad, rtol=1e-10, atol=1e-12)
        assert torch.equal(xa.grad[1, 2:], torch.zeros(4, 3, dtype=F64))
        for key, value in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[key], value, rtol=1e-12, atol=1e-12, msg=key)
    a.eval()
    x = torch.randn(2, 5, 3, dtype=F64)
    y = a(x, mask=torch.tensor([[True] * 5, [True, True, False, False, False]]))
    assert torch.equal(y[1, 2:], torch.zeros(3, 3, dtype=F64))
    torch.testing.assert_close(y[0], b.eval()(x[0]))


def test_fn_masked_with_step_size_one_is_masked_batchnorm():
    fn = randomize_affine(FullNormalization(3, momentum=1.0, dtype=F64))
    mbn = MaskedBatchNorm(3, momentum=1.0, running_var_unbiased=False, dtype=F64)
    mbn.load_state_dict(fn.state_dict())
    for _ in range(2):
        x = torch.randn(5, 3, 7, dtype=F64)
        mask = torch.rand(5, 7) > 0.4
        mask[:, :2] = True
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fn(xa, mask=mask), mbn(xb, mask=mask)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fn.running_var, mbn.running_var, rtol=1e-12, atol=1e-12)


def test_fn_masked_channel_without_values_keeps_its_estimate_and_bad_masks_raise():
    fn = FullNormalization(2, momentum=0.5, warmup=False, axis=-1)
    x = torch.randn(3, 4, 2)
    with pytest.raises(TypeError, match=r"FullNormalization\(2\): expected a bool mask"):
        fn(x, mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"FullNormalization\(2\): give mask or lengths, not both"):
        fn(x, mask=torch.ones(3, 4, dtype=torch.bool), lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"FullNormalization\(2\): expected a mask of shape \(3, 4\)"):
        fn(x, mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"FullNormalization\(2\): expected more than 1 valid value per channel"):
        fn(x, lengths=torch.tensor([1, 0, 0]))
    assert int(fn.num_batches_tracked) == 0 and torch.equal(fn.running_mean, torch.zeros(2))  # state unchanged
    # a per-channel mask that leaves channel 1 without values in eval is fine; in training it is refused above
    fn.eval()
    y = fn(x, mask=torch.tensor([True, False]).expand(3, 4, 2))
    assert torch.equal(y[..., 1], torch.zeros(3, 4))


# ------------------------------------------------------------------------------ errors, state, tools, registry
def test_fn_bad_arguments_and_inputs_raise_clearly_and_leave_state_unchanged():
    with pytest.raises(ValueError, match=r"FullNormalization: needs running statistics"):
        FullNormalization(3, track_running_stats=False)
    with pytest.raises(ValueError, match=r"FullNormalization: running_var_unbiased=True is not supported"):
        FullNormalization(3, running_var_unbiased=True)
    with pytest.raises(ValueError, match=r"FullNormalization: momentum must lie in \[0, 1\]"):
        FullNormalization(3, momentum=1.5)
    fn = FullNormalization(3)
    fn(torch.randn(4, 3))
    before = copy.deepcopy(fn.state_dict())
    bad = [
        (torch.randn(4, 2), ValueError, r"FullNormalization\(3\): expected 3 channels on axis 1"),
        (torch.ones(4, 3, dtype=torch.int64), TypeError, r"FullNormalization\(3\): expected a floating-point input"),
        (torch.randn(1, 3), ValueError, r"FullNormalization\(3\): expected more than 1 value per channel when"),
        (torch.randn(3), ValueError, r"FullNormalization\(3\): expected an input of rank >= 2"),
    ]
    for x, exc, match in bad:
        with pytest.raises(exc, match=match):
            fn(x)
        for key, value in before.items():
            assert torch.equal(fn.state_dict()[key], value), key
    assert fn.eval()(torch.randn(1, 3)).shape == (1, 3)  # one value per channel is fine in eval mode


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4)])
def test_empty_batch_fn_behaves_as_batchnorm(shape):
    # whatever the family does with an empty training batch (an error naming the layer, or an empty output that
    # changes no statistic), FN does the same
    bn, fn = BatchNorm(3), FullNormalization(3)
    x = torch.randn(*shape)
    try:
        want = bn(x)
    except ValueError as exc:
        message = str(exc).replace("BatchNorm(3)", "FullNormalization(3)")
        with pytest.raises(ValueError) as got:
            fn(x)
        assert str(got.value) == message
    else:
        before = copy.deepcopy(fn.state_dict())
        y = fn(x)
        assert y.shape == want.shape == x.shape
        for key, value in before.items():
            assert torch.equal(fn.state_dict()[key], value), key
    assert int(fn.num_batches_tracked) == 0


def test_fn_state_dict_round_trip_and_torch_checkpoint():
    a = randomize_affine(FullNormalization(3, momentum=0.3))
    for _ in range(3):
        a(torch.randn(8, 3, 2) * 2 + 1)
    assert set(a.state_dict()) == set(torch.nn.BatchNorm1d(3).state_dict())
    b = FullNormalization(3, momentum=0.3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3, 2)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)  # training: same estimate, same step size
    a.eval(), b.eval()
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    torch_bn = torch.nn.BatchNorm1d(3)
    torch_bn(torch.randn(8, 3))
    c = FullNormalization(3)
    c.load_state_dict(torch_bn.state_dict())
    assert torch.equal(c.running_mean, torch_bn.running_mean) and int(c.num_batches_tracked) == 1


def test_fn_folds_into_the_previous_layer_in_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), FullNormalization(3, momentum=0.3), torch.nn.ReLU())
    randomize_affine(model[1])
    for _ in range(4):
        model(torch.randn(6, 2, 9) * 2 + 1)
    model.eval()
    report = plan_fold(model)
    assert report.folded == [("0", "1")]
    folded = fold_batchnorm(model, strict=True)
    assert isinstance(folded[1], torch.nn.Identity)
    x = torch.randn(4, 2, 9)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fn_recalibrate_writes_the_biased_population_moments():
    # recalibrate (PreciseBN) reads running_var_unbiased=False: the exact population mean and biased variance, which
    # is what FN's estimate tracks
    torch.manual_seed(1)
    model = torch.nn.Sequential(FullNormalization(3, momentum=0.3)).double()
    batches = [torch.randn(5, 3, 4, dtype=F64) * (k + 1) + k for k in range(3)]
    model(batches[0])
    counter = int(model[0].num_batches_tracked)
    recalibrate(model, batches, progress=False)
    values = torch.cat([b.transpose(0, 1).reshape(3, -1) for b in batches], dim=1)
    torch.testing.assert_close(model[0].running_mean, values.mean(1))
    torch.testing.assert_close(model[0].running_var, values.var(1, unbiased=False))
    assert int(model[0].num_batches_tracked) == counter


def test_fn_registry_spec_and_half_input():
    fn = make_norm("fn", 4, momentum=0.2, warmup=False)
    assert type(fn) is FullNormalization and fn.momentum == 0.2 and not fn.warmup
    assert "warmup=False" in repr(fn)
    direct = FullNormalization(4, momentum=0.2, warmup=False)
    direct.load_state_dict(fn.state_dict())
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(fn(x), direct(x), rtol=0, atol=0)
    y = make_norm("fn", 4)(x.to(torch.bfloat16).requires_grad_())
    assert y.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------- synchronized
def _load_sync_worker():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_sync_worker", Path(__file__).parent / "_sync_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_worker = _load_sync_worker()
fn_worker = sync_worker.SUITES["fn"]


@pytest.fixture(scope="module")
def fn_two_process_results(tmp_path_factory):
    return sync_worker.spawn("fn", tmp_path_factory.mktemp("fn_sync"))


@pytest.mark.parametrize("name", list(fn_worker.CASES))
def test_fn_and_ran_synchronized_over_two_gloo_processes_equal_one_process(name, fn_two_process_results):
    # the batch moments are pooled over the processes (the family's batch_moments hook): outputs, input gradients,
    # summed parameter gradients and the estimate/running averages equal one process on the whole batch
    w = fn_worker
    single = w.run(name, w.build(name), 0, w.N)
    ranks = [res[name] for res in fn_two_process_results]
    for step in range(w.STEPS):
        torch.testing.assert_close(torch.cat([r["y"][step] for r in ranks]), single["y"][step])
        torch.testing.assert_close(torch.cat([r["dx"][step] for r in ranks]), single["dx"][step])
        for k, want in enumerate(single["dp"][step]):
            torch.testing.assert_close(ranks[0]["dp"][step][k] + ranks[1]["dp"][step][k], want)
    for key, want in single["state"].items():
        for r in ranks:
            torch.testing.assert_close(r["state"][key], want, msg=f"{name}: buffer {key}")
    # and the synchronized result is not what one process computes on its own shard
    alone = w.run(name, w.build(name), 0, fn_worker.CASES[name][2][0])
    assert not torch.allclose(alone["state"]["running_mean"], single["state"]["running_mean"])


def test_fn_eval_with_batch_statistics_and_without_affine():
    # eval_stats="batch": plain batch statistics at inference, nothing tracked; affine=False: no gamma/beta
    fn = FullNormalization(3, momentum=0.3, affine=False, eval_stats="batch", dtype=F64)
    bn = BatchNorm(3, affine=False, eval_stats="batch", dtype=F64)
    x = torch.randn(6, 3, 2, dtype=F64)
    fn(x), bn(x)
    before = copy.deepcopy(fn.state_dict())
    fn.eval(), bn.eval()
    x = torch.randn(5, 3, 2, dtype=F64) * 3 - 1
    torch.testing.assert_close(fn(x), bn(x), rtol=1e-12, atol=1e-12)
    for key, value in before.items():
        assert torch.equal(fn.state_dict()[key], value), key
    assert fn.weight is None and fn.bias is None


def test_fn_estimate_is_the_population_of_all_batches_when_batches_are_single_class():
    # the case FN is for: each batch holds one "class" (mean -3 or +3). With momentum=None (alpha_t = 1/t) the estimate
    # is exactly the pooled moments of every value seen -- variance about 1 + 9, the spread of the batch means
    # included -- while each batch's own variance is about 1 (what BN normalizes with) and the average of the batch
    # variances (a moving average of variances) would be about 1 too.
    torch.manual_seed(8)
    fn = FullNormalization(2, momentum=None, dtype=F64)
    batches = [torch.randn(16, 2, dtype=F64) + (3.0 if k % 2 else -3.0) for k in range(6)]
    for b in batches:
        fn(b)
    values = torch.cat(batches)
    torch.testing.assert_close(fn.running_mean, values.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fn.running_var, values.var(0, unbiased=False), rtol=1e-12, atol=1e-12)
    assert bool((fn.running_var > 8).all())
    assert float(torch.stack([b.var(0, unbiased=False) for b in batches]).mean()) < 2
