"""attnviz: see the attention inside image CNNs.

    import attnviz
    with attnviz.capture(model) as rec:
        model(x)
    rec.select(kind="spatial")

Public API, re-exported here and cheap to import.
"""

from .capture import CaptureWarning, FaithfulnessError, capture
from .modules import (
    CBAM,
    ChannelGate,
    HeatmapHead,
    SpatialGate,
    SpatialTransformer,
    SqueezeExcitation,
)
from .records import (
    AxialRecord,
    BilinearAttentionRecord,
    BranchRecord,
    ChannelRecord,
    Check,
    ContextRecord,
    ElementwiseRecord,
    LocalAttentionRecord,
    Record,
    Recording,
    SelfAttentionRecord,
    SpatialRecord,
    TransformRecord,
)
from .registry import (
    KINDS,
    AttentionSpec,
    attention_layers,
    find_attention_modules,
    make_attention,
    refuse,
    register,
    register_attention,
    register_layer,
    registered,
    unregister,
)

__version__ = "0.1.0"

__all__ = [
    "CBAM",
    "KINDS",
    "AttentionSpec",
    "AxialRecord",
    "BilinearAttentionRecord",
    "BranchRecord",
    "CaptureWarning",
    "ChannelGate",
    "ChannelRecord",
    "Check",
    "ContextRecord",
    "ElementwiseRecord",
    "FaithfulnessError",
    "HeatmapHead",
    "LocalAttentionRecord",
    "Record",
    "Recording",
    "SelfAttentionRecord",
    "SpatialGate",
    "SpatialRecord",
    "SpatialTransformer",
    "SqueezeExcitation",
    "TransformRecord",
    "__version__",
    "attention_layers",
    "capture",
    "find_attention_modules",
    "make_attention",
    "refuse",
    "register",
    "register_attention",
    "register_layer",
    "registered",
    "unregister",
]
