"""The digit models: ST-CNNs (Jaderberg et al. 2015) and the CNNs they are compared with.

Sized to train on a 2-core CPU in minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._compat import renamed_kwargs
from ..modules import HeatmapHead, SpatialTransformer, TwoStageTransformer
from ._common import check_positive_int, conv_bn

__all__ = [
    "STCNN",
    "SmallCNN",
    "TinyCNN",
    "TutorialSTN",
    "light_localization",
    "stn_localization",
]


class SmallCNN(nn.Module):
    """A VGG-style digit classifier that accepts any input size (adaptive average pool).

    Args:
        in_channels: image channels.
        num_classes: number of classes.
        width: channels of the first stage (doubled twice).
        pool: side of the adaptive average pool before the classifier. 1 (global
            pooling) makes the classifier blind to where a feature is; 3 or 4 keeps a
            coarse layout, like the fully connected layers of the STN paper's CNN.
    """

    @renamed_kwargs(classes="num_classes")
    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, pool: int = 1
    ) -> None:
        super().__init__()
        check_positive_int(pool, "pool")
        w = width
        self.features = nn.Sequential(
            *conv_bn(in_channels, w),
            *conv_bn(w, w),
            nn.MaxPool2d(2),
            *conv_bn(w, 2 * w),
            *conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w * pool * pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyCNN(nn.Module):
    """The PyTorch STN tutorial's classifier without dropout, sized for the input.

    conv 5x5 (10) -> max-pool -> ReLU -> conv 5x5 (20) -> max-pool -> ReLU -> FC 50 ->
    ReLU -> FC. No batch-norm and no global pooling: its fully connected layer reads
    *where* each feature is, so a digit that moves, grows or turns looks new to it.
    That is the classifier a spatial transformer helps most (measured on RTS, 30
    epochs: 92.7% alone, 98.2% behind a heat-map transformer).

    Args:
        image_size: (H, W) it reads.
        in_channels, num_classes: as for :class:`SmallCNN`.
    """

    @renamed_kwargs(input_size="image_size", classes="num_classes")
    def __init__(
        self, image_size: Sequence[int] = (28, 28), in_channels: int = 1, num_classes: int = 10
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in image_size)
        if min(h, w) < 16:
            raise ValueError(
                f"TinyCNN needs inputs of at least 16 x 16 (two 5 x 5 convolutions and "
                f"pools), got {h} x {w}: use SmallCNN for smaller inputs"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 10, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_channels, h, w)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(n, 50), nn.ReLU(), nn.Linear(50, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@renamed_kwargs(input_size="image_size")
def stn_localization(
    in_channels: int = 1,
    image_size: Sequence[int] = (42, 42),
    features: int | None = 64,
) -> nn.Sequential:
    """A localisation network f_loc sized for the input: three conv/pool stages and an FC.

    The size of the flattened features is computed from ``image_size``, so the same
    call serves 28 x 28, 42 x 42 RTS and 60 x 60 cluttered digits. ``features=None``
    returns the fully convolutional part only (32 channels at 1/4 of the input's size),
    for a :class:`~attnviz.modules.stn.HeatmapHead`.
    """
    convs = [
        nn.Conv2d(in_channels, 16, 5, padding=2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.Conv2d(32, 32, 3, padding=1),
    ]
    layers: list[nn.Module] = []
    for i, conv in enumerate(convs):  # the fully convolutional part keeps 1/4 resolution
        pool = [nn.MaxPool2d(2)] if features is not None or i < 2 else []
        layers += [conv, *pool, nn.ReLU()]
    if features is None:
        return nn.Sequential(*layers)
    body = nn.Sequential(*layers, nn.Flatten())
    with torch.no_grad():
        n = body(torch.zeros(1, in_channels, *image_size)).shape[1]
    return nn.Sequential(*body, nn.Linear(n, features), nn.ReLU())


def light_localization(in_channels: int = 1) -> nn.Sequential:
    """A light fully convolutional f_loc (32 channels at 1/4 of the input's size): conv
    5 x 5 (8), pool, conv 3 x 3 (16), pool, conv 3 x 3 (32). About a fifth of the
    multiply-adds of :func:`stn_localization`'s, for the two-stage transformer, whose
    first stage only has to find and size the object."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
    )


class STCNN(nn.Module):
    """A spatial transformer in front of a CNN (the paper's ST-CNN).

    Args:
        image_size: (H, W) of the images.
        output_size: (H', W') the transformer samples; the classifier reads this.
        transform: ``"affine"`` or ``"attention"`` (scale + translation).
        in_channels, num_classes, width, pool: as for :class:`SmallCNN`.
        classifier: ``"small"`` (:class:`SmallCNN`) or ``"tiny"`` (:class:`TinyCNN`,
            which reads ``output_size``; ``width`` and ``pool`` do not apply).
        padding_value: background value outside the image (0 for [0, 1] digits).
        head: ``"linear"`` (the paper's FC regression layer, identity at the start),
            ``"heatmap"`` (:class:`~attnviz.modules.stn.HeatmapHead`: translation from a
            soft-argmax over a fully convolutional f_loc; finds digits in clutter) or
            ``"two-stage"`` (:class:`~attnviz.modules.TwoStageTransformer`: the heat-map
            head finds and sizes the digit, an angle head on its crop turns it upright;
            ``transform`` does not apply).
        init_scale: the zoom the heat-map head starts from (1: the identity).
        consistency: the two-stage transformer's rotation-consistency weight.
    """

    @renamed_kwargs(input_size="image_size", classes="num_classes")
    def __init__(
        self,
        image_size: Sequence[int] = (42, 42),
        output_size: Sequence[int] | None = (28, 28),
        transform: str = "affine",
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        padding_value: float | None = None,
        *,
        pool: int = 1,
        head: str = "linear",
        init_scale: float = 1.0,
        classifier: str = "small",
        consistency: float = 0.0,
    ) -> None:
        super().__init__()
        if classifier not in ("small", "tiny"):
            raise ValueError(f"classifier must be 'small' or 'tiny', got {classifier!r}")
        if consistency and head != "two-stage":
            raise ValueError("consistency needs head='two-stage'")
        self.stn: nn.Module
        if head == "two-stage":
            out = tuple(output_size or (28, 28))
            self.stn = TwoStageTransformer(
                light_localization(in_channels),
                32,
                in_channels,
                window_size=out,
                output_size=out,
                init_scale=init_scale,
                padding_value=padding_value,
                consistency=consistency,
            )
        elif head == "linear":
            if init_scale != 1.0:
                raise ValueError("init_scale needs head='heatmap' (the linear head starts at 1)")
            loc, regress = stn_localization(in_channels, image_size), None
        elif head == "heatmap":
            loc = stn_localization(in_channels, image_size, features=None)
            regress = HeatmapHead(32, transform, scale=init_scale)
        else:
            raise ValueError(f"head must be 'linear', 'heatmap' or 'two-stage', got {head!r}")
        if head != "two-stage":
            self.stn = SpatialTransformer(
                loc,
                output_size=output_size,
                transform=transform,
                padding_value=padding_value,
                head=regress,
            )
        if classifier == "tiny":
            self.cnn: nn.Module = TinyCNN(output_size or image_size, in_channels, num_classes)
        else:
            self.cnn = SmallCNN(in_channels, num_classes, width, pool=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(self.stn(x))

    @classmethod
    @renamed_kwargs(input_size="image_size")
    def for_rts(cls, image_size: Sequence[int] = (42, 42), **kwargs: Any) -> STCNN:
        """The ST-CNN for RTS digits: a heat-map transformer in front of :class:`TinyCNN`.

        Affine transform, :class:`~attnviz.modules.stn.HeatmapHead` starting at the
        identity, a 28 x 28 output read by the tutorial-sized classifier. Train the
        transformer with ``stn_param_groups(model, stn_lr=1e-3)``. Measured on a 2-core
        CPU (``make bench``; 30 epochs, 4,000 training digits): 98.2% test accuracy in
        48 s (97% after 24 s), against 92.7% for the same TinyCNN without the
        transformer (96.1% when given the same seconds). ``kwargs`` override any setting.
        """
        settings: dict[str, Any] = {
            "output_size": (28, 28),
            "transform": "affine",
            "head": "heatmap",
            "classifier": "tiny",
        }
        settings.update(kwargs)
        return cls(image_size, **settings)

    @classmethod
    def for_upright(cls, image_size: Sequence[int] = (42, 42), **kwargs: Any) -> STCNN:
        """The ST-CNN that turns digits upright: a two-stage transformer in front of
        :class:`TinyCNN`.

        :class:`~attnviz.modules.TwoStageTransformer` on :func:`light_localization`: the
        heat-map head finds and sizes the digit and samples a 28 x 28 crop, an angle head
        reads the crop and regresses the rotation, and the composed transform samples the
        input once. Train it with :func:`attnviz.train.fit_upright` (classifier first on
        nearly upright digits, then the transformer with the classifier frozen, then a
        short joint fine-tune). Use ``image_size=(28, 28), consistency=1.0`` for R
        (rotations of ±90°): :data:`attnviz.recipes.UPRIGHT`. ``kwargs`` override
        any setting.
        """
        settings: dict[str, Any] = {
            "output_size": (28, 28),
            "head": "two-stage",
            "classifier": "tiny",
        }
        settings.update(kwargs)
        return cls(image_size, **settings)

    @classmethod
    @renamed_kwargs(input_size="image_size")
    def for_clutter(cls, image_size: Sequence[int] = (60, 60), **kwargs: Any) -> STCNN:
        """The ST-CNN that learns to find digits in clutter (60 x 60 cluttered MNIST).

        The paper's attention transform (isotropic scale + translation) with a
        :class:`~attnviz.modules.stn.HeatmapHead`, starting from a window half the canvas
        wide, and a 10 x 10 output: too small to read a digit from the whole canvas, so
        zooming in pays. Train the transformer with ``stn_param_groups(model,
        stn_lr=1e-3)``. Measured on a 2-core CPU (``make bench``; 30 epochs, 4,000
        training digits): accuracy 97.2%, mean IoU of the sampled window with the digit's
        ink box 0.669 (0.088 for the whole canvas; 0.769 for the best square window),
        zoom learned from 0.5 down to 0.34, window centre correlated 0.99 with the digit's.
        ``kwargs`` override any of these settings.
        """
        settings: dict[str, Any] = {
            "output_size": (10, 10),
            "transform": "attention",
            "head": "heatmap",
            "init_scale": 0.5,
        }
        settings.update(kwargs)
        return cls(image_size, **settings)


class TutorialSTN(nn.Module):
    """The network of the PyTorch "Spatial Transformer Networks" tutorial, sized for the input.

    Kept as the reference users know (conv 10/20, dropout, FC 50; localisation conv
    8/10 and FC 32); only the flattened sizes follow ``image_size``. The tutorial
    trains it with SGD, lr 0.01, batch 64, 20 epochs.
    """

    @renamed_kwargs(input_size="image_size")
    def __init__(self, image_size: Sequence[int] = (28, 28)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        loc = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=7),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_loc = loc(torch.zeros(1, 1, *image_size)).shape[1]
            h = ((image_size[0] - 4) // 2 - 4) // 2
            w = ((image_size[1] - 4) // 2 - 4) // 2
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


# -- attention ResNets ----------------------------------------------------------------------
# The CBAM paper's placement (Woo et al., ECCV 2018, Fig. 3), which the SE paper also uses
# for SE-ResNet (Hu et al., Fig. 3): the attention re-weights the residual branch's output,
# after its last batch-norm and before the addition with the shortcut,
#
#     out = relu(A(F(x)) + shortcut(x)).
#
# A is built by name through :func:`attnviz.get_attention_layer`, so a layer registered with
# :func:`attnviz.register_attention_layer` works in every model here without model code.
