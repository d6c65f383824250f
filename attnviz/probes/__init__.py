"""Probes: how :func:`attnviz.capture` reads each kind of attention module.

See :mod:`attnviz.probes.base` for the protocol; :mod:`attnviz.probes.timm` lists timm's
attention layers and the probe that reads each.
"""

from .attention import (
    BilinearAttentionProbe,
    LocalAttentionProbe,
    SelfAttentionProbe,
    TransformProbe,
    TwoStageProbe,
)
from .base import FUNCTIONS, Emission, Probe, Refusal
from .gates import ContextProbe, GateProbe, SelectiveKernelProbe, SplitAttentionProbe
from .tokens import MultiheadAttentionProbe, TokenAttentionProbe, TokenLayout, token_layout

__all__ = [
    "FUNCTIONS",
    "BilinearAttentionProbe",
    "ContextProbe",
    "Emission",
    "GateProbe",
    "LocalAttentionProbe",
    "MultiheadAttentionProbe",
    "Probe",
    "Refusal",
    "SelectiveKernelProbe",
    "SelfAttentionProbe",
    "SplitAttentionProbe",
    "TokenAttentionProbe",
    "TokenLayout",
    "TransformProbe",
    "TwoStageProbe",
    "token_layout",
]
