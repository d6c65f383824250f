"""timm's attention layers (timm >= 1.0): where each keeps its attention, and its probe.

Every layer that ``timm.layers.create_attn.get_attn`` can build, and the SE block of timm's
EfficientNet / MobileNet family, registered by qualified class name: nothing here imports
timm, and an entry matters only once a model holds such a layer. Facts read from timm
1.0's source:

======== ===================== =====================================================
name     layer                 what it applies, and where capture reads it
======== ===================== =====================================================
se       SEModule              x * gate(...): channel, ``gate``
ese      EffectiveSEModule     x * gate(...): channel, ``gate`` (hard sigmoid)
eca      EcaModule             x * gate(conv1d over channels): channel, ``gate`` (B x 1 x C)
ecam     EcaModule(use_mlp)    the same with an MLP
ceca     CecaModule            circular ECA: channel, ``gate``
ge       GatherExcite          x * gate(...): channel (extent 0) or elementwise (extent > 0)
gc, gca  GlobalContext         softmax over positions (functional) pools a context; then
                               x * gate(mlp) and/or + mlp_add: context probe
cbam     CbamModule            ChannelAttn (channel, ``gate``) then SpatialAttn (spatial,
                               ``gate``): two records
lcbam    LightCbamModule       LightChannelAttn (channel, functional ``F.sigmoid``) then
                               LightSpatialAttn (spatial, ``gate``)
coord    CoordAttn             x * a_h * a_w, ``gate`` called twice: axial
ela      EfficientLocalAttn    the same form: axial
scoord   SimpleCoordAttn       x * gate(a_h + a_w): elementwise
strip    StripAttn             x * gate(x_h + x_w): elementwise
sk       SelectiveKernel       softmax over K paths per channel (``attn``): branch probe
splat    SplitAttn             radix softmax (``rsoftmax``) over the paths (``act0``)
nl       NonLocalAttn          softmax(t p) (functional) applied to g: self, dense
bat      BatNonLocalAttn       its BilinearAttnTransform: y = P x Q, separable: self
bottleneck BottleneckAttn      multi-head softmax(q k + pos) (inline): self, dense (BoTNet)
halo     HaloAttn              the same within local windows with a halo: self, local
lambda   LambdaLayer           refused: see the reason below
(ViT)    Attention             multi-head attention over tokens (ViT, DeiT, DINO,
                               DINOv2): the fused kernel's q, k or the softmax
======== ===================== =====================================================
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .attention import BilinearAttentionProbe, LocalAttentionProbe
from .base import Probe
from .gates import (
    ContextProbe,
    GateProbe,
    SelectiveKernelProbe,
    SeparableContextProbe,
    SplitAttentionProbe,
)
from .tokens import TokenAttentionProbe

__all__ = ["LAMBDA_REASON", "TIMM_LAYERS", "register_timm"]

_L = "timm.layers."

#: timm's ``create_attn`` names -> the qualified name of the class that holds the attention
TIMM_LAYERS: dict[str, list[str]] = {
    "se": [_L + "squeeze_excite.SEModule"],
    "ese": [_L + "squeeze_excite.EffectiveSEModule"],
    "eca": [_L + "eca.EcaModule"],
    "ecam": [_L + "eca.EcaModule"],
    "ceca": [_L + "eca.CecaModule"],
    "ge": [_L + "gather_excite.GatherExcite"],
    "gc": [_L + "global_context.GlobalContext"],
    "gca": [_L + "global_context.GlobalContext"],
    "cbam": [_L + "cbam.ChannelAttn", _L + "cbam.SpatialAttn"],
    "lcbam": [_L + "cbam.LightChannelAttn", _L + "cbam.LightSpatialAttn"],
    "coord": [_L + "coord_attn.CoordAttn"],
    "scoord": [_L + "coord_attn.SimpleCoordAttn"],
    "ela": [_L + "coord_attn.EfficientLocalAttn"],
    "strip": [_L + "coord_attn.StripAttn"],
    "sk": [_L + "selective_kernel.SelectiveKernel"],
    "splat": [_L + "split_attn.SplitAttn"],
    "nl": [_L + "non_local_attn.NonLocalAttn"],
    "bat": [_L + "non_local_attn.BilinearAttnTransform"],
    "bottleneck": [_L + "bottleneck_attn.BottleneckAttn"],
    "halo": [_L + "halo_attn.HaloAttn"],
    "lambda": [_L + "lambda_layer.LambdaLayer"],
}

#: why capture refuses timm's LambdaLayer
LAMBDA_REASON = (
    "a lambda layer (Bello, 2021) applies no attention map: it summarises the context into "
    "linear functions (a softmax over positions per key channel, shared by every query, "
    "then mixed by signed query weights, plus a local position term), so no map over "
    "positions says where a query looked"
)


def _gather_excite(name: str, module: nn.Module) -> Probe:
    kind = "channel" if getattr(module, "extent", 0) == 0 else "elementwise"
    return GateProbe(name, module, kind, submodule="gate")


def _gate(kind: str, *, residual: str | None = None, function: str | None = None):
    def make(name: str, module: nn.Module) -> Probe:
        sub = "" if function else "gate"
        return GateProbe(name, module, kind, submodule=sub, function=function, residual=residual)

    return make


def register_timm(register: Callable, refuse: Callable) -> None:
    """Add timm's attention layers to the registry (by qualified name; timm not imported)."""
    chan = "channel"
    register(_L + "squeeze_excite.SEModule", chan, "gate", note="timm `se` (SE-ResNet, RegNet)")
    register(_L + "squeeze_excite.EffectiveSEModule", chan, "gate", note="timm `ese` (VoVNet)")
    register(
        "timm.models._efficientnet_blocks.SqueezeExcite",
        chan,
        "gate",
        note="timm EfficientNet / MobileNetV3 SE",
    )
    register("timm.models.senet.SEModule", chan, "sigmoid", note="timm legacy SENet")
    register(_L + "eca.EcaModule", chan, "gate", note="timm `eca`, `ecam` (ECA-Net)")
    register(_L + "eca.CecaModule", chan, "gate", note="timm `ceca` (circular ECA)")
    register(
        _L + "gather_excite.GatherExcite",
        "channel",
        probe=_gather_excite,
        note="timm `ge`: channel at extent 0, elementwise (B x C x H x W) otherwise",
    )
    register(
        _L + "global_context.GlobalContext",
        "context",
        probe=ContextProbe,
        note="timm `gc`, `gca` (GCNet): softmax pooling map, then scale and/or shift",
    )
    register(_L + "cbam.ChannelAttn", chan, "gate", note="timm `cbam`, channel part")
    register(_L + "cbam.SpatialAttn", "spatial", "gate", note="timm `cbam`, spatial part")
    register(
        _L + "cbam.LightChannelAttn",
        chan,
        function="sigmoid",
        note="timm `lcbam`, channel part (functional sigmoid)",
    )
    register(_L + "cbam.LightSpatialAttn", "spatial", "gate", note="timm `lcbam`, spatial part")
    for cls, kind, what in (
        ("CoordAttn", "axial", "`coord` (coordinate attention)"),
        ("EfficientLocalAttn", "axial", "`ela` (efficient local attention)"),
        ("SimpleCoordAttn", "elementwise", "`scoord`"),
        ("StripAttn", "elementwise", "`strip`"),
    ):
        register(
            _L + f"coord_attn.{cls}",
            kind,
            probe=_gate(kind, residual="has_skip"),
            note=f"timm {what}",
        )
    register(
        _L + "selective_kernel.SelectiveKernel",
        "branch",
        probe=SelectiveKernelProbe,
        note="timm `sk` (SKNet)",
    )
    register(
        _L + "split_attn.SplitAttn",
        "branch",
        probe=SplitAttentionProbe,
        note="timm `splat` (ResNeSt)",
    )
    register(_L + "non_local_attn.NonLocalAttn", "self", function="softmax", note="timm `nl`")
    register(
        _L + "non_local_attn.BilinearAttnTransform",
        "self",
        probe=BilinearAttentionProbe,
        note="timm `bat` (BAT): separable row/column attention",
    )
    register(
        _L + "bottleneck_attn.BottleneckAttn",
        "self",
        function="softmax",
        note="timm `bottleneck` (BoTNet): multi-head",
    )
    register(
        _L + "halo_attn.HaloAttn",
        "self",
        probe=LocalAttentionProbe,
        note="timm `halo` (HaloNet): multi-head, local windows",
    )
    refuse(_L + "lambda_layer.LambdaLayer", LAMBDA_REASON, note="timm `lambda`")
    register(
        "timm.models.mobilevit.LinearSelfAttention",
        "context",
        probe=SeparableContextProbe,
        note="MobileViT-v2 separable self-attention: context scores over patches per offset",
    )
    register(
        _L + "attention.Attention",
        "self",
        probe=TokenAttentionProbe,
        note="timm ViT / DeiT / DINO / DINOv2 (fused or plain): multi-head, named tokens",
    )
    register(
        "timm.models.vision_transformer.Attention",
        "self",
        probe=TokenAttentionProbe,
        note="the same class, where older timm releases defined it",
    )
