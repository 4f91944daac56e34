"""normlab.tools.freeze / unfreeze: fixed statistics across model.train(), optional trainable affine, exact undo."""

import copy

import pytest
import torch
from torch import nn

from normlab import nn as nlnn
from normlab.tools import freeze, is_frozen, unfreeze


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 1), nlnn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(36),
    )
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.randn(8, 3, 5, 5) * 2 + 1)
    return model


def norms(model):
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nlnn.BatchNormBase, nn.GroupNorm, nn.LayerNorm))]


def test_frozen_statistics_survive_train_mode_and_normalize_as_in_eval():
    model = make_model()
    x = torch.randn(6, 3, 5, 5)
    with torch.no_grad():
        want = model.eval()(x)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    keys = list(model.state_dict())
    freeze(model)
    model.train()
    got = model(x)
    torch.testing.assert_close(got, want)
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert list(model.state_dict()) == keys  # nothing replaced: checkpoints still load
    assert not model[1].training and not model[4].training  # put back in eval by the next forward
    assert all(not p.requires_grad for m in norms(model) for p in m.parameters())
    assert all(p.requires_grad for p in model[0].parameters())


def test_train_affine_keeps_gamma_beta_trainable_with_fixed_statistics():
    model = make_model()
    freeze(model, train_affine=True)
    model.train()
    before = model[4].running_mean.clone()
    model(torch.randn(4, 3, 5, 5)).sum().backward()
    assert model[4].weight.grad is not None and model[1].bias.grad is not None
    assert torch.equal(model[4].running_mean, before)


def test_unfreeze_restores_requires_grad_and_mode_exactly():
    model = make_model()
    model[5].weight.requires_grad_(False)  # a choice made before freezing must survive the round trip
    freeze(model)
    freeze(model)  # twice: no-op
    assert is_frozen(model[1]) and not is_frozen(model[0])
    unfreeze(model)
    assert not any(is_frozen(m) for m in model.modules())
    assert model[5].weight.requires_grad is False and model[5].bias.requires_grad is True
    assert model[1].weight.requires_grad and model[4].bias.requires_grad
    assert model[1].training and model[4].training  # follows the model (train mode)
    assert not model[1]._forward_pre_hooks
    before = model[1].running_mean.clone()
    model(torch.randn(4, 3, 5, 5) + 3)
    assert not torch.equal(model[1].running_mean, before)  # statistics move again


def test_deepcopy_of_frozen_model_stays_frozen_and_unfreezes():
    model = freeze(make_model())
    clone = copy.deepcopy(model)
    clone.train()
    before = clone[1].running_var.clone()
    clone(torch.randn(4, 3, 5, 5))
    assert torch.equal(clone[1].running_var, before)
    unfreeze(clone)
    assert clone[1].weight.requires_grad and is_frozen(model[1])


def test_bad_input():
    with pytest.raises(ValueError, match="freeze: the model has no normalization layer"):
        freeze(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="unfreeze: expected a torch.nn.Module, got str"):
        unfreeze("model")


def test_freeze_reaches_batch_norm_inside_inplace_norm_act():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nlnn.NormAct(nlnn.BatchNorm2d(4), activation="leaky_relu", inplace_abn=True))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 4, 4) * 2 + 1)
    x = torch.randn(6, 3, 4, 4)
    with torch.no_grad():
        want = model.eval()(x)
    bn = model[1].norm
    stats = {k: v.clone() for k, v in bn.state_dict().items() if "running" in k or "num_batches" in k}
    freeze(model)
    model.train()
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want)  # normalized with the frozen running statistics
    for k, v in stats.items():
        torch.testing.assert_close(bn.state_dict()[k], v, msg=k)
