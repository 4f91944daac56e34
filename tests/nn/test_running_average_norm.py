"""RunningAverageNorm: normalize in training with the running averages (updated first), no gradient through them."""

import copy

import numpy as np
import pytest
import torch
from _layer_helpers import randomize_affine

from normlab import kernels
from normlab.nn import BatchNorm, MovingAverageBatchNorm, RunningAverageNorm, make_norm
from normlab.tools import fold_batchnorm, recalibrate

BACKENDS = ["native"] + (["fast"] if kernels.numba_available() else [])
F64 = torch.float64


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum, unbiased", [(0.3, True), (None, True), (0.2, False)])
def test_ran_steps_match_float64_formula(backend, momentum, unbiased):
    torch.manual_seed(4)
    eps = 1e-5
    layer = randomize_affine(RunningAverageNorm(3, eps=eps, momentum=momentum, running_var_unbiased=unbiased,
                                                dtype=F64))
    gamma, beta = _np(layer.weight)[None, :, None], _np(layer.bias)[None, :, None]
    rm, rv = np.zeros(3), np.ones(3)
    with kernels.backend(backend):
        for step in range(4):
            x = (torch.randn(5, 3, 4, dtype=F64) * (step + 1) + step).requires_grad_()
            y = layer(x)
            g = torch.randn_like(y)
            y.backward(g)
            xn, gn = _np(x), _np(g)
            m = 1.0 / (step + 1) if momentum is None else momentum
            var = xn.var(axis=(0, 2), ddof=1 if unbiased else 0)
            rm = (1 - m) * rm + m * xn.mean(axis=(0, 2))  # updated first ...
            rv = (1 - m) * rv + m * var
            s = np.sqrt(rv + eps)[None, :, None]
            xhat = (xn - rm[None, :, None]) / s
            np.testing.assert_allclose(_np(y), gamma * xhat + beta, rtol=1e-10, atol=1e-10)  # ... then normalizes
            np.testing.assert_allclose(_np(x.grad), gamma * gn / s, rtol=1e-10, atol=1e-12)  # statistics constant
            np.testing.assert_allclose(_np(layer.weight.grad), (gn * xhat).sum(axis=(0, 2)), rtol=1e-10)
            np.testing.assert_allclose(_np(layer.bias.grad), gn.sum(axis=(0, 2)), rtol=1e-10)
            np.testing.assert_allclose(_np(layer.running_mean), rm, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(_np(layer.running_var), rv, rtol=1e-12)
            layer.zero_grad()
    assert int(layer.num_batches_tracked) == 4


def test_ran_gradcheck_float64():
    # with frozen statistics (momentum 0) the layer's forward is a fixed affine map of x, gamma and beta: its exact
    # derivative is the layer's gradient
    layer = randomize_affine(RunningAverageNorm(3, momentum=0.0, dtype=F64))
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([0.3, 2.0, 5.0]))
    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, layer.weight, layer.bias))


def test_ran_eval_equals_training_with_frozen_statistics():
    torch.manual_seed(6)
    layer = randomize_affine(RunningAverageNorm(4, momentum=0.3))
    for step in range(3):
        layer(torch.randn(8, 4, 3) + step)
    frozen = copy.deepcopy(layer)
    frozen.momentum = 0.0
    x = torch.randn(5, 4, 3)
    train_out = frozen.train()(x)
    eval_out = layer.eval()(x)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(frozen.running_mean, layer.running_mean, rtol=0, atol=0)  # nothing moved
    # and the eval output is BatchNorm's inference with the same buffers
    bn = BatchNorm(4)
    bn.load_state_dict(layer.state_dict())
    torch.testing.assert_close(bn.eval()(x), eval_out, rtol=0, atol=0)


def test_ran_differs_from_batchnorm_and_from_mabn():
    # the thing article 000 describes is neither BN (batch statistics) nor MABN (uncentred, moving backward
    # statistics): on the same batches their training outputs differ
    torch.manual_seed(7)
    x = torch.randn(4, 3, 5) * 2 + 3
    ran, bn, mabn = RunningAverageNorm(3), BatchNorm(3), MovingAverageBatchNorm(3)
    with torch.no_grad():
        y = ran(x)
        assert float((y - bn(x)).abs().max()) > 0.5
        assert float((y - mabn(x)).abs().max()) > 0.5


def test_ran_with_momentum_one_normalizes_with_the_batch_in_value_only():
    layer = RunningAverageNorm(3, momentum=1.0, running_var_unbiased=False, dtype=F64)
    bn = BatchNorm(3, dtype=F64)
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    torch.testing.assert_close(layer(x), bn(x), rtol=1e-12, atol=1e-12)
    (dx_ran,) = torch.autograd.grad(layer(x).pow(2).sum(), x)
    (dx_bn,) = torch.autograd.grad(bn(x).pow(2).sum(), x)
    assert float((dx_ran - dx_bn).abs().max()) > 0.1  # no gradient through the statistics


def test_ran_bad_arguments_inputs_and_state():
    with pytest.raises(ValueError, match=r"RunningAverageNorm: needs running statistics"):
        RunningAverageNorm(3, track_running_stats=False)
    layer = RunningAverageNorm(3)
    layer(torch.randn(4, 3))
    before = copy.deepcopy(layer.state_dict())
    for x, exc, match in [
        (torch.randn(4, 2), ValueError, r"RunningAverageNorm\(3\): expected 3 channels"),
        (torch.randn(1, 3), ValueError, r"RunningAverageNorm\(3\): expected more than 1 value per channel"),
        (torch.ones(4, 3, dtype=torch.int32), TypeError, r"RunningAverageNorm\(3\): expected a floating-point input"),
    ]:
        with pytest.raises(exc, match=match):
            layer(x)
        for key, value in before.items():
            assert torch.equal(layer.state_dict()[key], value), key
    assert set(layer.state_dict()) == set(torch.nn.BatchNorm1d(3).state_dict())
    other = RunningAverageNorm(3)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(5, 3)
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4)])
def test_empty_batch_ran_behaves_as_batchnorm(shape):
    bn, ran = BatchNorm(3), RunningAverageNorm(3)
    x = torch.randn(*shape)
    try:
        want = bn(x)
    except ValueError as exc:
        message = str(exc).replace("BatchNorm(3)", "RunningAverageNorm(3)")
        with pytest.raises(ValueError) as got:
            ran(x)
        assert str(got.value) == message
    else:
        assert ran(x).shape == want.shape == x.shape
    assert int(ran.num_batches_tracked) == 0


def test_ran_registry_fold_and_recalibrate():
    layer = make_norm("ran", 3, momentum=0.2)
    assert type(layer) is RunningAverageNorm and layer.momentum == 0.2
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), RunningAverageNorm(3, momentum=0.5))
    randomize_affine(model[1])
    for _ in range(3):
        model(torch.randn(8, 4))
    model.eval()
    folded = fold_batchnorm(model, strict=True)
    x = torch.randn(5, 4)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    batches = [torch.randn(6, 3, dtype=F64) * (k + 1) for k in range(3)]
    m = torch.nn.Sequential(RunningAverageNorm(3)).double()
    recalibrate(m, batches, progress=False)
    values = torch.cat(batches)
    torch.testing.assert_close(m[0].running_mean, values.mean(0))
    torch.testing.assert_close(m[0].running_var, values.var(0, unbiased=True))
