import pytest
import torch

import normlab
from normlab.nn import BatchLayerNorm, BatchNorm, BatchRenorm, MovingAverageBatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm, make_norm


def test_top_level_export_is_the_same_function():
    assert normlab.make_norm is make_norm


def test_specs_build_the_named_layers():
    assert type(make_norm("bn", 8)) is BatchNorm
    assert isinstance(make_norm("brn", 8), BatchRenorm)
    assert make_norm("gbn:16", 8).virtual_batch_size == 16
    assert isinstance(make_norm("mabn", 8), MovingAverageBatchNorm)
    assert isinstance(make_norm("bln", 8), BatchLayerNorm)
    gn = make_norm("gn:4", 8)
    assert isinstance(gn, GroupNorm) and gn.num_groups == 4
    assert make_norm("gn", 64).num_groups == 32
    assert isinstance(make_norm("ln", 8), LayerNorm) and make_norm("ln", 8).axis == 1
    assert isinstance(make_norm("in", 8), InstanceNorm) and make_norm("in", 8).affine
    assert isinstance(make_norm("rms", 8), RMSNorm)
    assert isinstance(make_norm("none", 8, eps=1.0), torch.nn.Identity)
    assert make_norm("bn", 8, momentum=0.3, axis=-1).momentum == 0.3


@pytest.mark.parametrize("spec", ["bn", "brn", "gbn:2", "mabn", "bln", "gn:2", "ln", "in", "rms", "none"])
def test_every_spec_runs_on_conv_maps_and_keeps_shape(spec):
    layer = make_norm(spec, 4)
    x = torch.randn(3, 4, 5, 5)
    assert layer(x).shape == x.shape


@pytest.mark.parametrize("spec", ["bn", "brn", "gbn:3", "mabn", "bln", "ln", "rms", "gn:2", "none"])
def test_specs_on_2d_features(spec):
    x = torch.randn(6, 4)
    assert make_norm(spec, 4)(x).shape == (6, 4)


def test_ln_on_2d_input_is_usual_layernorm():
    x = torch.randn(6, 4)
    torch.testing.assert_close(make_norm("ln", 4)(x), torch.nn.functional.layer_norm(x, (4,)))


def test_unknown_and_malformed_specs_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown spec 'xyz'; valid specs: bn, brn, gbn:<int>, mabn, bln, gn\[:<int>\], ln"):
        make_norm("xyz", 4)
    with pytest.raises(ValueError, match=r"spec 'gbn' needs a number"):
        make_norm("gbn", 4)
    with pytest.raises(ValueError, match=r"expected an int after ':' in 'gn:x'"):
        make_norm("gn:x", 4)
    with pytest.raises(ValueError, match=r"spec 'bn' takes no ':<int>' argument"):
        make_norm("bn:3", 4)
    with pytest.raises(TypeError, match=r"spec must be a string"):
        make_norm(None, 4)


@pytest.mark.parametrize("spec", ["bn", "brn", "gbn:2", "mabn", "bln", "gn:2", "ln", "in", "rms"])
def test_half_input_with_float32_parameters_keeps_the_input_dtype(spec):
    # regression: MABN, BLN and the feature-map LN/RMS used to return float32 for bfloat16 inputs
    layer = make_norm(spec, 4)
    x = torch.randn(4, 4, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()
