"""Kind: convert_norm carrying a layer's eps/momentum over the new kind's own defaults. An option left at its
class's default carries no intent, so the new layer keeps its own default (BLN's paper eps=1e-3 and momentum=None,
MABN's 0.02, RMSNorm's eps); an option the user set is kept wherever the new kind takes it; keywords win over
both. Checked for every spec convert_norm can build, from torch's and normlab's layers."""

import pytest
import torch
from torch import nn

from normlab import nn as nlnn
from normlab.nn.registry import norm_specs
from normlab.tools import convert_norm

C = 8
# every make_norm spec, with a number where it takes one ("none" is the identity: nothing to carry)
SPECS = [s.replace("[:<int>]", ":2").replace(":<int>", ":2") for s in norm_specs() if s != "none"]


def _defaults(spec: str) -> nlnn.BatchNormBase:
    return nlnn.make_norm(spec, C)  # the new kind built with nothing given: its own defaults


def _converted(old: nn.Module, spec: str, **kw) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, C), old)
    return convert_norm(model, spec, where=lambda name, m: m is old, **kw)[1]


def test_kind_convert_carried_options_cover_every_spec():
    assert {"bn", "brn", "gbn:2", "mabn", "bln", "gn:2", "ln", "in", "rms", "masked", "tbn:2", "fn", "ran"} <= set(
        SPECS)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("old_cls", [nn.BatchNorm1d, nlnn.BatchNorm1d])
def test_kind_convert_carried_options_defaults_give_the_new_kinds_defaults(spec, old_cls):
    new, default = _converted(old_cls(C), spec), _defaults(spec)
    assert type(new) is type(default)
    for option in ("eps", "momentum"):
        if hasattr(default, option):
            assert getattr(new, option) == getattr(default, option), (option, getattr(new, option))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("old_cls", [nn.BatchNorm1d, nlnn.BatchNorm1d])
def test_kind_convert_carried_options_chosen_values_are_kept(spec, old_cls):
    new = _converted(old_cls(C, eps=2e-3, momentum=0.05), spec)
    if hasattr(new, "eps"):
        assert new.eps == 2e-3
    if hasattr(new, "momentum"):
        assert new.momentum == 0.05
    only_eps = _converted(old_cls(C, eps=2e-3), spec)  # momentum left at the default: the new kind's
    if hasattr(only_eps, "momentum"):
        assert only_eps.momentum == _defaults(spec).momentum


@pytest.mark.parametrize("spec", SPECS)
def test_kind_convert_carried_options_keywords_win(spec):
    old = nn.BatchNorm1d(C, eps=2e-3, momentum=0.05)
    kw = {"eps": 1e-4}
    if hasattr(_defaults(spec), "momentum"):
        kw["momentum"] = 0.3
    new = _converted(old, spec, **kw)
    assert all(getattr(new, k) == v for k, v in kw.items())


def test_kind_convert_carried_options_bln_from_torch_batchnorm():
    """The reported case: a default torch BatchNorm to BLN keeps BLN's paper values, not torch's 1e-5 and 0.1;
    its statistics and affine parameters still carry over."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(C)
    bn(torch.randn(16, C) * 3 + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
    bln = _converted(bn, "bln")
    assert isinstance(bln, nlnn.BatchLayerNorm) and bln.eps == 1e-3 and bln.momentum is None
    assert torch.equal(bln.running_mean, bn.running_mean) and torch.equal(bln.running_var, bn.running_var)
    assert torch.equal(bln.weight, bn.weight)


def test_kind_convert_carried_options_from_other_kinds():
    """From a layer whose defaults are not BatchNorm's: BLN's default eps is not pushed onto BN; a LayerNorm's
    chosen eps reaches RMSNorm, its default does not (RMSNorm keeps eps=None, the dtype's machine epsilon)."""
    bn = _converted(nlnn.BatchLayerNorm(C), "bn")
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    assert _converted(nn.LayerNorm(C), "rms").eps is None
    assert _converted(nn.LayerNorm(C, eps=1e-6), "rms").eps == 1e-6
