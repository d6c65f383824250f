"""Pretrained networks with attention: torchvision's SE networks and the official CBAM weights.

Two sources of trained attention:

- :func:`pretrained`: torchvision's ImageNet networks whose blocks contain
  Squeeze-and-Excitation (Hu et al., CVPR 2018) layers, ``torchvision.ops.SqueezeExcitation``:
  MobileNetV3 (Howard et al., ICCV 2019), EfficientNet (Tan and Le, ICML 2019) and
  RegNetY (Radosavovic et al., CVPR 2020). Weights come through torchvision's public
  weights API, so they download once into ``$TORCH_HOME/hub/checkpoints/`` and load
  from there afterwards (offline too).
- :func:`load_official_cbam`: the ResNet-50 + CBAM checkpoint released with the CBAM
  paper (Woo et al., ECCV 2018; github.com/Jongchan/attention-module, file
  ``RESNET50_CBAM_new_name_wrap.pth``, top-1 77.622%), which users download by hand,
  loaded into attnviz's own :func:`attnviz.models.resnet` so that every map is captured
  by :func:`attnviz.capture`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from .models import resnet

__all__ = [
    "OFFICIAL_CBAM_FILE",
    "SE_NETWORKS",
    "Pretrained",
    "load_official_cbam",
    "official_cbam_mapping",
    "official_cbam_resnet50",
    "predict",
    "pretrained",
    "weights_path",
]

_MBV3 = "MobileNetV3: SE (hard-sigmoid gate) in some inverted-residual blocks"
_EFF = "EfficientNet: SE (sigmoid gate, reduction 4 of the block input) in every MBConv block"
_EFF2 = "EfficientNetV2: SE in every MBConv block (the Fused-MBConv blocks have none)"
_REGY = "RegNetY: SE (reduction 4 of the block input) in every block"

#: torchvision networks that contain SE blocks, with where their SE layers sit.
SE_NETWORKS: dict[str, str] = {
    "mobilenet_v3_small": _MBV3,
    "mobilenet_v3_large": _MBV3,
    **{f"efficientnet_b{i}": _EFF for i in range(8)},
    **{f"efficientnet_v2_{s}": _EFF2 for s in ("s", "m", "l")},
    **{
        f"regnet_y_{s}": _REGY
        for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf")
    },
}

WeightsArg = Union[str, WeightsEnum, None]


@dataclass
class Pretrained:
    """A network ready for photos: the model, its weights and their preprocessing.

    Attributes:
        model: the network, in eval mode.
        weights: the torchvision weights enum member loaded, or ``None`` (random weights).
        transforms: turns a PIL image into the network's input tensor (3 x H x W): the
            weights' own ``weights.transforms()`` (resize, centre crop, ImageNet mean and
            std). For ``weights=None``: the same preprocessing of the architecture's default
            weights, the input an ImageNet-trained copy of the architecture expects.
        categories: class names, ``weights.meta["categories"]``; ``"class 0"``, ... when
            the weights are ``None``.
        name: the torchvision model name.
        pretrained: whether trained weights were loaded.
    """

    model: nn.Module
    weights: WeightsEnum | None
    transforms: Callable[[Any], torch.Tensor] = field(repr=False)
    categories: list[str] = field(repr=False)
    name: str
    pretrained: bool


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name not in SE_NETWORKS:
        raise ValueError(f"name must be one of {sorted(SE_NETWORKS)}, got {name!r}")
    return name


def _resolve_weights(name: str, weights: WeightsArg) -> WeightsEnum | None:
    """``"DEFAULT"``, a member name or a member of the model's weights enum -> the member."""
    enum = get_model_weights(name)
    choices = ["DEFAULT", *(w.name for w in enum)]
    if weights is None or isinstance(weights, enum):
        return weights
    if isinstance(weights, str):
        if weights not in choices:
            raise ValueError(f"unknown weights {weights!r} for {name}; choose one of {choices}")
        return enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    raise TypeError(
        f"weights must be None, one of the strings {choices} or a {enum.__name__} member, "
        f"got {weights!r}"
    )


def weights_path(name: str, weights: WeightsArg = "DEFAULT") -> Path:
    """Where torchvision caches (and looks for) a network's weights file.

    ``$TORCH_HOME/hub/checkpoints/<the file name the weights' URL ends with>``
    (``torch.hub.get_dir()``); a file placed there by hand loads without a network.

    Args:
        name: a key of :data:`SE_NETWORKS`.
        weights: ``"DEFAULT"``, a member name such as ``"IMAGENET1K_V2"``, or a member.

    Raises:
        ValueError: unknown name or weights, or ``weights=None``.
    """
    resolved = _resolve_weights(_check_name(name), weights)
    if resolved is None:
        raise ValueError("weights=None has no file; pass 'DEFAULT' or a weights name")
    file_name = os.path.basename(urlparse(resolved.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _num_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features


def pretrained(name: str, *, weights: WeightsArg = "DEFAULT", progress: bool = True) -> Pretrained:
    """A torchvision network with SE blocks, ImageNet-trained, in eval mode.

    Built with ``torchvision.models.get_model(name, weights=...)``: the weights download
    on first use (checked against their hash) into ``$TORCH_HOME/hub/checkpoints/``
    (see :func:`weights_path`) and load from there afterwards, with no network.

    Args:
        name: a key of :data:`SE_NETWORKS`, e.g. ``"mobilenet_v3_large"``,
            ``"efficientnet_b0"``, ``"regnet_y_800mf"``.
        weights: ``"DEFAULT"`` (torchvision's best), a member name (``"IMAGENET1K_V1"``),
            a member of the model's weights enum, or ``None`` for random weights.
        progress: show a download progress bar.

    Returns:
        A :class:`Pretrained` with the model, weights, transforms and category names.

    Raises:
        ValueError: an unknown name or weights name.
        TypeError: weights of another type (e.g. another model's enum).
    """
    name = _check_name(name)
    resolved = _resolve_weights(name, weights)
    model = get_model(name, weights=resolved, progress=progress).eval()
    if resolved is None:
        transforms = get_model_weights(name).DEFAULT.transforms()
        categories = [f"class {i}" for i in range(_num_classes(model))]
    else:
        transforms = resolved.transforms()
        categories = list(resolved.meta["categories"])
    return Pretrained(model, resolved, transforms, categories, name, resolved is not None)


def predict(pre: Pretrained, image: Any, topk: int = 5) -> list[tuple[str, float]]:
    """The network's ``topk`` classes for one image, most probable first.

    Args:
        pre: from :func:`pretrained`.
        image: anything :func:`attnviz.photos.load_image` reads (path, bytes, PIL image,
            array), or an already prepared tensor (3 x H x W or 1 x 3 x H x W).
        topk: how many classes to return.

    Returns:
        ``[(category, softmax probability), ...]``. The model's training flag is restored.

    Raises:
        ValueError: ``topk`` not a positive int, or a tensor of another shape.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    x = _network_input(pre, image)
    device = next(pre.model.parameters()).device
    was_training = pre.model.training
    try:
        pre.model.eval()
        with torch.inference_mode():
            probs = pre.model(x.to(device)).softmax(dim=1)[0]
    finally:
        pre.model.train(was_training)
    values, indices = probs.topk(min(topk, probs.numel()))
    return [(pre.categories[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]


def _network_input(pre: Pretrained, image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 4 else image.unsqueeze(0)
        if x.dim() != 4 or x.shape[:2] != (1, 3):
            raise ValueError(
                f"a tensor image must be 3 x H x W or 1 x 3 x H x W, got {tuple(image.shape)}"
            )
        return x
    from .photos import prepare  # photos is a leaf module; import here keeps zoo light

    return prepare(image, pre.transforms)


# -- the official CBAM checkpoint --------------------------------------------------------------
# Jongchan/attention-module, MODELS/cbam.py and model_resnet.py: a torchvision-style ResNet-50
# whose Bottlenecks hold ``cbam`` after bn3, trained under DataParallel (keys "module.*").

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


def official_cbam_resnet50() -> nn.Module:
    """attnviz's ResNet-50 + CBAM in the official release's configuration, untrained.

    ``resnet("resnet50", attention="cbam", attention_kwargs={"reduction": 16,
    "spatial_batch_norm": True})``: r = 16 and a batch-norm after the spatial 7 x 7
    convolution, as in the released code.
    """
    return resnet(
        "resnet50",
        attention="cbam",
        attention_kwargs={"reduction": 16, "spatial_batch_norm": True},
    )


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
        pickle.UnpicklingError: the file holds objects ``weights_only`` refuses (the message
            says how to extract the weights from a file you trust).
        ValueError: the weights do not fit: the message lists unused and missing keys and
            mismatched shapes.
    """
    checkpoint = path if isinstance(path, Mapping) else _read_checkpoint(path, map_location)
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"the checkpoint's 'state_dict' is a {type(state_dict).__name__}")
    model = official_cbam_resnet50()
    _load_strict(model, official_cbam_mapping(state_dict))
    return model.eval()


def _read_checkpoint(path: _PathLike, map_location: Any) -> Mapping[str, Any]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path or a dict, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no CBAM checkpoint at {str(path)!r}: download {OFFICIAL_CBAM_FILE} from the link in "
            "the README of https://github.com/Jongchan/attention-module and pass its path"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            f"torch.load(weights_only=True) refused {str(path)!r}: it holds Python objects other "
            "than tensors, numbers, strings and containers (perhaps in its 'optimizer' entry), "
            "and unpickling those can run code. If you trust the file, extract the weights "
            "once: ck = torch.load(path, weights_only=False); torch.save({'state_dict': "
            "ck['state_dict']}, 'cbam_weights.pth'), then load 'cbam_weights.pth' (or pass "
            f"ck to load_official_cbam). torch said: {e}"
        ) from e
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict"
        )
    return checkpoint


def _load_strict(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load every key, or raise listing what is unused, missing or of the wrong shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unused = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {_shape(v)}, model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and _shape(v) != tuple(own[k].shape)
    ]
    if missing or unused or shapes:
        raise ValueError(
            "the checkpoint does not fit ResNet-50 + CBAM (reduction 16, spatial batch-norm): "
            f"unused keys of the file (after renaming) {_listing(unused)}; model keys missing "
            f"from the file {_listing(missing)}; shape mismatches {_listing(shapes)}. Is it the "
            f"official {OFFICIAL_CBAM_FILE}?"
        )
    full = {**{k: v for k, v in own.items() if k.endswith(".num_batches_tracked")}, **state_dict}
    model.load_state_dict(full, strict=True)


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _listing(items: list[str], n: int = 10) -> str:
    shown = ", ".join(repr(k) for k in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"
