"""The ``ics`` probe: Santurkar et al. (2018)'s gradient-based internal covariate shift ||G - G'|| against a direct
computation (loss.backward on a copy whose earlier layers took a gradient step), and inside a training run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.lab import data
from normlab.lab.probes import ics_gradient_change, validate_probes
from normlab.lab.train import TrainConfig, train

MIX = dict(n=300, dim=6, classes=3, separation=3.0, seed=0)


def _net(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Dropout(dropout), nn.Linear(7, 6),
                         nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def _direct(model: nn.Module, x, y, layer: str, eta: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """G and G' by backward passes on copies: the parameters registered before ``layer``'s weight moved by -eta*grad."""
    a = copy.deepcopy(model).train()
    torch.manual_seed(seed)
    F.cross_entropy(a(x), y).backward()
    names = [n for n, _ in a.named_parameters()]
    cut = names.index(f"{layer}.weight")
    b = copy.deepcopy(model).train()
    grads = dict((n, p.grad) for n, p in a.named_parameters())
    with torch.no_grad():
        for n, p in list(b.named_parameters())[:cut]:
            p -= eta * grads[n]
    torch.manual_seed(seed)
    F.cross_entropy(b(x), y).backward()
    return grads[f"{layer}.weight"], dict(b.named_parameters())[f"{layer}.weight"].grad


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_ics_gradient_change_equals_a_direct_computation(dropout):
    model = _net(dropout)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    before = copy.deepcopy(model.state_dict())
    layers, eta = ["0", "4", "7"], 0.3
    torch.manual_seed(5)
    l2, cos = ics_gradient_change(model, x, y, layers, eta)
    for layer, d, c in zip(layers, l2, cos):
        G, G1 = _direct(model, x, y, layer, eta, seed=5)
        assert d == pytest.approx(float((G - G1).norm()), rel=1e-9, abs=1e-12)
        want = float((G * G1).sum() / (G.norm() * G1.norm()))
        assert c == pytest.approx(want, rel=1e-9)
    # the first layer has no earlier parameter: its gradient cannot shift; the later ones do
    assert l2[0] == 0.0 and cos[0] == pytest.approx(1.0)
    assert l2[1] > 0 and l2[2] > 0
    # the model is left as it was (running statistics included)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_ics_gradient_change_refuses_a_layer_without_weight_and_a_bad_eta():
    model = _net()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="'2'"):
        ics_gradient_change(model, x, y, ["2"], 0.1)
    with pytest.raises(ValueError, match="eta"):
        ics_gradient_change(model, x, y, ["0"], 0.0)
    with pytest.raises(ValueError, match="eta"):
        validate_probes({"i": {"kind": "ics", "eta": -1}})


def test_ics_probe_in_a_run_leaves_the_run_unchanged_and_equals_the_function():
    mixture = data.gaussian_mixture(**MIX)
    base = dict(data="gaussian_mixture", data_args=MIX, model="mlp", norm="bn",
                model_args={"widths": [16, 16], "dropout": 0.2}, batch_size=32, steps=9, optimizer="sgd", lr=0.1,
                momentum=0.9)
    plain = train(TrainConfig(**base), dataset=mixture, progress="none")
    probed = train(TrainConfig(**base, probes={"ics": {"kind": "ics", "every": 4}}), dataset=mixture,
                   progress="none")
    assert [r[:5] for r in probed.step_rows] == [r[:5] for r in plain.step_rows]
    r = probed.probes["ics"]
    json.dumps(r)
    assert r["steps"] == [0, 4, 8, 9]
    assert len(r["layers"]) == 3 and all(len(row) == 3 for row in r["ics_l2"] + r["ics_cos"])
    # the first Linear has no earlier parameter; deeper layers shift
    assert all(row[0] == 0.0 for row in r["ics_l2"]) and all(row[-1] > 0 for row in r["ics_l2"])
