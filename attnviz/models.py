"""Models the notebooks train: ST-CNNs for digits and (later) attention ResNets.

Every model is small enough to train on a 2-core CPU in about a minute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .modules import SpatialTransformer

__all__ = ["STCNN", "SmallCNN", "TutorialSTN", "stn_localization"]


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """A VGG-style digit classifier that accepts any input size (global average pool).

    Args:
        in_channels: image channels.
        classes: number of classes.
        width: channels of the first stage (doubled twice).
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def stn_localization(
    in_channels: int = 1, input_size: Sequence[int] = (42, 42), features: int = 64
) -> nn.Sequential:
    """A localisation network f_loc sized for the input: three conv/pool stages and an FC.

    The size of the flattened features is computed from ``input_size``, so the same
    call serves 28 x 28, 42 x 42 RTS and 60 x 60 cluttered digits.
    """
    body = nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(16, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(),
    )  # fmt: skip
    with torch.no_grad():
        n = body(torch.zeros(1, in_channels, *input_size)).shape[1]
    return nn.Sequential(*body, nn.Linear(n, features), nn.ReLU())


class STCNN(nn.Module):
    """A spatial transformer in front of :class:`SmallCNN` (the paper's ST-CNN).

    Args:
        input_size: (H, W) of the images.
        output_size: (H', W') the transformer samples; the classifier reads this.
        transform: ``"affine"`` or ``"attention"`` (scale + translation).
        in_channels, classes, width: as for :class:`SmallCNN`.
        padding_value: background value outside the image (0 for [0, 1] digits).
    """

    def __init__(
        self,
        input_size: Sequence[int] = (42, 42),
        output_size: Sequence[int] | None = (28, 28),
        transform: str = "affine",
        in_channels: int = 1,
        classes: int = 10,
        width: int = 16,
        padding_value: float | None = None,
    ) -> None:
        super().__init__()
        self.stn = SpatialTransformer(
            stn_localization(in_channels, input_size),
            output_size=output_size,
            transform=transform,
            padding_value=padding_value,
        )
        self.cnn = SmallCNN(in_channels, classes, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(self.stn(x))


class TutorialSTN(nn.Module):
    """The network of the PyTorch "Spatial Transformer Networks" tutorial, sized for the input.

    Kept as the reference users know (conv 10/20, dropout, FC 50; localisation conv
    8/10 and FC 32); only the flattened sizes follow ``input_size``. The tutorial
    trains it with SGD, lr 0.01, batch 64, 20 epochs.
    """

    def __init__(self, input_size: Sequence[int] = (28, 28)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        loc = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=7), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
            nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            n_loc = loc(torch.zeros(1, 1, *input_size)).shape[1]
            h = ((input_size[0] - 4) // 2 - 4) // 2
            w = ((input_size[1] - 4) // 2 - 4) // 2
        self.stn = SpatialTransformer(nn.Sequential(*loc, nn.Linear(n_loc, 32), nn.ReLU(True)))
        self.fc1 = nn.Linear(20 * h * w, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stn(x)
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))
        x = torch.relu(torch.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.dropout(x, 0.5, self.training)
        return self.fc2(x)
