"""Kind: a norm class with its own step must not be replaced by the fused norm + activation pass.

NormAct (and fuse_norm_act's modules) run statistics, normalize and the activation in one kernel pass only for a
class that declares ``fuses_activation``; a subclass defining its own forward / _normalize / update_running /
batch_moments is not fused unless it declares the capability itself, so its own code runs (checked against a float64
formula on both kernel paths)."""

import numpy as np
import pytest
import torch

import normlab.kernels as kernels
import normlab.nn as nlnn
from normlab.nn.batchnorm import BatchNormBase


class NoTracking(nlnn.BatchNorm2d):
    def update_running(self, stats):  # its own step: never track
        return None


class DoubledVariance(nlnn.BatchNorm2d):
    def batch_moments(self, x, dims, *, mask=None):
        m = super().batch_moments(x, dims, mask=mask)
        return type(m)(m.mean, m.var * 4, m.count)


class DeclaredFused(nlnn.BatchNorm2d):
    fuses_activation = True  # says its forward is still the plain step

    def forward(self, x):
        return super().forward(x)


def test_capability_is_declared_per_class():
    assert nlnn.BatchNorm2d.fuses_activation and BatchNormBase.fuses_activation
    assert not NoTracking.fuses_activation and not DoubledVariance.fuses_activation
    assert DeclaredFused.fuses_activation


@pytest.mark.parametrize("setting", ["fast", "native"])
@pytest.mark.parametrize("cls, var_scale", [(NoTracking, 1), (DoubledVariance, 4)], ids=["update_running", "moments"])
def test_own_step_still_runs_under_normact(setting, cls, var_scale):
    """NormAct over a class with its own step equals act(its forward): its own update_running (never tracks) or its
    own batch_moments (variance x 4) is used, against the float64 formula."""
    x = torch.randn(64, 8, 32, 32, dtype=torch.float64)
    act = nlnn.NormAct(cls(8, dtype=torch.float64), activation="relu")
    with kernels.backend(setting):
        y = act(x)
    if cls is NoTracking:
        assert torch.equal(act.norm.running_mean, torch.zeros(8, dtype=torch.float64))
        assert torch.equal(act.norm.running_var, torch.ones(8, dtype=torch.float64))
    xs = x.numpy()
    mean = xs.mean(axis=(0, 2, 3), keepdims=True)
    var = var_scale * xs.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(y.detach().numpy(), np.maximum((xs - mean) / np.sqrt(var + 1e-5), 0), atol=1e-10)


@pytest.mark.parametrize("setting", ["fast", "native"])
def test_own_update_running_runs_in_the_layer_alone(setting):
    layer = NoTracking(8, dtype=torch.float64)
    with kernels.backend(setting):
        layer(torch.randn(16, 8, 4, 4, dtype=torch.float64))
    assert torch.equal(layer.running_mean, torch.zeros(8, dtype=torch.float64))
    assert not NoTracking.plain_batch_moments


def test_inplace_abn_refuses_a_class_with_its_own_step():
    with pytest.raises(ValueError, match="DoubledVariance"):
        nlnn.NormAct(DoubledVariance(8), activation="leaky_relu", inplace_abn=True)
    nlnn.NormAct(nlnn.BatchNorm2d(8), activation="leaky_relu", inplace_abn=True)  # the plain class is accepted


@pytest.mark.parametrize("cls", [nlnn.NormAct, nlnn.act.NormAddAct])
def test_activation_passed_positionally_to_a_module_norm_is_refused(cls):
    """Kind: a silently ignored argument. NormAct(bn, "leaky_relu") would take "leaky_relu" as num_features and run
    ReLU; it is refused, naming the layer and the argument."""
    with pytest.raises(ValueError, match="NormAct: num_features only applies when norm is a spec string"):
        cls(nlnn.BatchNorm2d(8), "leaky_relu")
    assert cls(nlnn.BatchNorm2d(8), activation="leaky_relu").activation == "leaky_relu"
