"""Tiny seeded CPU models shared by the tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnviz import CBAM, SpatialTransformer, SqueezeExcitation


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class TinyAttentionNet(nn.Module):
    """conv -> SE -> conv -> CBAM -> pool -> fc: one of each channel/spatial module."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcitation(channels, reduction=4)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, stride=2)
        self.drop = nn.Dropout(0.5)
        self.cbam = CBAM(channels, reduction=4)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(torch.relu(self.bn1(self.conv1(x))))
        x = self.cbam(self.drop(torch.relu(self.conv2(x))))
        return self.fc(x.mean(dim=(2, 3)))


def tiny_localization() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(8), nn.ReLU()
    )


class TinySTNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        loc = nn.Sequential(
            nn.Conv2d(1, 4, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 12 * 12, 8),
            nn.ReLU(),
        )
        self.stn = SpatialTransformer(loc, output_size=(20, 20))
        self.fc = nn.Linear(400, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stn(x).flatten(1))


@pytest.fixture
def tiny_net() -> TinyAttentionNet:
    return TinyAttentionNet()


@pytest.fixture
def tiny_stnet() -> TinySTNet:
    return TinySTNet()
