import pytest
import torch

import normlab
from normlab.nn import (
    BatchLayerNorm,
    BatchNorm,
    BatchRenorm,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    MovingAverageBatchNorm,
    RMSNorm,
    make_norm,
)


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


DIRECT = {
    "bn": lambda: BatchNorm(4),
    "brn": lambda: BatchRenorm(4),
    "gbn:2": lambda: GhostBatchNorm(4, virtual_batch_size=2),
    "mabn": lambda: MovingAverageBatchNorm(4),
    "bln": lambda: BatchLayerNorm(4),
    "gn:2": lambda: GroupNorm(2, 4),
    "ln": lambda: LayerNorm(4, axis=1),
    "in": lambda: InstanceNorm(4, affine=True),
    "rms": lambda: RMSNorm(4, axis=1),
}


@pytest.mark.parametrize("spec", list(DIRECT))
def test_spec_equals_the_directly_built_layer_with_the_same_state(spec):
    torch.manual_seed(0)
    built = make_norm(spec, 4)
    with torch.no_grad():
        for p in built.parameters():
            p.uniform_(0.5, 1.5)
    direct = DIRECT[spec]()
    assert type(built) is type(direct) and repr(built) == repr(direct)
    direct.load_state_dict(built.state_dict())
    for step in range(2):  # training: outputs and every buffer stay equal
        x = torch.randn(6, 4, 3, 3) * 2 + step
        torch.testing.assert_close(built(x), direct(x), rtol=0, atol=0)
    for key, value in built.state_dict().items():
        torch.testing.assert_close(direct.state_dict()[key], value, rtol=0, atol=0, msg=key)
    built.eval(), direct.eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(built(x), direct(x), rtol=0, atol=0)


def test_masked_spec_is_masked_batchnorm_and_ignores_padding():
    from normlab.nn import MaskedBatchNorm

    layer = make_norm("masked", 3, momentum=0.2)
    assert type(layer) is MaskedBatchNorm and layer.momentum == 0.2
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4, 5])
    y = layer.double()(x, lengths=lengths)
    valid = torch.cat([x[i, :, :n] for i, n in enumerate(lengths.tolist())], dim=1)  # (C, sum of lengths)
    mu, var = valid.mean(1), valid.var(1, unbiased=False)
    want0 = (x[0] - mu[:, None]) / torch.sqrt(var[:, None] + layer.eps)
    torch.testing.assert_close(y[0], want0)
    assert torch.equal(y[1, :, 2:], torch.zeros(3, 4, dtype=torch.float64))


def test_tbn_spec_builds_time_step_batchnorm_with_the_papers_defaults():
    from normlab.nn import TimeStepBatchNorm

    a = make_norm("tbn:7", 5)
    b = make_norm("tbn", 5, max_steps=7, momentum=0.3)
    assert type(a) is TimeStepBatchNorm and type(b) is TimeStepBatchNorm
    assert a.max_steps == b.max_steps == 7 and b.momentum == 0.3
    assert a.running_mean.shape == (7, 5) and a.weight.shape == (5,)  # shared affine, per-step statistics
    assert torch.equal(a.weight, torch.full((5,), 0.1))  # Cooijmans et al.: gamma starts at 0.1
    assert make_norm("TBN:7", 5, max_steps=7, gamma_init=1.0).weight[0] == 1.0  # agreeing twice is fine


def test_tbn_spec_without_or_with_conflicting_step_count_is_refused():
    with pytest.raises(ValueError, match=r"spec 'tbn' needs the number of time steps T_max: write 'tbn:<int>'"):
        make_norm("tbn", 4)
    with pytest.raises(ValueError, match=r"make_norm: spec 'tbn:3' and max_steps=4 disagree"):
        make_norm("tbn:3", 4, max_steps=4)
    with pytest.raises(ValueError, match=r"TimeStepBatchNorm: max_steps must be a positive int, got 0"):
        make_norm("tbn", 4, max_steps=0)
