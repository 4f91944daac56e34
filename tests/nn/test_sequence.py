import numpy as np
import pytest
import torch
from _layer_helpers import randomize_affine as _randomize

from normlab import reference as ref
from normlab.nn import BatchNorm1d, MaskedBatchNorm, TimeStepBatchNorm


# ------------------------------------------------------------------------------------------ MaskedBatchNorm
def _padded_batch(lengths, C, T, channels_last):
    x = torch.randn(len(lengths), T, C) * 2 + 1
    valid = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (N, T)
    x = x.masked_fill(~valid[:, :, None], float("nan"))  # padding holds NaN: any leak shows
    return (x if channels_last else x.transpose(1, 2).contiguous()), valid


@pytest.mark.parametrize("channels_last", [False, True])
def test_masked_equals_batchnorm_on_valid_positions_over_steps_with_nan_padding(channels_last):
    C, T = 3, 6
    masked = _randomize(MaskedBatchNorm(C, momentum=0.2, axis=-1 if channels_last else 1))
    plain = BatchNorm1d(C, momentum=0.2)
    plain.load_state_dict(masked.state_dict())
    for lengths in ([6, 2, 4], [1, 5, 3], [6, 6, 2]):
        x, valid = _padded_batch(lengths, C, T, channels_last)
        x.requires_grad_()
        y = masked(x, mask=valid)
        # the valid positions alone, concatenated: (sum(lengths), C)
        seq = x if channels_last else x.transpose(1, 2)
        flat = seq.detach()[valid].clone().requires_grad_()
        want = plain(flat)
        got = (y if channels_last else y.transpose(1, 2))[valid]
        torch.testing.assert_close(got, want)
        pad = (y if channels_last else y.transpose(1, 2))[~valid]
        assert bool((pad == 0).all())
        g = torch.randn_like(want)
        full_g = torch.zeros_like(seq)
        full_g[valid] = g
        y.backward(full_g if channels_last else full_g.transpose(1, 2))
        want.backward(g)
        grad = x.grad if channels_last else x.grad.transpose(1, 2)
        torch.testing.assert_close(grad[valid], flat.grad)
        assert bool((grad[~valid] == 0).all())  # no gradient, and no NaN, reaches the padding
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    masked.eval(), plain.eval()
    x, valid = _padded_batch([2, 6, 4], C, T, channels_last)
    y = masked(x, mask=valid)
    seq_y = y if channels_last else y.transpose(1, 2)
    seq_x = x if channels_last else x.transpose(1, 2)
    torch.testing.assert_close(seq_y[valid], plain(seq_x[valid]))


def test_masked_lengths_equal_mask_and_no_mask_is_batchnorm():
    x = torch.randn(3, 2, 5)
    lengths = torch.tensor([5, 2, 3])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    a, b = MaskedBatchNorm(2), MaskedBatchNorm(2)
    torch.testing.assert_close(a(x, lengths=lengths), b(x, mask=mask))
    torch.testing.assert_close(a.running_var, b.running_var)
    c, bn = MaskedBatchNorm(2), BatchNorm1d(2)
    torch.testing.assert_close(c(x), bn(x))


def test_masked_matches_float64_formula_per_channel_mask():
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    mask = torch.rand(4, 3, 5) > 0.3
    layer = _randomize(MaskedBatchNorm(3, dtype=torch.float64))
    y = layer(x, mask=mask).detach().numpy()
    xn, mn = x.numpy(), mask.numpy()
    for ch in range(3):
        vals = xn[:, ch][mn[:, ch]]
        want = (vals - vals.mean()) / np.sqrt(vals.var() + 1e-5) * layer.weight[ch].item() + layer.bias[ch].item()
        np.testing.assert_allclose(y[:, ch][mn[:, ch]], want, rtol=1e-10)


def test_masked_gradcheck_float64():
    layer = _randomize(MaskedBatchNorm(2, dtype=torch.float64))
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x, mask=mask), (x, layer.weight, layer.bias))


def test_masked_bad_inputs_leave_state_unchanged():
    layer = MaskedBatchNorm(2)
    x = torch.randn(2, 2, 3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(TypeError, match=r"MaskedBatchNorm\(2\): expected a bool mask"):
        layer(x, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"expected a mask of shape \(2, 3\)"):
        layer(x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 3\]"):
        layer(x, lengths=torch.tensor([4, 1]))
    with pytest.raises(ValueError, match=r"give mask or lengths, not both"):
        layer(x, mask=torch.ones(2, 3, dtype=torch.bool), lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"channel 0 has 1"):
        layer(x, lengths=torch.tensor([1, 0]))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------------------- TimeStepBatchNorm
def test_timestep_whole_sequence_matches_per_step_reference_and_running_stats():
    N, T, C, max_steps, mom = 5, 4, 3, 2, 0.3
    layer = _randomize(TimeStepBatchNorm(C, max_steps, momentum=mom, per_step_affine=True, dtype=torch.float64))
    gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    rm, rv = np.zeros((max_steps, C)), np.ones((max_steps, C))
    for _ in range(3):
        x = torch.randn(N, T, C, dtype=torch.float64) * 2 + 1
        y = layer(x).detach().numpy()
        for t in range(T):
            slot = min(t, max_steps - 1)
            want, cache = ref.batch_norm_forward(x[:, t].numpy(), gamma[slot], beta[slot])
            np.testing.assert_allclose(y[:, t], want, rtol=1e-10, atol=1e-12)
            if t < max_steps:  # steps beyond T_max update nothing
                rm[t] = ref.running_update(rm[t], cache.mean.ravel(), mom)
                rv[t] = ref.running_update(rv[t], cache.var.ravel() * N / (N - 1), mom)
    np.testing.assert_allclose(layer.running_mean.numpy(), rm, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), rv, rtol=1e-12)
    assert layer.num_batches_tracked.tolist() == [3, 3]
    layer.eval()
    x = torch.randn(2, T, C, dtype=torch.float64)
    y = layer(x).detach().numpy()
    for t in range(T):
        slot = min(t, max_steps - 1)  # beyond T_max: the statistics of the last step
        want = ref.batch_norm_inference(x[:, t].numpy(), rm[slot], rv[slot], gamma[slot], beta[slot])
        np.testing.assert_allclose(y[:, t], want, rtol=1e-10)


def test_timestep_step_mode_equals_sequence_mode_and_gamma_init():
    a = TimeStepBatchNorm(3, 3)
    b = TimeStepBatchNorm(3, 3)
    assert torch.all(a.weight == 0.1) and a.weight.shape == (3,)
    x = torch.randn(4, 5, 3)
    whole = a(x)
    steps = torch.stack([b(x[:, t], step=t) for t in range(5)], dim=1)
    torch.testing.assert_close(whole, steps)
    torch.testing.assert_close(a.running_var, b.running_var)
    assert torch.equal(a.num_batches_tracked, b.num_batches_tracked)


def test_timestep_channels_first_layout():
    a = _randomize(TimeStepBatchNorm(3, 4, axis=1, time_axis=2))
    b = TimeStepBatchNorm(3, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 6, 3)
    torch.testing.assert_close(a(x.transpose(1, 2)), b(x).transpose(1, 2))


def test_timestep_gradcheck_float64():
    layer = _randomize(TimeStepBatchNorm(2, 2, per_step_affine=True, dtype=torch.float64))
    x = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, layer.weight, layer.bias))


def test_timestep_state_dict_and_errors():
    a = _randomize(TimeStepBatchNorm(2, 3))
    a(torch.randn(4, 3, 2))
    b = TimeStepBatchNorm(2, 3)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 5, 2)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match=r"TimeStepBatchNorm: max_steps must be a positive int, got 0"):
        TimeStepBatchNorm(2, 0)
    with pytest.raises(ValueError, match=r"a whole sequence needs batch, time and channel axes"):
        TimeStepBatchNorm(2, 3)(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel and time step"):
        TimeStepBatchNorm(2, 3)(torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match=r"step must be a non-negative int, got -1"):
        TimeStepBatchNorm(2, 3)(torch.randn(4, 2), step=-1)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5).filter(lambda ls: sum(ls) >= 2),
    channels=st.integers(1, 3),
    channels_last=st.booleans(),
)
def test_masked_property_any_lengths_equal_batchnorm_on_the_valid_positions(lengths, channels, channels_last):
    x, valid = _padded_batch(lengths, channels, 6, channels_last)
    layer = MaskedBatchNorm(channels, axis=-1 if channels_last else 1)
    y = layer(x, lengths=torch.tensor(lengths))
    seq_x = x if channels_last else x.transpose(1, 2)
    seq_y = y if channels_last else y.transpose(1, 2)
    want = torch.nn.functional.batch_norm(seq_x[valid], None, None, training=True)
    torch.testing.assert_close(seq_y[valid], want)
    assert bool((seq_y[~valid] == 0).all())
    stats = seq_x[valid]
    torch.testing.assert_close(layer.running_mean, 0.9 * torch.zeros(channels) + 0.1 * stats.mean(0))
    torch.testing.assert_close(layer.running_var, 0.9 * torch.ones(channels) + 0.1 * stats.var(0, unbiased=True))


def test_timestep_cumulative_average_counts_each_step_separately():
    layer = TimeStepBatchNorm(2, max_steps=3, momentum=None)
    seqs = [torch.randn(4, 3, 2) for _ in range(2)] + [torch.randn(4, 1, 2)]  # the last sequence is 1 step long
    for x in seqs:
        layer(x)
    assert layer.num_batches_tracked.tolist() == [3, 2, 2]
    torch.testing.assert_close(layer.running_mean[0], torch.stack([x[:, 0].mean(0) for x in seqs]).mean(0))
    torch.testing.assert_close(layer.running_mean[1], torch.stack([x[:, 1].mean(0) for x in seqs[:2]]).mean(0))


@pytest.mark.parametrize("training", [True, False])
def test_masked_mask_larger_than_input_is_rejected(training):
    layer = MaskedBatchNorm(3).train(training)
    x = torch.randn(2, 3, 1)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    # (2, 4) would broadcast x (2, 3, 1) up to (2, 3, 4): more outputs and counts than the input holds
    with pytest.raises(ValueError, match=r"MaskedBatchNorm\(3\): .*input's shape \(2, 3, 1\), got a mask of shape \(2, 4\)"):
        layer(x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"MaskedBatchNorm\(3\): .*got a mask of shape \(4, 3, 1\)"):
        layer(x, mask=torch.ones(4, 3, 1, dtype=torch.bool))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    y = layer(x, mask=torch.ones(2, 1, 1, dtype=torch.bool))  # smaller masks still broadcast to the input
    assert y.shape == x.shape
