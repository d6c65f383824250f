"""Convolutional Block Attention Module.

Woo, Park, Lee and Kweon, "CBAM: Convolutional Block Attention Module",
ECCV 2018. Given F in R^{C x H x W}, two gates in sequence (eq. 1):

    F'  = Mc(F) * F
    F'' = Ms(F') * F'

- channel (eq. 2): Mc(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), one MLP
  with hidden size C/r and ReLU shared by both descriptors;
- spatial (eq. 3): Ms(F) = sigmoid(f7x7([AvgPool_c(F); MaxPool_c(F)])).

Mc is the output of ``channel_gate.gate`` (B x C) and Ms the output of
``spatial_gate.gate`` (B x 1 x H x W), so a forward hook sees the applied maps.

The official release (Jongchan/attention-module) adds a batch-norm after the
7x7 convolution and stacks [max; mean]; ``SpatialGate(batch_norm=True)``
provides the batch-norm, and :mod:`attnviz.zoo` swaps the channel order when
it loads those weights. The defaults follow the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from .se import _hidden_size

__all__ = ["CBAM", "ChannelGate", "SpatialGate"]


class ChannelGate(nn.Module):
    """CBAM channel attention Mc (eq. 2): a shared MLP over avg- and max-pooled descriptors.

    Args:
        channels: C.
        reduction: r, the MLP's hidden size is C // r (at least 1).

    Submodules:
        mlp: Linear(C, C/r), ReLU, Linear(C/r, C), shared by both descriptors.
        gate: the sigmoid; its output (B x C) is Mc.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = _hidden_size(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, channels)
        )
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3))
        mx = x.amax(dim=(2, 3))
        mc = self.gate(self.mlp(avg) + self.mlp(mx))
        return x * mc[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM spatial attention Ms (eq. 3): a k x k convolution over [mean_c; max_c].

    Args:
        kernel_size: the convolution's size (7 in the paper); odd, so the map keeps H x W.
        batch_norm: add BatchNorm2d(1) after the convolution, as the official
            released weights need (the paper has none). The convolution then has no bias.

    Submodules:
        conv: Conv2d(2, 1, k, padding=k // 2), input channels [mean, max] in that order.
        bn: BatchNorm2d(1) or Identity.
        gate: the sigmoid; its output (B x 1 x H x W) is Ms.
    """

    def __init__(self, kernel_size: int = 7, batch_norm: bool = False) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be a positive odd int (7 in the CBAM paper), got {kernel_size!r}"
            )
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01) if batch_norm else nn.Identity()
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        ms = self.gate(self.bn(self.conv(pooled)))
        return x * ms


class CBAM(nn.Module):
    """Channel gate then spatial gate, in that order (eq. 1 of the CBAM paper).

    Args:
        channels: C, the number of input (and output) channels; first, as for every
            attention module in attnviz, so blocks can build any of them the same way.
        reduction: r of the channel gate's MLP (16 in the paper).
        spatial_kernel: size of the spatial gate's convolution (7 in the paper).
        spatial_batch_norm: batch-norm after the spatial convolution (official weights).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        spatial_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate(spatial_kernel, batch_norm=spatial_batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_gate(self.channel_gate(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
