"""Attention ResNets: torchvision's ResNet-18/50 and a small ResNet for 64 x 64 images,
with an attention layer (SE, CBAM, non-local, any registered one) on every residual branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..modules import NonLocal
from ..registry import get_attention_layer
from ._common import check_positive_int

__all__ = ["AttnBasicBlock", "AttnBottleneck", "SmallResNet", "resnet", "small_resnet"]


def _attention_layer(
    attention: str | None, channels: int, attention_kwargs: Mapping[str, Any] | None
) -> nn.Module:
    if attention_kwargs is not None and not isinstance(attention_kwargs, Mapping):
        raise TypeError(
            f"attention_kwargs must be a dict of keyword arguments for the attention layer "
            f"(e.g. {{'reduction': 8}}) or None, got {attention_kwargs!r}"
        )
    return get_attention_layer(attention, channels, **dict(attention_kwargs or {}))


class _WithAttention:
    """torchvision's block arguments plus ``attention``: builds ``self.attention`` over the
    block's output channels (``planes * expansion``) through the registry."""

    expansion: int

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Callable[..., nn.Module] | None = None,
        *,
        attention: str | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        # a mixin: super() is the torchvision block that follows it in the subclass's MRO
        super().__init__(  # type: ignore[call-arg]
            inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer
        )
        self.out_channels = planes * self.expansion
        self.attention = _attention_layer(attention, self.out_channels, attention_kwargs)


class AttnBasicBlock(_WithAttention, tv_resnet.BasicBlock):
    """torchvision's ``BasicBlock`` with an attention layer A on the residual branch.

    ``out = relu(A(bn2(conv2(relu(bn1(conv1(x)))))) + shortcut(x))``. With
    ``attention=None``, A is ``nn.Identity`` and this is torchvision's block.

    Args:
        inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer:
            as for ``torchvision.models.resnet.BasicBlock``.
        attention: a name from :func:`attnviz.list_attention_layers` (``"se"``, ``"cbam"``, ...)
            or ``None``.
        attention_kwargs: keyword arguments for the layer, e.g. ``{"reduction": 8}``.

    Submodules:
        conv1, bn1, relu, conv2, bn2, downsample: torchvision's names, so its state dicts load.
        attention: A, built as ``get_attention_layer(attention, planes, **attention_kwargs)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class AttnBottleneck(_WithAttention, tv_resnet.Bottleneck):
    """torchvision's ``Bottleneck`` with an attention layer A on the residual branch.

    ``out = relu(A(bn3(conv3(...))) + shortcut(x))``, A over ``planes * 4`` channels.
    Arguments and submodules as for :class:`AttnBasicBlock` (plus conv3, bn3).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


_ATTENTION_BLOCKS = (AttnBasicBlock, AttnBottleneck)

# Layers placed once at the end of chosen stages instead of in every block: the non-local
# paper (Wang et al., CVPR 2018, Sec. 4.1 and Table 2) adds a few blocks to res3/res4, not
# one per residual block. res2..res5 are torchvision's layer1..layer4; the paper's single
# block goes to res4 (layer3). It inserts the block before a stage's last residual block;
# here it follows the last one, so the stage's block indices (layerN.0, layerN.1, ...)
# stay torchvision's and a plain ResNet's state dict still loads.
_STAGE_ATTENTION = ("nonlocal",)
_STAGE_NAME = "non_local"  # layerN.non_local ("nonlocal" is a Python keyword)


def _check_stages(attention: str | None, stages: Sequence[int] | None) -> tuple[int, ...]:
    if attention not in _STAGE_ATTENTION:
        if stages is not None:
            raise ValueError(
                f"nonlocal_stages applies only with attention='nonlocal', got attention="
                f"{attention!r}"
            )
        return ()
    stages = (3,) if stages is None else tuple(stages)
    if not stages or any(s not in (1, 2, 3, 4) for s in stages) or len(set(stages)) < len(stages):
        raise ValueError(f"nonlocal_stages must be distinct stages 1-4, e.g. (3,), got {stages!r}")
    return stages


def _check_block_stages(
    attention: str | None, stages: Sequence[int] | None
) -> tuple[int, ...] | None:
    """The stages whose blocks get a per-block attention layer (``None``: every stage)."""
    if stages is None:
        return None
    stages = tuple(stages)
    if attention is None or attention in _STAGE_ATTENTION:
        raise ValueError(
            "attention_stages chooses the stages of per-block attention (e.g. 'se', 'cbam'), "
            f"got attention={attention!r}; a non-local block takes nonlocal_stages"
        )
    if not stages or any(s not in (1, 2, 3, 4) for s in stages) or len(set(stages)) < len(stages):
        raise ValueError(f"attention_stages must be distinct stages 1-4, e.g. (4,), got {stages!r}")
    return stages


def _attach_attention(
    model: nn.Module,
    attention: str | None,
    attention_kwargs: Mapping[str, Any] | None,
    stages: Sequence[int] = (),
    block_stages: Sequence[int] | None = None,
) -> None:
    """Give every attention block of ``model`` its layer A, or the chosen stages theirs.

    ``block_stages`` limits per-block attention to the blocks of those stages (``layerN``);
    the other blocks keep an identity. Called after the backbone's weight initialisation
    (torchvision's ResNet re-initialises every ``Conv2d`` and ``BatchNorm2d`` it
    contains), so each attention layer keeps the initialisation its own class gives it.
    """
    per_block = None if attention in _STAGE_ATTENTION else attention
    chosen = None
    if block_stages is not None:
        chosen = {id(b) for s in block_stages for b in getattr(model, f"layer{s}")}
    for block in [m for m in model.modules() if isinstance(m, _ATTENTION_BLOCKS)]:
        kind = per_block if chosen is None or id(block) in chosen else None
        block.attention = _attention_layer(kind, block.out_channels, attention_kwargs)
    for s in stages:
        layer = getattr(model, f"layer{s}")
        layer.add_module(
            _STAGE_NAME, _attention_layer(attention, layer[-1].out_channels, attention_kwargs)
        )


def _load_backbone(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], fresh: Sequence[str] = ()
) -> list[str]:
    """Load a plain ResNet's ``state_dict`` into an attention ResNet of the same layout.

    Args:
        model: a model built from :class:`AttnBasicBlock` / :class:`AttnBottleneck`.
        state_dict: e.g. torchvision's ImageNet weights, or ``resnet18().state_dict()``.
        fresh: key prefixes that may be missing as well (``"fc."`` for a new classifier).

    Returns:
        The keys of ``model`` left as initialised (the attention layers', and ``fresh``).

    Raises:
        ValueError: a key other than those is missing, or a key is unexpected; ``model``
            is left unchanged.
    """
    own = model.state_dict()
    allowed = tuple(
        f"{name}.attention." if name else "attention."
        for name, m in model.named_modules()
        if isinstance(m, _ATTENTION_BLOCKS)
    ) + tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, NonLocal))
    allowed += tuple(fresh)
    missing = [k for k in own if k not in state_dict]
    not_allowed = [k for k in missing if not k.startswith(allowed)]
    unexpected = [k for k in state_dict if k not in own]
    if not_allowed or unexpected:
        raise ValueError(
            f"the state dict does not fit {type(model).__name__} as a backbone: only attention "
            f"layers' keys may be missing, and no key may be unexpected; missing "
            f"{_few(not_allowed)}, unexpected {_few(unexpected)}. Are the weights for "
            "another architecture?"
        )
    model.load_state_dict(state_dict, strict=False)
    return missing


def _few(keys: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} keys)"


_RESNETS: dict[str, tuple[type[nn.Module], list[int], Any]] = {
    "resnet18": (AttnBasicBlock, [2, 2, 2, 2], tv_resnet.ResNet18_Weights),
    "resnet50": (AttnBottleneck, [3, 4, 6, 3], tv_resnet.ResNet50_Weights),
}


def _verify_weights(weights_enum: Any, weights: Any) -> Any:
    if weights is None or isinstance(weights, weights_enum):
        return weights
    names = [w.name for w in weights_enum] + ["DEFAULT"]
    if isinstance(weights, str):
        try:
            return weights_enum.verify(weights)
        except KeyError:
            raise ValueError(f"unknown weights {weights!r}; choose one of {names}") from None
    raise TypeError(
        f"weights must be a {weights_enum.__name__} or one of the strings {names}, got {weights!r}"
    )


def resnet(
    name: str,
    *,
    attention: str | None = None,
    num_classes: int = 1000,
    weights: Any = None,
    attention_kwargs: Mapping[str, Any] | None = None,
    nonlocal_stages: Sequence[int] | None = None,
) -> tv_resnet.ResNet:
    """torchvision's ResNet with an attention layer in every block (SE-/CBAM-ResNet).

    The model is a ``torchvision.models.ResNet`` built from :class:`AttnBasicBlock`
    (resnet18) or :class:`AttnBottleneck` (resnet50): parameter names are torchvision's
    plus ``layerN.i.attention.*``, so Grad-CAM targets such as ``model.layer4[-1]`` and
    torchvision's state dicts work unchanged.

    Args:
        name: ``"resnet18"`` or ``"resnet50"``.
        attention: a name from :func:`attnviz.list_attention_layers`, or ``None`` (torchvision's
            plain ResNet).
        num_classes: size of the classifier ``fc``.
        weights: ``None`` (random initialisation), a ``ResNet18_Weights`` /
            ``ResNet50_Weights`` member or its name (``"DEFAULT"``, ``"IMAGENET1K_V1"``).
            The weights are fetched through torchvision (downloaded on first use, then
            cached) and loaded into the backbone; the attention layers stay freshly
            initialised. If ``num_classes`` differs from the weights' category count, ``fc``
            stays freshly initialised too (fine-tuning on a new label set).
        attention_kwargs: keyword arguments for every attention layer, e.g.
            ``{"reduction": 16}`` (r of the SE and CBAM papers); ``None``: the layer's defaults.
        nonlocal_stages: with ``attention="nonlocal"``, the stages (1-4 for layer1-layer4)
            that end in one :class:`attnviz.modules.NonLocal` block, ``layerN.non_local``,
            instead of an attention layer in every block; ``None``: ``(3,)``, the paper's
            res4.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: unknown ``name``, ``attention`` or weights name; ``num_classes`` not a
            positive int; weights that do not fit the backbone.
        TypeError: ``weights`` of another model, or ``attention_kwargs`` not a mapping.
    """
    if name not in _RESNETS:
        raise ValueError(f"name must be one of {sorted(_RESNETS)}, got {name!r}")
    check_positive_int(num_classes, "num_classes")
    block, layers, weights_enum = _RESNETS[name]
    weights = _verify_weights(weights_enum, weights)
    stages = _check_stages(attention, nonlocal_stages)
    model = tv_resnet.ResNet(block, layers, num_classes=num_classes)
    _attach_attention(model, attention, attention_kwargs, stages)
    if weights is not None:
        state_dict = weights.get_state_dict(progress=True, check_hash=True)
        new_head = num_classes != len(weights.meta["categories"])
        if new_head:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        _load_backbone(model, state_dict, fresh=("fc.",) if new_head else ())
    return model


class SmallResNet(nn.Module):
    """A ResNet of :class:`AttnBasicBlock` s for small images, named like torchvision's.

    A light stem (3 x 3 convolution, batch-norm, ReLU; no max-pool), four stages of widths
    ``width * (1, 2, 4, 8)`` (stages 2-4 halve the resolution), global average pooling and a
    linear classifier. With ``stem_stride=1`` a 64 x 64 image reaches ``layer4`` at 8 x 8
    (``stem_stride=2``: 4 x 4, about four times cheaper).

    Args:
        layers: blocks per stage, e.g. ``(1, 1, 1, 1)`` (ResNet-10), ``(2, 2, 2, 2)`` (ResNet-18).
        attention, attention_kwargs: as for :class:`AttnBasicBlock`.
        num_classes: size of the classifier ``fc``.
        width: channels of ``layer1``.
        in_channels: image channels.
        stem_stride: stride of the stem convolution, 1 or 2.
        nonlocal_stages: as for :func:`resnet` (only with ``attention="nonlocal"``).
        attention_stages: the stages (1-4) whose blocks get the per-block attention layer,
            e.g. ``(4,)`` for the last stage only; ``None``: every block.

    Submodules:
        conv1, bn1, relu: the stem. layer1 ... layer4: ``nn.Sequential`` of blocks, so the
        attention of block i of stage n is ``layerN.i.attention`` (a non-local block at the
        end of stage n: ``layerN.non_local``). avgpool, fc.
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 1, 1, 1),
        *,
        attention: str | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
        num_classes: int = 10,
        width: int = 16,
        in_channels: int = 3,
        stem_stride: int = 1,
        nonlocal_stages: Sequence[int] | None = None,
        attention_stages: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        stages = _check_stages(attention, nonlocal_stages)
        block_stages = _check_block_stages(attention, attention_stages)
        if len(layers) != 4:
            raise ValueError(f"layers must give the blocks of 4 stages, got {layers!r}")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(width, "width")
        check_positive_int(in_channels, "in_channels")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._make_layer(width, layers[0], stride=1)
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        _attach_attention(self, attention, attention_kwargs, stages, block_stages)
        self.attention_stages = block_stages

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        check_positive_int(blocks, "blocks per stage")
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                tv_resnet.conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes)
            )
        out = [AttnBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        out += [AttnBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_SMALL_DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2)}


def small_resnet(
    depth: int = 10,
    *,
    attention: str | None = None,
    num_classes: int = 10,
    width: int = 16,
    in_channels: int = 3,
    attention_kwargs: Mapping[str, Any] | None = None,
    stem_stride: int = 1,
    nonlocal_stages: Sequence[int] | None = None,
    attention_stages: Sequence[int] | None = None,
) -> SmallResNet:
    """A :class:`SmallResNet` for 64 x 64 images that trains on a 2-core CPU.

    Args:
        depth: 10 (one block per stage) or 18 (two, as torchvision's resnet18).
        attention: a name from :func:`attnviz.list_attention_layers`, or ``None``.
        num_classes, width, in_channels, stem_stride: as for :class:`SmallResNet`.
        attention_kwargs: keyword arguments for every attention layer. ``None`` means
            ``{"reduction": 4}``: the papers' r = 16 would leave a hidden size of 1 in a
            16-channel stage, r = 4 keeps it >= 4 for ``width >= 16``. Pass ``{}`` for the
            layer's own defaults (needed for a layer that takes no ``reduction``).
            With ``attention="nonlocal"``, ``None`` means the block's defaults.
        nonlocal_stages: as for :func:`resnet`; ``None``: ``(3,)``, one block after layer3.
        attention_stages: as for :class:`SmallResNet`: per-block attention in these stages
            only (``None``: every block).

    Raises:
        ValueError: unsupported ``depth``, unknown ``attention``, bad sizes.
    """
    if depth not in _SMALL_DEPTHS:
        raise ValueError(f"depth must be one of {sorted(_SMALL_DEPTHS)}, got {depth!r}")
    return SmallResNet(
        _SMALL_DEPTHS[depth],
        attention=attention,
        attention_kwargs={"reduction": 4}
        if attention_kwargs is None and attention not in _STAGE_ATTENTION
        else attention_kwargs,
        num_classes=num_classes,
        width=width,
        in_channels=in_channels,
        stem_stride=stem_stride,
        nonlocal_stages=nonlocal_stages,
        attention_stages=attention_stages,
    )
