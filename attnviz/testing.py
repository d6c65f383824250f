"""Helpers for testing attention capture on models of your own.

    model = attnviz.testing.randomise(timm.create_model("seresnet18"))
    with attnviz.capture(model, verify="raise") as rec:
        model(x)

A freshly built model hides mistakes: batch-norms with zero mean and unit variance,
zero-initialised last layers (a non-local block starts as the identity, a GC block adds
nothing), so a wrong record can still reproduce its module's output. :func:`randomise`
removes those coincidences before a faithfulness check.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["randomise"]


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give ``model`` non-trivial normalisation statistics and no all-zero parameter.

    Batch-norms get running means ~ N(0, 0.2^2), variances ~ U(0.5, 1.5), weights
    ~ U(0.5, 1.5) and biases ~ N(0, 0.1^2); every parameter that is all zeros gets
    N(0, 0.1^2) values. Changed in place, put in eval mode and returned.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                assert m.running_var is not None  # tracked together with running_mean
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()
