"""normlab.tools.recalibrate (PreciseBN): exact population statistics on data with known per-channel moments,
deeper layers against an independent computation, restored flags, and errors that leave the model unchanged."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab import nn as nlnn
from normlab.tools import recalibrate


def dataset_with_moments(n, c, spatial, mean, std, dtype=torch.float64, channel_axis=1, seed=0):
    """Values whose per-channel population mean and (biased) std over the whole dataset are exactly mean, std."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((n, c, *spatial), generator=gen, dtype=torch.float64) ** 3  # skewed: not a Gaussian shortcut
    dims = tuple(d for d in range(z.ndim) if d != 1)
    z = (z - z.mean(dim=dims, keepdim=True)) / z.std(dim=dims, correction=0, keepdim=True)
    x = z * std.reshape(1, c, *[1] * len(spatial)) + mean.reshape(1, c, *[1] * len(spatial))
    return x.movedim(1, channel_axis).to(dtype)


MEAN = torch.tensor([3.0, -2.0, 0.5, 100.0], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0, 1.0, 0.01], dtype=torch.float64)


@pytest.mark.parametrize(
    "make_norm,unbiased",
    [
        (lambda: nn.BatchNorm2d(4, momentum=0.1), True),
        (lambda: nlnn.BatchNorm2d(4, momentum=None), True),
        (lambda: nlnn.BatchNorm2d(4, running_var_unbiased=False), False),
    ],
)
def test_recalibrated_statistics_equal_the_known_population_moments(make_norm, unbiased):
    data = dataset_with_moments(50, 4, (3, 3), MEAN, STD)
    batches = list(data.split(16))  # 16, 16, 16, 2: the ragged last batch still counts value by value
    norm = make_norm().double()
    recalibrate(nn.Sequential(norm), batches, progress=False)
    n = data.numel() // 4
    want_var = STD**2 * (n / (n - 1) if unbiased else 1.0)
    torch.testing.assert_close(norm.running_mean, MEAN, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.running_var, want_var, rtol=1e-12, atol=1e-14)


def test_channels_last_sequence_norm_in_float32():
    data = dataset_with_moments(24, 4, (5,), MEAN, STD, dtype=torch.float32, channel_axis=-1)  # (N, L, C)
    norm = nlnn.BatchNorm(4, axis=-1)
    recalibrate(norm, data.split(5), progress=False)
    n = 24 * 5
    torch.testing.assert_close(norm.running_mean, MEAN.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_var, (STD**2 * n / (n - 1)).float(), rtol=1e-5, atol=1e-7)


def test_deeper_layer_matches_independent_pooled_statistics():
    """bn2's input depends on bn1 normalizing with batch statistics; the truth is computed without hooks."""
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(3, 5, 3), nn.Conv2d(5, 6, 1)
    bn1, bn2 = nlnn.BatchNorm2d(5), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn1.weight.uniform_(0.5, 2.0), bn1.bias.uniform_(-1, 1)
    model = nn.Sequential(conv1, bn1, nn.ReLU(), conv2, bn2).double().eval()
    batches = [torch.randn(8, 3, 6, 6, dtype=torch.float64) * 2 + 1 for _ in range(5)]
    with torch.no_grad():
        z1 = [conv1(x) for x in batches]
        z2 = [conv2(F.relu(F.batch_norm(z, None, None, bn1.weight, bn1.bias, training=True))) for z in z1]
    flat = lambda zs: torch.cat(zs).transpose(0, 1).reshape(zs[0].shape[1], -1).numpy()  # noqa: E731
    recalibrate(model, batches, progress=False)
    np.testing.assert_allclose(bn1.running_mean.numpy(), flat(z1).mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(bn1.running_var.numpy(), flat(z1).var(axis=1, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(bn2.running_mean.numpy(), flat(z2).mean(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn2.running_var.numpy(), flat(z2).var(axis=1, ddof=1), rtol=1e-10)
    assert not model.training and not bn1.training and not bn2.training


def test_flags_and_counters_are_restored_and_num_batches_limits():
    bn_a, bn_b = nn.BatchNorm1d(3, momentum=None), nlnn.BatchNorm1d(3, momentum=0.3)
    model = nn.Sequential(bn_a, bn_b)
    bn_b.eval()  # mixed flags on purpose
    bn_a.num_batches_tracked.fill_(7)
    batches = [(torch.randn(10, 3) + i, torch.zeros(10)) for i in range(4)]  # (input, target) pairs
    recalibrate(model, batches, num_batches=2, progress=False)
    assert bn_a.training and not bn_b.training
    assert bn_a.momentum is None and bn_b.momentum == 0.3
    assert int(bn_a.num_batches_tracked) == 7 and int(bn_b.num_batches_tracked) == 0
    first_two = torch.cat([batches[0][0], batches[1][0]])
    torch.testing.assert_close(bn_a.running_mean, first_two.mean(0))
    torch.testing.assert_close(bn_a.running_var, first_two.var(0, correction=1))


def test_dict_batches_and_custom_forward():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(2)

        def forward(self, features):
            return self.bn(features)

    model = Keyword()
    data = torch.randn(12, 2) * 3
    recalibrate(model, [{"features": data[:6]}, {"features": data[6:]}], progress=False)
    torch.testing.assert_close(model.bn.running_mean, data.mean(0))
    model.bn.reset_running_stats()
    recalibrate(model, [[None, data]], forward=lambda m, b: m(b[1]), progress=False)
    torch.testing.assert_close(model.bn.running_var, data.var(0))


def test_progress_bar_is_shown(capsys):
    recalibrate(nn.BatchNorm1d(2), [torch.randn(4, 2)] * 3, progress=True)
    assert "recalibrate" in capsys.readouterr().err


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_bad_batch_midway_leaves_statistics_and_flags_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nlnn.BatchNorm2d(4, momentum=0.2)).eval()
    with torch.no_grad():
        model[2].running_mean.fill_(0.5)
    before = snapshot(model)
    batches = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(3, 4, 4)]  # last one unbatched
    with pytest.raises(ValueError, match="expected 4D input"):  # the conv accepts unbatched input, the norms do not
        recalibrate(model, batches, progress=False)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model[2].training and model[2].momentum == 0.2
    assert not model[1]._forward_pre_hooks and not model[2]._forward_pre_hooks  # hooks removed


def test_too_few_batches_no_batch_and_bad_arguments():
    model = nn.Sequential(nn.BatchNorm1d(3))
    before = snapshot(model)
    with pytest.raises(ValueError, match="asked for num_batches=5 but batches held only 2; running statistics unchanged"):
        recalibrate(model, [torch.randn(4, 3)] * 2, num_batches=5, progress=False)
    with pytest.raises(ValueError, match="batches yielded no batch"):
        recalibrate(model, [], progress=False)
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    with pytest.raises(ValueError, match="num_batches must be a positive int or None"):
        recalibrate(model, [torch.randn(4, 3)], num_batches=0)
    with pytest.raises(ValueError, match="recalibrate: the model has no batch norm with running statistics"):
        recalibrate(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)), [torch.randn(4, 3)])
    with pytest.raises(TypeError, match="cannot feed a batch of type int"):
        recalibrate(model, [3], progress=False)


def test_layer_never_reached_warns_and_keeps_its_statistics():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.BatchNorm1d(2), nn.BatchNorm1d(2)

        def forward(self, x):
            return self.used(x)

    model = Partial()
    with torch.no_grad():
        model.unused.running_mean.fill_(4.0)
    with pytest.warns(UserWarning, match="no batch reached unused"):
        recalibrate(model, [torch.randn(5, 2) + 1], progress=False)
    assert torch.equal(model.unused.running_mean, torch.full((2,), 4.0))


def test_masked_batch_norm_counts_only_valid_positions():
    norm = nlnn.MaskedBatchNorm(3, axis=-1)
    xs, lengths = [], []
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, 6, 3, generator=gen, dtype=torch.float64) * 2 + 1
        n = torch.randint(1, 7, (4,), generator=gen)
        for i, k in enumerate(n.tolist()):
            x[i, k:] = float("nan")  # padding never enters the statistics
        xs.append(x)
        lengths.append(n)
    norm = norm.double()
    recalibrate(norm, list(zip(xs, lengths)), forward=lambda m, b: m(b[0], lengths=b[1]), progress=False)
    valid = torch.cat([x[i, :k] for x, n in zip(xs, lengths) for i, k in enumerate(n.tolist())])
    torch.testing.assert_close(norm.running_mean, valid.mean(0))
    torch.testing.assert_close(norm.running_var, valid.var(0))


def test_time_step_statistics_whole_sequences_one_population_per_step():
    # Per-time-step BN (Cooijmans et al.): step t's statistics are the pooled moments of step t's values only.
    torch.manual_seed(0)
    layer = nlnn.TimeStepBatchNorm(3, max_steps=4, axis=1, time_axis=2, dtype=torch.float64)
    model = nn.Sequential(nn.BatchNorm1d(3, dtype=torch.float64), layer)
    scale = torch.tensor([1.0, 3.0, 0.2, 5.0, 7.0], dtype=torch.float64).view(1, 1, 5)  # 5 steps > max_steps = 4
    xs = [torch.randn(n, 3, 5, dtype=torch.float64) * scale + 2.0 for n in (6, 9)]
    counter = model[0].num_batches_tracked.clone()
    recalibrate(model, xs, progress=False)
    with torch.no_grad():  # the layer's input: BatchNorm1d in training mode (batch statistics, gamma 1, beta 0)
        ins = [(x - x.mean(dim=(0, 2), keepdim=True)) / (x.var(dim=(0, 2), correction=0, keepdim=True) + 1e-5).sqrt()
               for x in xs]
    for t in range(4):
        vals = torch.cat([v[:, :, t] for v in ins])  # (15, 3): every value of step t
        torch.testing.assert_close(layer.running_mean[t], vals.mean(0))
        torch.testing.assert_close(layer.running_var[t], vals.var(0, correction=1))
    assert torch.equal(model[0].num_batches_tracked, counter) and model.training
    every = torch.cat(xs)  # the plain layer in front is recalibrated too (pooled over both batches)
    torch.testing.assert_close(model[0].running_mean, every.mean(dim=(0, 2)))


def test_time_step_statistics_step_by_step_inside_a_cell_and_steps_beyond_t_max_ignored():
    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nlnn.TimeStepBatchNorm(2, max_steps=3, dtype=torch.float64)

        def forward(self, x):  # (N, T, C), one call per step as a recurrent cell does
            return torch.stack([self.norm(x[:, t], step=t) for t in range(x.shape[1])], 1)

    torch.manual_seed(1)
    model = Cell().eval()
    xs = [torch.randn(8, 4, 2, dtype=torch.float64) * torch.arange(1, 5, dtype=torch.float64).view(1, 4, 1) - 1
          for _ in range(3)]
    model.norm.running_var[2] = 7.0
    recalibrate(model, xs, progress=False)
    every = torch.cat(xs)  # (24, 4, 2)
    torch.testing.assert_close(model.norm.running_mean, every[:, :3].mean(0))
    torch.testing.assert_close(model.norm.running_var, every[:, :3].var(0, correction=1))
    assert not model.training and not model.norm.training


def test_time_step_statistics_batch_average_is_cooijmans_estimator():
    # Cooijmans et al., Sec. 3: inference uses the mini-batch estimates averaged over the training set.
    from normlab.lab import models

    torch.manual_seed(4)
    net = models.rnn((3, 2), 4, hidden=5, norm="bn").double()
    x = torch.randn(40, 3, 2, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1) + 0.5
    net(x[:8])  # some moving averages to be replaced
    net.eval()
    recalibrate(net, [x[0:16], x[16:32]], average="batches", progress=False)
    cell = net[1]
    assert not net.training and not cell.norm_x.training and cell.norm_x.momentum == 0.1
    with torch.no_grad():
        for t in range(3):
            pre = [x[i:i + 16, t] @ cell.w_x.weight.T for i in (0, 16)]
            torch.testing.assert_close(cell.norm_x.running_mean[t], (pre[0].mean(0) + pre[1].mean(0)) / 2)
            torch.testing.assert_close(cell.norm_x.running_var[t], (pre[0].var(0) + pre[1].var(0)) / 2)
    with pytest.raises(ValueError, match="average must be 'pooled' or 'batches', got 'mean'"):
        recalibrate(net, [x], average="mean", progress=False)


def test_batch_average_of_a_plain_layer_and_unreached_steps_warn():
    torch.manual_seed(2)
    bn = nn.BatchNorm1d(3, dtype=torch.float64)
    xs = [torch.randn(n, 3, dtype=torch.float64) * 2 + 1 for n in (4, 10)]
    recalibrate(bn, xs, average="batches", progress=False)
    torch.testing.assert_close(bn.running_mean, (xs[0].mean(0) + xs[1].mean(0)) / 2)
    torch.testing.assert_close(bn.running_var, (xs[0].var(0) + xs[1].var(0)) / 2)
    layer = nlnn.TimeStepBatchNorm(3, max_steps=6, axis=1, time_axis=2)
    before = layer.running_var[4:].clone()
    with pytest.warns(UserWarning, match=r"no batch reached some time steps of TimeStepBatchNorm \(steps \[4, 5\]\)"):
        recalibrate(layer, [torch.randn(5, 3, 4)], progress=False)
    assert torch.equal(layer.running_var[4:], before)


def test_recalibrate_reaches_batch_norm_inside_inplace_norm_act():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1).double()
    model = nn.Sequential(conv, nlnn.NormAct(nlnn.BatchNorm2d(3), activation="elu", inplace_abn=True).double()).eval()
    batches = [torch.randn(4, 2, 3, 3, dtype=torch.float64) * (k + 1) + k for k in range(3)]
    with torch.no_grad():
        h = torch.cat([conv(b) for b in batches]).transpose(0, 1).reshape(3, -1).numpy()
    recalibrate(model, batches, progress=False)
    bn = model[1].norm
    np.testing.assert_allclose(bn.running_mean.numpy(), h.mean(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), h.var(axis=1, ddof=1), rtol=1e-10, atol=1e-12)
    assert not bn.training and int(bn.num_batches_tracked) == 0


def test_recalibrate_pools_synchronized_layers_over_processes(monkeypatch):
    """Each process holds a shard of the data: a synchronized layer's statistics must be the whole data's. The
    other process is faked by a fixed shard merged in by all_merge_moments."""
    from normlab import _stats
    from normlab.nn import sync

    torch.manual_seed(0)
    other = torch.randn(7, 3, 2, 2, dtype=torch.float64) * 3 - 1
    group = object()
    seen_groups = []

    def fake_all_merge(stats, process_group=None):
        seen_groups.append(process_group)
        theirs = _stats.moments(other, (0, 2, 3))
        counts = torch.stack([torch.as_tensor(stats.count, dtype=torch.float64).expand(3), torch.full((3,), 28.0, dtype=torch.float64)])
        return _stats.merge_moments(torch.stack([stats.mean, theirs.mean]), torch.stack([stats.var, theirs.var]), counts)

    # the collective lives in _stats (beside merge_moments) since issue 15
    monkeypatch.setattr(_stats, "all_merge_moments", fake_all_merge)
    model = nn.Sequential(nlnn.BatchNorm2d(3)).double().eval()
    sync.convert_sync_batchnorm(model, group)
    mine = [torch.randn(4, 3, 2, 2, dtype=torch.float64) + k for k in range(3)]
    recalibrate(model, mine, progress=False)
    assert seen_groups == [group] * (len(mine) + 1)  # each training-mode forward, then the population statistics
    h = torch.cat([*mine, other]).transpose(0, 1).reshape(3, -1).numpy()
    np.testing.assert_allclose(model[0].running_mean.numpy(), h.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(model[0].running_var.numpy(), h.var(axis=1, ddof=1), rtol=1e-10)


# ---------------------------------------------------------------- kind: tool errors name the module and the cause
def _two_bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 3), torch.nn.BatchNorm1d(3))


def test_kind_tool_error_names_module_recalibrate_nonfinite_batch():
    model = _two_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = torch.randn(8, 4)
    bad = torch.randn(8, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"batch 1: the input of batch norm '1' holds \d+ non-finite value"):
        recalibrate(model, [good, bad])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], equal_nan=True)


@pytest.mark.parametrize("batch, cause", [
    (torch.randn(1, 4), "more than 1 value per channel"),  # a batch of one in training mode
    (torch.randn(8, 5), "shapes cannot be multiplied"),  # wrong width
])
def test_kind_tool_error_names_module_recalibrate_bad_batch(batch, cause):
    model = _two_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"recalibrate: batch 1 failed in the model") as info:
        recalibrate(model, [torch.randn(8, 4), batch])
    assert cause in str(info.value) and "running statistics unchanged" in str(info.value)
    if "value per channel" in cause:
        assert "last batch norm reached: '1'" in str(info.value)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
