"""Helpers shared by the tests of the layer family (imported by name: pytest puts this directory on sys.path)."""

import torch


def randomize_affine(layer):
    """Non-trivial affine parameters (weight in [0.5, 1.5), bias ~ N(0, 1)) where the layer has them."""
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(torch.rand_like(layer.weight) + 0.5)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn_like(layer.bias))
    return layer
