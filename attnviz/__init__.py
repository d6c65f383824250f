"""attnviz: see the attention inside image CNNs.

    import attnviz
    with attnviz.capture(model) as rec:
        model(x)
    rec.select(kind="spatial")

Public API, re-exported here and cheap to import.
"""

from collections.abc import Callable

from ._compat import module_getattr
from .capture import CaptureWarning, FaithfulnessError, capture
from .modules import (
    CBAM,
    ChannelGate,
    HeatmapHead,
    SpatialGate,
    SpatialTransformer,
    SqueezeExcitation,
)
from .probes.tokens import TokenLayout, token_layout
from .records import (
    AxialRecord,
    BilinearAttentionRecord,
    BranchRecord,
    ChannelRecord,
    Check,
    ContextRecord,
    ElementwiseRecord,
    FactoredAttentionRecord,
    LocalAttentionRecord,
    Record,
    Recording,
    SelfAttentionRecord,
    SpatialRecord,
    TransformRecord,
    WindowAttentionRecord,
)
from .registry import (
    KINDS,
    AttentionSpec,
    attention_type,
    find_attention_modules,
    get_attention_layer,
    list_attention_layers,
    list_attention_types,
    refuse_attention_type,
    register_attention_layer,
    register_attention_type,
    unregister_attention_type,
)

__version__ = "0.2.0"


def _global(name: str) -> Callable[[], object]:
    """A getter of this module's object ``name``, looked up when called."""
    return lambda: globals()[name]


# 0.1's names, for one release (each use warns with the new name).
__getattr__ = module_getattr(
    "attnviz",
    {
        old: (new, _global(new))
        for old, new in {
            "register": "register_attention_type",
            "register_attention": "attention_type",
            "unregister": "unregister_attention_type",
            "registered": "list_attention_types",
            "refuse": "refuse_attention_type",
            "register_layer": "register_attention_layer",
            "attention_layers": "list_attention_layers",
            "make_attention": "get_attention_layer",
        }.items()
    },
)

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
    "FactoredAttentionRecord",
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
    "TokenLayout",
    "TransformRecord",
    "WindowAttentionRecord",
    "__version__",
    "attention_type",
    "capture",
    "find_attention_modules",
    "get_attention_layer",
    "list_attention_layers",
    "list_attention_types",
    "refuse_attention_type",
    "register_attention_layer",
    "register_attention_type",
    "token_layout",
    "unregister_attention_type",
]
