"""Issue 14, item 10 (kind: a torch-named class or argument that does not behave as torch's). Checked with torch's
own per-module inputs: every parameter of torch 2.13's signature exists with torch's default (``bias=`` included),
InstanceNorm1d/2d/3d follow torch's rank rules (unbatched inputs included), their counter never moves and
``momentum=None`` leaves the running statistics unchanged. What deliberately differs is in the README's API table."""

import inspect

import pytest
import torch

import normlab.nn as nlnn

TORCH_NAMED = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
               "InstanceNorm3d", "LayerNorm", "RMSNorm"]


@pytest.mark.parametrize("name", TORCH_NAMED)
def test_kind_torch_signature_parity_every_argument_with_torch_default(name):
    theirs = inspect.signature(getattr(torch.nn, name)).parameters
    ours = inspect.signature(getattr(nlnn, name)).parameters
    positional = [k for k, p in theirs.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert list(ours)[: len(positional)] == positional  # same positional order
    for k, p in theirs.items():
        assert k in ours, f"{name}: no argument {k!r}"
        assert ours[k].default == p.default, f"{name}({k}=...): default {ours[k].default!r}, torch {p.default!r}"


@pytest.mark.parametrize("ours, theirs, shape", [
    (lambda: nlnn.BatchNorm1d(3, bias=False), lambda: torch.nn.BatchNorm1d(3, bias=False), (4, 3, 5)),
    (lambda: nlnn.BatchNorm2d(3, bias=False), lambda: torch.nn.BatchNorm2d(3, bias=False), (4, 3, 2, 2)),
    (lambda: nlnn.BatchNorm3d(3, bias=False), lambda: torch.nn.BatchNorm3d(3, bias=False), (2, 3, 2, 2, 2)),
    (lambda: nlnn.BatchNorm2d(3, affine=False, bias=False), lambda: torch.nn.BatchNorm2d(3, affine=False, bias=False), (4, 3, 2, 2)),
    (lambda: nlnn.GroupNorm(3, 9, bias=False), lambda: torch.nn.GroupNorm(3, 9, bias=False), (2, 9, 4)),
    (lambda: nlnn.InstanceNorm2d(3, affine=True, bias=False), lambda: torch.nn.InstanceNorm2d(3, affine=True, bias=False), (2, 3, 4, 4)),
    (lambda: nlnn.InstanceNorm1d(3, affine=True, bias=False), lambda: torch.nn.InstanceNorm1d(3, affine=True, bias=False), (2, 3, 6)),
    (lambda: nlnn.LayerNorm(5, bias=False), lambda: torch.nn.LayerNorm(5, bias=False), (2, 3, 5)),
])
def test_kind_torch_signature_parity_bias_keyword(ours, theirs, shape):
    a, b = ours(), theirs()
    assert (a.weight is None) == (b.weight is None) and a.bias is None and b.bias is None
    assert a.state_dict().keys() == b.state_dict().keys()
    with torch.no_grad():
        if a.weight is not None:
            a.weight.uniform_(0.5, 1.5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(*shape) * 2 + 1
    torch.testing.assert_close(a(x), b(x))
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("name, shape", [
    ("InstanceNorm1d", (3, 15)), ("InstanceNorm1d", (2, 3, 15)),
    ("InstanceNorm2d", (3, 6, 6)), ("InstanceNorm2d", (3, 3, 5)), ("InstanceNorm2d", (2, 3, 4, 4)),
    ("InstanceNorm3d", (3, 2, 3, 4)), ("InstanceNorm3d", (2, 3, 2, 3, 4)),
])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [False, True])
def test_kind_torch_signature_parity_instance_norm_ranks_unbatched_included(name, shape, affine, track):
    a, b = getattr(nlnn, name)(3, affine=affine, track_running_stats=track), getattr(torch.nn, name)(3, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            a.weight.uniform_(0.5, 1.5)
            a.bias.normal_()
        b.load_state_dict(a.state_dict())
    for _ in range(2):
        x = torch.randn(*shape) * 3 + 2
        torch.testing.assert_close(a(x), b(x))
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v)
    a.eval(), b.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("name, bad", [
    ("InstanceNorm1d", (3,)), ("InstanceNorm1d", (2, 3, 4, 4)), ("InstanceNorm2d", (3, 6)), ("InstanceNorm2d", (1, 2, 3, 4, 4)),
    ("InstanceNorm3d", (3, 4, 4)),
])
def test_kind_torch_signature_parity_instance_norm_wrong_rank_raises_naming_the_layer(name, bad):
    layer = getattr(nlnn, name)(3)
    with pytest.raises(ValueError, match=rf"{name}\(3\): expected \dD \(unbatched\) or \dD \(batched\) input, got {len(bad)}D"):
        layer(torch.randn(*bad))
    with pytest.raises((ValueError, RuntimeError)):
        getattr(torch.nn, name)(3)(torch.randn(*bad))


@pytest.mark.parametrize("name, shape", [("InstanceNorm1d", (4, 3, 6)), ("InstanceNorm2d", (4, 3, 3, 3)),
                                         ("InstanceNorm3d", (2, 3, 2, 2, 2))])
@pytest.mark.parametrize("momentum", [None, 0.3])
def test_kind_torch_signature_parity_instance_norm_counter_and_momentum_none(name, shape, momentum):
    a = getattr(nlnn, name)(3, momentum=momentum, track_running_stats=True)
    b = getattr(torch.nn, name)(3, momentum=momentum, track_running_stats=True)
    for k in range(3):
        x = torch.randn(*shape) * (k + 1) + k
        torch.testing.assert_close(a(x), b(x))
    assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 0  # torch never counts
    torch.testing.assert_close(a.running_mean, b.running_mean)
    torch.testing.assert_close(a.running_var, b.running_var)
    if momentum is None:  # torch: no update at all
        assert torch.equal(a.running_mean, torch.zeros(3)) and torch.equal(a.running_var, torch.ones(3))


def test_kind_torch_signature_parity_torch_checkpoints_load_both_ways():
    for name in ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"):
        theirs = getattr(torch.nn, name)(3, affine=True, track_running_stats=True)
        ours = getattr(nlnn, name)(3, affine=True, track_running_stats=True)
        ours.load_state_dict(theirs.state_dict())
        theirs.load_state_dict(ours.state_dict())
    for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
        getattr(nlnn, name)(3, bias=False).load_state_dict(getattr(torch.nn, name)(3, bias=False).state_dict())
        getattr(torch.nn, name)(3, bias=False).load_state_dict(getattr(nlnn, name)(3, bias=False).state_dict())


def test_kind_torch_signature_parity_generic_instance_norm_keeps_its_documented_extension():
    """The rank-generic ``InstanceNorm`` (not a torch name) keeps normlab's documented rules (README API table):
    any batched rank >= 3, counter counted, momentum=None the cumulative average."""
    layer = nlnn.InstanceNorm(3, momentum=None, track_running_stats=True)
    layer(torch.randn(2, 3, 5))
    assert int(layer.num_batches_tracked) == 1
    with pytest.raises(ValueError, match=r"InstanceNorm\(3\): expected an input of rank >= 3"):
        layer(torch.randn(3, 5))
