"""Attention modules, one paper per file.

Each module's attention tensor is the output of a named submodule, so a forward
hook (and :func:`attnviz.capture`) sees exactly what the network applied.
"""

from .cbam import CBAM, ChannelGate, SpatialGate
from .nonlocal_block import NonLocal
from .se import SqueezeExcitation
from .stn import AngleHead, HeatmapHead, SpatialTransformer, TwoStageTransformer

__all__ = [
    "CBAM",
    "AngleHead",
    "ChannelGate",
    "HeatmapHead",
    "NonLocal",
    "SpatialGate",
    "SpatialTransformer",
    "SqueezeExcitation",
    "TwoStageTransformer",
]
