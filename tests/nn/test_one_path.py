"""Issue 15 (one path through the layers): a variant states only what it adds to BatchNorm's constructor, one
``_stats.track`` owns every running update, and the tools recognize norms by their declared base class."""

import inspect

import pytest
import torch

from normlab import _stats
from normlab.nn import BatchNormBase, make_norm, norm_specs
from normlab.nn.batchnorm import NormLayer, extends_constructor
from normlab.tools._common import is_norm

BASE = inspect.signature(BatchNormBase.__init__).parameters


@pytest.mark.parametrize("spec", ["brn", "gbn:2", "mabn", "bln", "tbn:3", "fn", "ran", "masked"])
def test_variant_signature_is_batch_norms_plus_its_own(spec):
    layer = make_norm(spec, 3)
    ours = inspect.signature(type(layer).__init__).parameters
    assert all(name in ours for name in BASE), [name for name in BASE if name not in ours]
    assert not any(p.kind == p.VAR_POSITIONAL for p in ours.values())
    # what a layer changes is what its docstring says: MABN's momentum, BLN's eps and momentum, TimeStep's axis
    defaults = {"mabn": {"momentum": 0.02}, "bln": {"eps": 1e-3, "momentum": None}, "tbn:3": {"axis": -1},
                "fn": {"running_var_unbiased": False}}.get(spec, {})
    for name, p in BASE.items():
        if p.default is not inspect.Parameter.empty:
            assert ours[name].default == defaults.get(name, p.default), (spec, name)


def test_variant_positional_arguments_reach_batch_norm_in_order():
    layer = make_norm("gbn:2", 3, dtype=torch.float64)
    g = type(layer)(3, 2, 1e-3, 0.3, False, True, None, torch.float64)
    assert (g.virtual_batch_size, g.eps, g.momentum, g.affine, g.weight) == (2, 1e-3, 0.3, False, None)
    assert g.running_mean.dtype == torch.float64
    m = type(make_norm("mabn", 3))(3, 1e-4, 0.05, True, True, None, torch.float64)
    assert (m.eps, m.momentum) == (1e-4, 0.05) and m.x2_history.dtype == torch.float64


def test_extends_constructor_refuses_base_arguments_out_of_order():
    with pytest.raises(TypeError, match="out of order"):
        class Bad(BatchNormBase):
            @extends_constructor
            def __init__(self, num_features, momentum=0.5, *args, **kwargs):
                super().__init__(num_features, *args, momentum=momentum, **kwargs)


@pytest.mark.parametrize("weight", [1.0, 0.25, 0.5])
def test_track_merge_is_the_exact_pooled_moments_of_estimate_and_batch(weight):
    g = torch.Generator().manual_seed(0)
    f64 = {"generator": g, "dtype": torch.float64}
    running_mean, running_var = torch.randn(4, **f64), torch.rand(4, **f64)
    batch = _stats.Moments(torch.randn(4, **f64) * 3, torch.rand(4, **f64), 7)
    counts = torch.tensor([[1.0 - weight], [weight]], dtype=torch.float64)
    want = _stats.merge_moments(torch.stack([running_mean, batch.mean]), torch.stack([running_var, batch.var]), counts)
    counter = torch.tensor(3)
    _stats.track(running_mean, running_var, counter, batch, momentum=0.1, weight=weight, merge=True,
                 running_var_unbiased=False)
    torch.testing.assert_close(running_mean, want.mean)
    torch.testing.assert_close(running_var, want.var)
    assert int(counter) == 4


def test_track_keeps_channels_no_value_reached():
    running_mean, running_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    count = torch.tensor([5.0, 0.0, 2.0], dtype=torch.float64)
    batch = _stats.Moments(torch.full((3,), 2.0, dtype=torch.float64), torch.full((3,), 4.0, dtype=torch.float64),
                           count)
    _stats.track(running_mean, running_var, None, batch, momentum=0.5, running_var_unbiased=False)
    assert running_mean.tolist() == [1.0, 0.0, 1.0] and running_var.tolist() == [2.5, 1.0, 2.5]


@pytest.mark.parametrize("spec", [s.split("[")[0].split(":")[0] for s in norm_specs()])
def test_every_registered_norm_is_a_norm_layer_and_is_norm(spec):
    arg = {"gbn": ":2", "tbn": ":3", "gn": ":1"}.get(spec, "")
    layer = make_norm(spec + arg, 4)
    if spec == "none":
        assert not is_norm(layer)
        return
    assert isinstance(layer, NormLayer) and is_norm(layer)
    assert not is_norm(torch.nn.Linear(2, 2))
