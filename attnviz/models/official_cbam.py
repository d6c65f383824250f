"""The ResNet-50 + CBAM released with the CBAM paper, as attnviz's own network.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018; the release is
github.com/Jongchan/attention-module (MODELS/cbam.py and MODELS/model_resnet.py): a
torchvision-style ResNet-50 whose Bottlenecks hold ``cbam`` after ``bn3``, trained under
``DataParallel`` (keys ``"module.*"``), file ``RESNET50_CBAM_new_name_wrap.pth`` (top-1
77.622%), downloaded by hand. This file maps that checkpoint onto
:func:`attnviz.models.resnet` with CBAM (reduction 16, batch norm after the spatial
7 x 7 convolution, the official final pooling), so that :func:`attnviz.capture` records
every map of the released network. The file is read through :mod:`attnviz.storage`
(``weights_only=True``, strict loading, one message for a pickle or a mismatch).

    from attnviz.models.official_cbam import load_official_cbam
    model = load_official_cbam("RESNET50_CBAM_new_name_wrap.pth")

(also ``attnviz.zoo.load_official_cbam`` and ``zoo.pretrained("official-cbam", weights=path)``)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .. import storage
from .resnets import resnet

__all__ = [
    "OFFICIAL_CBAM_FILE",
    "OfficialAvgPool",
    "load_official_cbam",
    "official_cbam_mapping",
    "official_cbam_resnet50",
]

#: the file name of the released ResNet-50 + CBAM checkpoint
OFFICIAL_CBAM_FILE = "RESNET50_CBAM_new_name_wrap.pth"

# official sub-key (inside a block) -> attnviz's
_CBAM_RENAMES = {
    "cbam.ChannelGate.mlp.1.": "attention.channel_gate.mlp.0.",
    "cbam.ChannelGate.mlp.3.": "attention.channel_gate.mlp.2.",
    "cbam.SpatialGate.spatial.conv.": "attention.spatial_gate.conv.",
    "cbam.SpatialGate.spatial.bn.": "attention.spatial_gate.bn.",
}
_SPATIAL_CONV = "attention.spatial_gate.conv.weight"


def _rename(key: str) -> str:
    for old, new in _CBAM_RENAMES.items():
        head, sep, tail = key.partition(f".{old}")
        if sep:
            return f"{head}.{new}{tail}"
    return key


def official_cbam_mapping(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official checkpoint's ``state_dict`` under attnviz's names and channel order.

    - the ``module.`` prefix of ``DataParallel`` is stripped;
    - ``...cbam.ChannelGate.mlp.1/3`` (index 0 is a Flatten) become
      ``...attention.channel_gate.mlp.0/2``;
    - ``...cbam.SpatialGate.spatial.conv/bn`` become ``...attention.spatial_gate.conv/bn``;
    - the 7 x 7 convolution's two input channels are swapped: the official ChannelPool
      stacks [max; mean], attnviz (as the paper's eq. 3) [mean; max].

    Other keys (the ResNet backbone, named as torchvision's) pass unchanged; the tensors
    are shared, except the swapped convolution weights. No key is checked here:
    :func:`load_official_cbam` checks that the result fits the model exactly.

    Args:
        state_dict: the checkpoint's ``"state_dict"`` entry.

    Returns:
        A new dict, attnviz key -> tensor.

    Raises:
        TypeError: ``state_dict`` is not a mapping of str keys.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {key!r}")
        new = _rename(key.removeprefix("module."))
        if new.endswith(_SPATIAL_CONV) and isinstance(value, torch.Tensor) and value.dim() == 4:
            value = value.flip(1)  # [max, mean] -> [mean, max]
        out[new] = value
    return out


class OfficialAvgPool(nn.AvgPool2d):
    """The official network's final pooling, ``nn.AvgPool2d(7)`` (MODELS/model_resnet.py).

    At 224 x 224 input the last feature map is 7 x 7 and this is the global average. At
    other sizes the official network averages only the top-left 7 x 7 window (a 320 x 320
    input gives a 10 x 10 map), and fails once the map reaches 14 x 14. This module does
    exactly what the official one does, so outputs match the official code at every size
    it accepts, warns when the map is not 7 x 7 (the network was trained at 224 x 224) and
    refuses the sizes the official code cannot run, with the fix.
    """

    def __init__(self) -> None:
        super().__init__(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not (7 <= h < 14 and 7 <= w < 14):
            raise ValueError(
                f"the official CBAM network pools its final feature map with AvgPool2d(7) and "
                f"needs it 7 x 7 to 13 x 13 (inputs of about 193 to 416 pixels); this input "
                f"gives {h} x {w}. Prepare photos with zoo.official_cbam_transforms() "
                "(resize 256, centre crop 224), what the network was trained on"
            )
        if (h, w) != (7, 7):
            warnings.warn(
                f"official CBAM network on a final {h} x {w} map: its AvgPool2d(7) averages "
                "only the top-left 7 x 7, as the official code does, so predictions degrade; "
                "it was trained at 224 x 224 (zoo.official_cbam_transforms())",
                stacklevel=2,
            )
        return super().forward(x)


def official_cbam_resnet50() -> nn.Module:
    """attnviz's ResNet-50 + CBAM in the official release's configuration, untrained.

    ``resnet("resnet50", attention="cbam", attention_kwargs={"reduction": 16,
    "spatial_batch_norm": True})``: r = 16 and a batch-norm after the spatial 7 x 7
    convolution, as in the released code, and its final :class:`OfficialAvgPool`.
    """
    model = resnet(
        "resnet50",
        attention="cbam",
        attention_kwargs={"reduction": 16, "spatial_batch_norm": True},
    )
    model.avgpool = OfficialAvgPool()
    return model


_PathLike = Union[str, os.PathLike]


def load_official_cbam(
    path: _PathLike | Mapping[str, Any], *, map_location: Any = "cpu"
) -> nn.Module:
    """The ResNet-50 + CBAM released with the CBAM paper, as attnviz's model, in eval mode.

    Download ``RESNET50_CBAM_new_name_wrap.pth`` (about 100 MB) by hand from the link in
    the README of github.com/Jongchan/attention-module. The file is read with
    ``torch.load(weights_only=True)``, which unpickles only tensors, numbers, strings and
    containers (the file holds ``state_dict``, ``epoch``, ``arch``, ``best_prec1`` and the
    SGD ``optimizer`` state, all of those). Keys are mapped by
    :func:`official_cbam_mapping` and loaded strictly: every weight of the file is used
    and every weight of the model is set (only ``num_batches_tracked`` counters, absent
    from old checkpoints and unused in eval mode, may be missing).

    Args:
        path: the checkpoint file, or what ``torch.load`` returned for it (the whole dict
            or its ``state_dict``).
        map_location: as for ``torch.load``; the default reads CUDA-saved tensors on CPU.

    Returns:
        :func:`official_cbam_resnet50` with the released weights, in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        attnviz.storage.UnsafeFileError: the file holds objects ``weights_only`` refuses (a
            ``pickle.UnpicklingError``; the message says how to extract the weights from a
            file you trust).
        ValueError: the weights do not fit: the message lists unused and missing keys and
            mismatched shapes.
    """
    checkpoint = path if isinstance(path, Mapping) else _read_checkpoint(path, map_location)
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"the checkpoint's 'state_dict' is a {type(state_dict).__name__}")
    model = official_cbam_resnet50()
    storage.load_strict(
        model,
        official_cbam_mapping(state_dict),
        source="the checkpoint" if isinstance(path, Mapping) else f"the checkpoint {path}",
        model_name="ResNet-50 + CBAM (reduction 16, spatial batch-norm)",
        renamed=True,
        optional=(".num_batches_tracked",),
        hint=f"Is it the official {OFFICIAL_CBAM_FILE}?",
    )
    return model.eval()


def _read_checkpoint(path: _PathLike, map_location: Any) -> Mapping[str, Any]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path or a dict, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no CBAM checkpoint at {str(path)!r}: download {OFFICIAL_CBAM_FILE} from the link in "
            "the README of https://github.com/Jongchan/attention-module and pass its path"
        )
    checkpoint = storage.read(path, map_location=map_location, what="CBAM checkpoint")
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict"
        )
    return checkpoint
