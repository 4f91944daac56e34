"""normlab.tools.ActivationRecorder: statistics against an independent computation, sampling, dead units,
gradient norms, hook removal and bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from normlab.tools import ActivationRecorder


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))


def test_records_sampled_steps_and_matches_independent_statistics():
    model = mlp()
    xs = [torch.randn(32, 5) * 2 for _ in range(5)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with ActivationRecorder(model, every=2) as rec:
        for step, x in enumerate(xs):
            if step % 2 == 0:  # the independent truth, with the weights of this step
                h = model[0](x)
                h.retain_grad()
                out = model[4](torch.tanh(model[2](torch.relu(h))))  # no watched module called
                out.pow(2).mean().backward()
                expected.append((step, h.detach().numpy().ravel(), float(h.grad.norm())))
                opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        model(xs[0])  # eval forwards are neither counted nor recorded
    assert [r.step for r in rec.records if r.layer == "1"] == [0, 2, 4]
    assert [s for s, _ in rec.series("3", "mean")] == [0, 2, 4]
    for (step, values, grad_norm), rec_row in zip(expected, [r for r in rec.records if r.layer == "1"]):
        assert rec_row.step == step
        np.testing.assert_allclose(rec_row.mean, values.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec_row.std, values.std(), rtol=1e-5)
        np.testing.assert_allclose([rec_row.p15, rec_row.p50, rec_row.p85], np.percentile(values, [15, 50, 85]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec_row.grad_norm, grad_norm, rtol=1e-5)
    assert len(rec.rows()) == 6 and set(rec.rows()[0]) >= {"step", "layer", "p15", "dead_fraction", "grad_norm"}
    assert not model[1]._forward_pre_hooks and not model._forward_pre_hooks


def test_dead_relu_fraction_per_unit_and_per_channel():
    lin = nn.Linear(4, 8)
    with torch.no_grad():
        lin.weight[:3].zero_()
        lin.bias[:3] = -1.0  # units 0..2 never fire
        lin.weight[3:].mul_(0.01)
        lin.bias[3:] = 10.0  # units 3..7 always fire
    model = nn.Sequential(lin, nn.ReLU())
    conv = nn.Conv2d(2, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))  # channels 0 and 1 are <= 0 everywhere
    cnn = nn.Sequential(conv, nn.ReLU())
    with ActivationRecorder(model) as rec, ActivationRecorder(cnn, grads=False) as rec_cnn:
        model(torch.randn(16, 4))
        cnn(torch.randn(3, 2, 4, 4))
    assert rec.records[0].dead_fraction == pytest.approx(3 / 8)
    assert rec.records[0].grad_norm is None  # no backward ran
    assert rec_cnn.records[0].dead_fraction == pytest.approx(2 / 4)


def test_percentiles_of_large_tensors_are_sampled_close_to_exact():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    x = torch.randn(64, 16, 16, 16)  # 262144 values, 4096 drawn
    with ActivationRecorder(model, max_values=4096) as rec:
        model(x)
    exact = np.percentile(x.numpy().ravel(), [15, 50, 85])
    r = rec.records[0]
    np.testing.assert_allclose([r.p15, r.p50, r.p85], exact, atol=0.1)
    assert r.mean == pytest.approx(float(x.mean()), abs=1e-6)  # mean/std use every value


def test_weight_gradient_norm_of_watched_layers():
    model = mlp()
    x = torch.randn(16, 5)
    with ActivationRecorder(model, modules=["0", "2"], every=2) as rec:
        for step in range(3):
            model.zero_grad()
            model(x).pow(2).mean().backward()
            if step % 2 == 0:
                want = {n: float(model[int(n)].weight.grad.norm()) for n in ("0", "2")}
                got = {r.layer: r.weight_grad_norm for r in rec.records if r.step == step}
                assert got == pytest.approx(want, rel=1e-6)
    assert [r.step for r in rec.records] == [0, 0, 2, 2]
    assert not model[0].weight._backward_hooks


def test_explicit_modules_and_hooks_removed_on_error():
    model = mlp()
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationRecorder(model, modules=["0", "2"]):
            model(torch.randn(3, 5))
            raise RuntimeError("boom")
    assert not model[0]._forward_pre_hooks and not model._forward_pre_hooks


def test_bad_input():
    model = mlp()
    with pytest.raises(ValueError, match=r"ActivationRecorder: no module named \['nope'\]"):
        ActivationRecorder(model, modules=["nope"])
    with pytest.raises(ValueError, match="ActivationRecorder: the model has no activation module"):
        ActivationRecorder(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        ActivationRecorder(model, every=0)
    rec = ActivationRecorder(model)
    with pytest.raises(ValueError, match="unknown field 'median'"):
        rec.series("1", "median")
    with pytest.raises(ValueError, match="layer '0' is not watched"):
        rec.series("0", "mean")


def test_recorder_sees_norm_inside_inplace_norm_act():
    import copy

    from normlab import nn as nlnn

    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Conv2d(3, 4, 1), nlnn.NormAct(nlnn.BatchNorm2d(4), activation="leaky_relu", inplace_abn=True))
    standard = copy.deepcopy(inplace)
    standard[1].inplace_abn = False
    x = torch.randn(4, 3, 5, 5)
    records = []
    for model in (inplace, standard):
        with ActivationRecorder(model, modules=["1.norm"], grads=True) as rec:
            y = model.train()(x)
            (y * y).sum().backward()
        records.append(rec.records)
    assert len(records[0]) == 1  # the in-place path never calls norm(x), yet its input is recorded
    got, want = records[0][0], records[1][0]
    for field in ("mean", "std", "p15", "p50", "p85", "dead_fraction", "grad_norm", "weight_grad_norm"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-5), field


# ------------------------------------------------------------------------------- what the claims' probes need
def test_unit_percentiles_and_dead_units_on_a_probe_input_in_eval_mode():
    model = mlp()
    x = torch.randn(200, 5) * 3
    rec = ActivationRecorder(model, ["1", "3"], stats=["dead", "unit_percentiles"])
    rows = rec.observe(x, step=7)
    with torch.no_grad():
        h = model[0](x).numpy()
    assert [r.layer for r in rows] == ["1", "3"] and all(r.step == 7 for r in rows) and rec.records == rows
    np.testing.assert_allclose(rows[0].unit_percentiles, np.percentile(h, [15, 50, 85], axis=0).T, rtol=1e-5,
                               atol=1e-6)
    assert rows[0].dead_fraction == pytest.approx(float((h <= 0).all(axis=0).mean()))
    assert rows[0].mean is None and rows[0].p50 is None  # not asked for
    assert rec.step == -1 and not model[1]._forward_pre_hooks  # no training step counted, no hook left


def test_variance_shift_of_batch_norms_against_the_formula():
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(3, 4), bn, nn.ReLU())
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    x = torch.randn(64, 3)
    (row,) = ActivationRecorder(model, ["1"], stats=["variance_shift"]).observe(x)
    with torch.no_grad():
        v = model[0](x).double().numpy().var(axis=0, ddof=1)
    assert row.variance_shift == pytest.approx(np.abs(np.log(v / np.array([0.5, 1.0, 2.0, 4.0]))).mean(), rel=1e-9)
    (relu,) = ActivationRecorder(model, ["2"], stats=["variance_shift"]).observe(x)
    assert relu.variance_shift is None  # no running statistics


def test_observe_in_training_mode_restores_buffers_and_random_state():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.ReLU()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(50, 3)
    rng = torch.get_rng_state()
    (row,) = ActivationRecorder(model, ["3"], stats=["moments"]).observe(x, train=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and not model.training and not model[1].training
    torch.manual_seed(99)  # the expected value: training mode with the same random draws as the probe made
    torch.set_rng_state(rng)
    with torch.no_grad():
        want = model.train()[:3](x)  # the input of the ReLU
    assert row.mean == pytest.approx(want.mean().item(), rel=1e-6)


def test_paused_passes_are_not_counted_and_gradient_only_stats():
    model = mlp()
    with ActivationRecorder(model, ["0", "2"], stats=()) as rec:
        for _i in range(3):
            model(torch.randn(8, 5)).sum().backward()
            with rec.paused():
                model(torch.randn(8, 5)).sum().backward()  # a probe's own pass
    assert rec.step == 2 and [r.step for r in rec.records if r.layer == "0"] == [0, 1, 2]
    assert all(r.mean is None and r.weight_grad_norm is not None for r in rec.records)
    with pytest.raises(ValueError, match=r"unknown stats \['mode'\]"):
        ActivationRecorder(model, stats=["mode"])
