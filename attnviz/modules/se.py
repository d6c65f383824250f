"""Squeeze-and-Excitation block.

Hu, Shen, Albanie, Sun and Wu, "Squeeze-and-Excitation Networks", CVPR 2018 /
TPAMI 2020. Given U in R^{C x H x W}:

1. squeeze (eq. 2): z_c = 1 / (H W) sum_{i,j} u_c(i, j)
2. excitation (eq. 3): s = sigmoid(W2 relu(W1 z)), W1 in R^{C/r x C}, W2 in R^{C x C/r}
3. scale (eq. 4): x~_c = s_c * u_c

The excitation s (B x C) is the attention; it is the output of the ``gate``
submodule so that a forward hook sees exactly the weights that were applied.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SqueezeExcitation"]


def _hidden_size(channels: int, reduction: int) -> int:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"reduction must be a positive int (r in the SE paper), got {reduction!r}")
    return max(channels // reduction, 1)


class SqueezeExcitation(nn.Module):
    """Channel attention of the SE paper: x * sigmoid(W2 relu(W1 avgpool(x))).

    Args:
        channels: C, the number of input (and output) channels.
        reduction: r, the reduction ratio of eq. 3 (hidden size C // r, at least 1).

    Submodules:
        squeeze: global average pooling (eq. 2).
        fc1, relu, fc2: the excitation MLP W1, delta, W2 (eq. 3).
        gate: the final sigmoid; its output (B x C) is the attention s.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = _hidden_size(channels, reduction)
        self.channels = channels
        self.reduction = reduction
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(hidden, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.squeeze(x).flatten(1)
        s = self.gate(self.fc2(self.relu(self.fc1(z))))
        return x * s[:, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"
