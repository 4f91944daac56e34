"""Kind: a wrong constructor argument must raise a TypeError naming the layer the user called (not the base class
whose ``__init__`` receives ``*args``/``**kwargs``), through the class and through ``make_norm``; construction by
copy and pickle (``__new__`` alone) still works."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import normlab
from normlab import nn as nlnn

SPECS = [s.replace("[:<int>]", ":4").replace(":<int>", ":4") for s in nlnn.norm_specs() if s != "none"]


@pytest.mark.parametrize("spec", SPECS)
def test_make_norm_unknown_keyword_names_the_spec_and_the_layer(spec):
    layer = normlab.make_norm(spec, 8)
    with pytest.raises(TypeError) as e:
        normlab.make_norm(spec, 8, not_an_option=1)
    assert f"make_norm({spec!r})" in str(e.value) and type(layer).__name__ in str(e.value)
    assert "not_an_option" in str(e.value)


@pytest.mark.parametrize("cls", [nlnn.BatchNorm2d, nlnn.BatchRenorm, nlnn.BatchLayerNorm, nlnn.FullNormalization,
                                 nlnn.RunningAverageNorm, nlnn.MovingAverageBatchNorm, nlnn.LayerNorm])
def test_class_unknown_keyword_names_the_class(cls):
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: .*unexpected keyword argument 'bogus'"):
        cls(8, bogus=1)


def test_too_many_positionals_counts_the_layers_own_signature():
    with pytest.raises(TypeError, match=r"^GhostBatchNorm: too many positional arguments"):
        nlnn.GhostBatchNorm(8, 4, 1e-5, 0.1, True, True, None, None, "extra")
    nlnn.GhostBatchNorm(8, 4, 1e-5, 0.1, True, True, None, None)  # the full positional list is accepted


def test_a_number_in_the_spec_and_the_same_keyword_says_which_sets_it():
    with pytest.raises(TypeError, match=r"make_norm\('gbn:4'\).*virtual_batch_size.*the number in the spec"):
        normlab.make_norm("gbn:4", 8, virtual_batch_size=2)


def test_copy_and_pickle_still_construct_every_layer():
    model = torch.nn.Sequential(*(normlab.make_norm(s, 8) for s in SPECS))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert [type(m) for m in clone] == [type(m) for m in model]
        for a, b in zip(clone.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)
