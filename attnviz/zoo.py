"""Pretrained networks with attention, each loaded through its library's own mechanism.

Three sources of trained attention:

- :func:`pretrained` with a torchvision name: torchvision's ImageNet networks whose blocks
  contain Squeeze-and-Excitation (Hu et al., CVPR 2018) layers,
  ``torchvision.ops.SqueezeExcitation``: MobileNetV3 (Howard et al., ICCV 2019),
  EfficientNet (Tan and Le, ICML 2019) and RegNetY (Radosavovic et al., CVPR 2020).
  Weights come through torchvision's public weights API, so they download once into
  ``$TORCH_HOME/hub/checkpoints/`` and load from there afterwards (offline too).
- :func:`pretrained` with ``"timm/<name>"``: any timm model (timm installed: ``pip install
  attnviz[timm]``), e.g. ``"timm/ecaresnet50d"``, ``"timm/gcresnet50t"``,
  ``"timm/botnet26t_256"``; weights through ``timm.create_model(name, pretrained=True)``,
  which downloads once into the Hugging Face cache, or from a local file.
- :func:`load_official_cbam` (or ``pretrained("official-cbam", weights=path)``): the
  ResNet-50 + CBAM checkpoint released with the CBAM paper (Woo et al., ECCV 2018;
  github.com/Jongchan/attention-module, file ``RESNET50_CBAM_new_name_wrap.pth``, top-1
  77.622%), which users download by hand, loaded into attnviz's own
  :func:`attnviz.models.resnet` so that every map is captured by :func:`attnviz.capture`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from ._compat import module_getattr
from .models.official_cbam import (
    OFFICIAL_CBAM_FILE,
    OfficialAvgPool,
    load_official_cbam,
    official_cbam_mapping,
    official_cbam_resnet50,
)
from .running import inference, model_device

__all__ = [
    "FAMILIES",
    "OFFICIAL_CBAM",
    "OFFICIAL_CBAM_FILE",
    "SE_NETWORKS",
    "TIMM_PREFIX",
    "TORCHVISION_NETWORKS",
    "VIT_NETWORKS",
    "WINDOW_NETWORKS",
    "Family",
    "OfficialAvgPool",
    "Preprocess",
    "Pretrained",
    "load_official_cbam",
    "load_or_random",
    "official_cbam_mapping",
    "official_cbam_resnet50",
    "official_cbam_transforms",
    "pretrained",
    "top_classes",
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

_VIT = (
    "ViT (Dosovitskiy et al., ICLR 2021): multi-head self-attention over image patches and "
    "a class token in every encoder block (torch's nn.MultiheadAttention)"
)
#: torchvision's vision transformers, by name (patch 16 or 32 pixels; vit_h_14: 14).
VIT_NETWORKS: dict[str, str] = {
    n: _VIT for n in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
}
_SWIN = (
    "Swin Transformer (Liu et al., ICCV 2021; v2: CVPR 2022): multi-head self-attention "
    "within 7 x 7 (v2: 8 x 8) windows, shifted by half a window on alternate blocks"
)
_MAXVIT = (
    "MaxViT (Tu et al., ECCV 2022): MBConv with SE, then attention within 7 x 7 blocks and "
    "across a dilated 7 x 7 grid"
)
#: torchvision's hierarchical transformers, by name
WINDOW_NETWORKS: dict[str, str] = {
    **{n: _SWIN for n in ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b")},
    "maxvit_t": _MAXVIT,
}
#: every torchvision network :func:`pretrained` takes by name
TORCHVISION_NETWORKS: dict[str, str] = {**SE_NETWORKS, **VIT_NETWORKS, **WINDOW_NETWORKS}


@dataclass(frozen=True)
class Family:
    """A family of pretrained attention networks, and what attnviz shows of it on photos.

    Attributes:
        name: the family's name.
        attention: what the networks apply, in a sentence.
        shows: the picture attnviz draws of it.
        models: names for :func:`pretrained`, the first the suggested one (its weights
            tag included for timm, so the download is the one described).
    """

    name: str
    attention: str
    shows: str
    models: tuple[str, ...]


#: the attention families a user can download, in the order the photo notebook lists them
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "vision transformer",
            "multi-head self-attention between every pair of patches (and the class token)",
            "the class token's attention per head and averaged, attention rollout, any "
            "patch as a query",
            (
                "vit_b_16",
                "timm/deit_small_patch16_224.fb_in1k",
                "timm/deit_tiny_distilled_patch16_224.fb_in1k",
                "timm/vit_small_patch16_224.dino",
                "timm/vit_betwixt_patch16_reg4_gap_256.sbb_in1k",
            ),
        ),
        Family(
            "Swin",
            "multi-head self-attention within shifted windows, four stages of patch merging",
            "any position as a query at every stage, its window placed on the image (the "
            "cyclic shift undone); attention received",
            (
                "swin_t",
                "swin_v2_t",
                "timm/swin_tiny_patch4_window7_224.ms_in1k",
                "timm/swinv2_tiny_window8_256.ms_in1k",
            ),
        ),
        Family(
            "MaxViT / CoAtNet",
            "attention within local blocks and across a dilated grid (MaxViT); global "
            "attention in late stages (CoAtNet); SE in the convolutions",
            "any position as a query, the block or the dilated grid it sees; SE channels",
            ("maxvit_t", "timm/maxvit_tiny_tf_224.in1k", "timm/coatnet_0_rw_224.sw_in1k"),
        ),
        Family(
            "BEiT / EVA / CaiT",
            "ViT-style attention with relative-position biases (BEiT), rotary position "
            "embeddings (EVA-02), or class attention after patch-only layers (CaiT)",
            "any patch as a query; the class token's attention where it has one",
            (
                "timm/cait_xxs24_224.fb_dist_in1k",
                "timm/eva02_tiny_patch14_224.mim_in22k",
                "timm/beit_base_patch16_224.in22k_ft_in22k_in1k",
            ),
        ),
        Family(
            "PVT / Twins",
            "attention whose keys are a strided reduction of the map (spatial-reduction "
            "attention), or local windows then sub-sampled global attention (Twins)",
            "any position as a query over the coarser key grid",
            ("timm/pvt_v2_b0.in1k", "timm/twins_svt_small.in1k"),
        ),
        Family(
            "BoTNet",
            "multi-head self-attention over the last stages' feature maps (Srinivas et al., 2021)",
            "any position as a query; attention received",
            ("timm/botnet26t_256.c1_in1k",),
        ),
        Family(
            "HaloNet",
            "multi-head self-attention within local windows with a halo (Vaswani et al., 2021)",
            "any position as a query, its window drawn where it is",
            ("timm/halonet26t.a1h_in1k",),
        ),
        Family(
            "GCNet",
            "a softmax over positions pools a global context (Cao et al., 2019)",
            "the context-pooling map as a spatial overlay",
            ("timm/gcresnet50t.ra2_in1k", "timm/gcresnet33ts.ra2_in1k"),
        ),
        Family(
            "ResNeSt",
            "split attention: a softmax over radix branches per channel (Zhang et al., 2022)",
            "per-channel branch choice",
            ("timm/resnest26d.gluon_in1k", "timm/resnest14d.gluon_in1k"),
        ),
        Family(
            "SKNet",
            "selective kernel: a softmax over 3x3 and 5x5 branches per channel (Li et al., 2019)",
            "per-channel branch choice",
            ("timm/skresnet18.ra_in1k",),
        ),
        Family(
            "ECA",
            "efficient channel attention: a 1-D convolution over pooled channels (Wang et "
            "al., 2020)",
            "channel weights; their weighted activation on the photo",
            ("timm/ecaresnet26t.ra2_in1k", "timm/ecaresnet50d.miil_in1k"),
        ),
        Family(
            "squeeze-and-excitation",
            "channel gates from pooled features (Hu et al., 2018)",
            "channel weights; their weighted activation on the photo",
            ("mobilenet_v3_large", "efficientnet_b0", "regnet_y_800mf", "timm/seresnet50.a1_in1k"),
        ),
        Family(
            "CBAM",
            "channel then spatial gates (Woo et al., 2018); the authors' released ResNet-50",
            "the spatial gate's map as an overlay",
            ("official-cbam",),
        ),
    )
}

WeightsArg = Union[str, WeightsEnum, os.PathLike, None]

#: prefix of timm model names in :func:`pretrained`
TIMM_PREFIX = "timm/"
#: the name :func:`pretrained` gives the official CBAM release
OFFICIAL_CBAM = "official-cbam"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocess:
    """A classifier's preprocessing: resize the shorter side, centre crop, scale, normalise.

    The steps and attribute names of torchvision's weights transforms
    (``weights.transforms()``), so code that reads ``crop_size``, ``resize_size``,
    ``mean`` and ``std`` (e.g. :func:`attnviz.photos.network_view`) treats every source
    alike.

    Args:
        crop_size: side of the centred square crop, the network's input.
        resize_size: the shorter side is resized to this first.
        mean, std: per-channel normalisation.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (the resize).
    """

    def __init__(
        self,
        crop_size: int,
        resize_size: int,
        mean: tuple[float, ...] = _IMAGENET_MEAN,
        std: tuple[float, ...] = _IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> None:
        from torchvision.transforms import InterpolationMode

        self.crop_size, self.resize_size = [int(crop_size)], [int(resize_size)]
        self.mean, self.std = list(mean), list(std)
        self.interpolation = InterpolationMode(interpolation)

    def __call__(self, image: Any) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        image = TF.resize(image, self.resize_size, interpolation=self.interpolation, antialias=True)
        image = TF.center_crop(image, self.crop_size)
        if not isinstance(image, torch.Tensor):
            image = TF.pil_to_tensor(image)
        image = TF.convert_image_dtype(image, torch.float)
        return TF.normalize(image, mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        return (
            f"Preprocess(crop_size={self.crop_size[0]}, resize_size={self.resize_size[0]}, "
            f"mean={self.mean}, std={self.std}, interpolation={self.interpolation.value!r})"
        )


@dataclass
class Pretrained:
    """A network ready for photos: the model, its weights and their preprocessing.

    Attributes:
        model: the network, in eval mode.
        weights: what was loaded: a torchvision weights enum member, a timm weights source
            (``"timm:<hub id>"`` or a file path) or the official CBAM file; ``None`` for
            random weights.
        transforms: turns a PIL image into the network's input tensor (3 x H x W): the
            weights' own preprocessing (resize, centre crop, ImageNet mean and std). For
            random weights: the preprocessing a trained copy of the architecture expects.
        class_names: class names (ImageNet's for ImageNet networks); ``"class 0"``, ...
            when unknown.
        name: the name given to :func:`pretrained`.
        pretrained: whether trained weights were loaded.

    A network without classifier (a self-supervised backbone such as DINO's) has no
    class names and :attr:`classifier` False: its attention can be shown, but there are
    no predictions and no Grad-CAM.
    """

    model: nn.Module
    weights: Any
    transforms: Callable[[Any], torch.Tensor] = field(repr=False)
    class_names: list[str] = field(repr=False)
    name: str
    pretrained: bool

    @property
    def classifier(self) -> bool:
        """Whether the network ends in a classifier (has class names)."""
        return bool(self.class_names)

    @property
    def categories(self) -> list[str]:
        """0.1's name for :attr:`class_names` (warns)."""
        warnings.warn(
            "Pretrained: 'categories' was renamed 'class_names' in attnviz 0.2; the old name "
            "goes in 0.3",
            FutureWarning,
            stacklevel=2,
        )
        return self.class_names


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name not in TORCHVISION_NETWORKS:
        raise ValueError(
            f"name must be one of {sorted(TORCHVISION_NETWORKS)}, '{TIMM_PREFIX}<timm model "
            f"name>' or '{OFFICIAL_CBAM}', got {name!r}"
        )
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
        name: a key of :data:`TORCHVISION_NETWORKS`.
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


def _imagenet_categories() -> list[str]:
    """ImageNet-1k class names, as torchvision's weights list them (shipped, offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def pretrained(name: str, *, weights: WeightsArg = "DEFAULT", progress: bool = True) -> Pretrained:
    """A network with attention, ImageNet-trained (or with random weights), in eval mode.

    Args:
        name: a torchvision network (a key of :data:`TORCHVISION_NETWORKS`: SE networks
            such as ``"mobilenet_v3_large"``, ``"efficientnet_b0"``, ``"regnet_y_800mf"``,
            vision transformers such as ``"vit_b_16"``), a timm
            model as ``"timm/<name>"`` (e.g. ``"timm/ecaresnet50d"``), or
            ``"official-cbam"``.
        weights: torchvision: ``"DEFAULT"``, a member name (``"IMAGENET1K_V1"``) or a member
            of the model's weights enum. timm: ``"DEFAULT"`` (the model's default pretrained
            tag, through ``timm.create_model(pretrained=True)``, cached by Hugging Face's
            hub on first use) or the path of a weights file (timm's
            ``pretrained_cfg_overlay={"file": path}``). official-cbam: the path of the
            released checkpoint. ``None`` for random weights.
        progress: show a download progress bar (torchvision).

    Returns:
        A :class:`Pretrained` with the model, weights, transforms and category names.

    Raises:
        ValueError: an unknown name or weights name.
        TypeError: weights of another type (e.g. another model's enum).
        ImportError: a timm model without timm installed (the message names the extra).
    """
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _timm_pretrained(name, weights)
    if name == OFFICIAL_CBAM:
        return _official_cbam_pretrained(weights)
    name = _check_name(name)
    resolved = _resolve_weights(name, weights)
    model = get_model(name, weights=resolved, progress=progress).eval()
    if resolved is None:
        transforms = get_model_weights(name).DEFAULT.transforms()
        class_names = [f"class {i}" for i in range(_num_classes(model))]
    else:
        transforms = resolved.transforms()
        class_names = list(resolved.meta["categories"])
    return Pretrained(model, resolved, transforms, class_names, name, resolved is not None)


def load_or_random(
    name: str, weights: WeightsArg = "DEFAULT", *, loader: Callable[..., Pretrained] | None = None
) -> tuple[Pretrained, str | None]:
    """:func:`pretrained`, or the same network with random weights when trained weights
    cannot be had (offline and not cached, no file): ``(pre, why)``, ``why`` None when
    the weights loaded (or ``weights=None`` was asked).

    Errors that no weights would fix (an unknown name, timm not installed) are raised.
    """
    load = pretrained if loader is None else loader
    if weights is None:
        return load(name, weights=None), None
    try:
        return load(name, weights=weights), None
    except (ImportError, TypeError):
        raise
    except Exception as e:  # no network and no cached file, most often
        naming = ("name must be one of", "has no model", "unknown weights")
        if isinstance(e, ValueError) and any(n in str(e) for n in naming):
            raise  # a wrong name: no weights file would fix it
        return load(name, weights=None), f"{type(e).__name__}: {e}"


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "timm models need timm: pip install 'attnviz[timm]' (or pip install timm)"
        ) from e
    return timm


def _timm_pretrained(name: str, weights: WeightsArg) -> Pretrained:
    timm = _import_timm()
    arch = name[len(TIMM_PREFIX) :]
    if not timm.is_model(arch):
        raise ValueError(f"timm has no model {arch!r}; timm.list_models('*pattern*') lists them")
    if weights is None:
        model, source = timm.create_model(arch, pretrained=False), None
    elif isinstance(weights, (str, os.PathLike)) and str(weights) != "DEFAULT":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"no weights file {str(path)!r} for {name}: pass weights='DEFAULT' to let timm "
                "download (and cache) them, a file of weights for this architecture, or None"
            )
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        source = str(path)
    elif weights == "DEFAULT":
        model = timm.create_model(arch, pretrained=True)
        source = f"timm:{model.pretrained_cfg.get('hf_hub_id') or arch}"
    else:
        raise TypeError(
            f"weights of a timm model must be 'DEFAULT', a file path or None, got {weights!r}"
        )
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    transforms = Preprocess(
        crop, int(crop / cfg.get("crop_pct", 0.875)), cfg["mean"], cfg["std"], cfg["interpolation"]
    )
    n = int(getattr(model, "num_classes", 0))  # 0: a backbone without classifier (DINO)
    subset = timm.data.infer_imagenet_subset(model)
    if subset is not None and n in (1000, 1001):
        info = timm.data.ImageNetInfo(subset)
        class_names = [info.index_to_description(i).split(",")[0] for i in range(n)]
    else:
        class_names = [f"class {i}" for i in range(n)]
    return Pretrained(model, source, transforms, class_names, name, source is not None)


def official_cbam_transforms() -> Preprocess:
    """The official CBAM evaluation preprocessing: resize 256, centre crop 224, ImageNet
    normalisation (train_imagenet.py of the release); the network expects 224 x 224."""
    return Preprocess(224, 256)


def _official_cbam_pretrained(weights: WeightsArg) -> Pretrained:
    if weights is None:
        model, source = official_cbam_resnet50().eval(), None
    elif isinstance(weights, (str, os.PathLike)) and str(weights) != "DEFAULT":
        model, source = load_official_cbam(weights), str(weights)
    else:
        raise ValueError(
            f"the official CBAM weights are a file you download by hand ({OFFICIAL_CBAM_FILE}, "
            "from the README of https://github.com/Jongchan/attention-module): pass its path "
            "as weights, or None for random weights"
        )
    return Pretrained(
        model,
        source,
        official_cbam_transforms(),
        _imagenet_categories(),
        OFFICIAL_CBAM,
        source is not None,
    )


def top_classes(pre: Pretrained, image: Any, topk: int = 5) -> list[tuple[str, float]]:
    """The network's ``topk`` classes for one image, most probable first.

    Args:
        pre: from :func:`pretrained`.
        image: anything :func:`attnviz.photos.load_image` reads (path, bytes, PIL image,
            array), or an already prepared tensor (3 x H x W or 1 x 3 x H x W).
        topk: how many classes to return.

    Returns:
        ``[(class name, softmax probability), ...]``. Every module's train/eval flag is
        restored.

    Raises:
        ValueError: ``topk`` not a positive int, or a tensor of another shape.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    if not pre.classifier:
        raise ValueError(f"{pre.name} has no classifier (a backbone): it predicts no classes")
    x = _network_input(pre, image)
    with inference(pre.model):
        probs = pre.model(x.to(model_device(pre.model))).softmax(dim=1)[0]
    values, indices = probs.topk(min(topk, probs.numel()))
    return [(pre.class_names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]


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


__getattr__ = module_getattr("attnviz.zoo", {"predict": ("top_classes", lambda: top_classes)})
