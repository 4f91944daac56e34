"""normlab.tools.find_redundant_biases: biases a following batch norm cancels, found through torch.fx and through
nn.Sequential order, checked on an example input; everything that is not such a bias is left out; the model is
left unchanged; bad input is refused with a clear error."""

import copy

import pytest
import torch
from torch import nn

from normlab import nn as nlnn
from normlab.tools import RedundantBias, find_redundant_biases


def found(model, x):
    return [(r.layer, r.norm, r.found_by) for r in find_redundant_biases(model, x)]


def test_sequential_linear_bn_is_reported_with_paths_and_a_vanishing_gradient():
    model = nn.Sequential(nn.Linear(10, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    res = find_redundant_biases(model, torch.randn(8, 10))
    assert [(r.layer, r.norm, r.found_by) for r in res] == [("0", "1", "torch.fx")]
    r = res[0]
    assert isinstance(r, RedundantBias)
    assert r.bias_grad_max <= 1e-4 * r.grad_scale and r.grad_scale > 0.1
    assert "0.bias" in str(r) and "bias=False" in str(r)


class ConvNet(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.bn = nlnn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block(x)
        return self.head(x.mean((2, 3)))


def test_conv_net_traced_nested_paths_and_normlab_layers():
    x = torch.randn(4, 3, 6, 6)
    assert found(ConvNet(), x) == [("stem", "bn", "torch.fx"), ("block.0", "block.1", "torch.fx")]
    assert found(ConvNet(bias=False), x) == [("block.0", "block.1", "torch.fx")]


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(5, 7), nlnn.BatchNorm1d(7), nn.ReLU())
        self.out = nn.Linear(7, 2)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace this model
            x = x * 0
        return self.out(self.features(x))


def test_untraceable_model_falls_back_to_sequential_order_or_child_tracing():
    res = found(Untraceable(), torch.randn(6, 5))
    assert [(a, b) for a, b, _ in res] == [("features.0", "features.1")]


def test_untraceable_sequential_uses_module_order():
    class Odd(nn.Linear):  # a leaf the tracer cannot see through is fine; make the Sequential itself untraceable
        pass

    class Branchy(nn.Sequential):
        def forward(self, x):
            for m in self:
                x = m(x)
                if x.sum() > 1e9:
                    x = x * 0
            return x

    model = Branchy(Odd(4, 3), nn.BatchNorm1d(3), nn.Tanh())
    assert found(model, torch.randn(5, 4)) == [("0", "1", "nn.Sequential order")]


def test_output_used_elsewhere_is_not_reported():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 6)
            self.bn = nn.BatchNorm1d(6)

        def forward(self, x):
            h = self.lin(x)
            return self.bn(h) + h  # the bias reaches the output through h: alive

    assert found(Residual(), torch.randn(8, 6)) == []


def test_norms_that_do_not_cancel_the_bias_are_not_reported():
    x = torch.randn(8, 5)
    # running-average normalization: the gradient reaches the bias
    assert found(nn.Sequential(nn.Linear(5, 4), nlnn.RunningAverageNorm(4)), x) == []
    # MABN does not centre
    assert found(nn.Sequential(nn.Linear(5, 4), nlnn.MovingAverageBatchNorm(4)), x) == []
    # layer norm is not a batch norm
    assert found(nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4)), x) == []


def test_channel_axis_is_checked_on_the_example_input():
    x = torch.randn(4, 5, 5)  # (N, L, F): Linear adds its bias along the last axis
    wrong_axis = nn.Sequential(nn.Linear(5, 5), nlnn.BatchNorm1d(5))  # centres axis 1 (L), not the bias's axis
    assert found(wrong_axis, x) == []
    right_axis = nn.Sequential(nn.Linear(5, 5), nlnn.BatchNorm1d(5, axis=-1))
    assert found(right_axis, x) == [("0", "1", "torch.fx")]


def test_norm_act_wrapping_a_batch_norm():
    model = nn.Sequential(nn.Linear(4, 3), nlnn.NormAct(nlnn.BatchNorm1d(3), activation="relu"))
    assert found(model, torch.randn(6, 4)) == [("0", "1.norm", "torch.fx")]


def test_model_state_and_rng_unchanged():
    model = nn.Sequential(ConvNet(), nn.Dropout(0.5)).eval()  # dropout draws random numbers in training mode
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 6, 6)
    rng = torch.get_rng_state()
    find_redundant_biases(model, x)
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_no_batch_norm_no_bias():
    assert found(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.randn(4, 3)) == []


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match="find_redundant_biases: expected a torch.nn.Module"):
        find_redundant_biases("model", torch.randn(2, 3))
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        find_redundant_biases(model, [1, 2, 3])
    with pytest.raises(ValueError, match="find_redundant_biases: the model failed on the example input"):
        find_redundant_biases(model, torch.randn(1, 3))  # BN cannot train on one value per channel
