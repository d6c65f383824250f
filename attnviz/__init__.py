"""attnviz: see the attention inside image CNNs.

    import attnviz
    with attnviz.capture(model) as rec:
        model(x)
    rec.select(kind="spatial")

Public API, re-exported here and cheap to import: ``import attnviz`` loads what
:func:`capture` needs (and no torchvision, matplotlib or ipywidgets); every other part
loads the first time it is used, e.g. ``attnviz.shipped.load(...)``, ``attnviz.obtain(...)``
or ``from attnviz.widgets import QueryExplorer``.
"""

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from typing import Any

from ._compat import module_getattr
from .capture import (
    AllRefusedError,
    CaptureError,
    CaptureWarning,
    FaithfulnessError,
    NoAttentionError,
    NoSuchBlockError,
    capture,
)
from .modules import (
    CBAM,
    ChannelGate,
    HeatmapHead,
    NonLocal,
    SpatialGate,
    SpatialTransformer,
    SqueezeExcitation,
    TwoStageTransformer,
)
from .probes.tokens import TokenLayout
from .probes.tokens import token_layout as token_layout  # used by capture; not in __all__
from .records import (
    AxialRecord,
    BilinearAttentionRecord,
    BranchRecord,
    ChannelRecord,
    Check,
    ContextRecord,
    ElementwiseRecord,
    FactoredAttentionRecord,
    Geometry,
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
_renamed = module_getattr(
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

#: names of other parts offered here, loaded on first use: name -> part
_LAZY_NAMES = {"obtain": "shipped"}


def __getattr__(name: str) -> Any:
    # a part of the package (attnviz.shipped without ``import attnviz.shipped``) loads here
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"attnviz.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    return _renamed(name)


def __dir__() -> list[str]:
    parts = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return sorted({*globals(), *parts, *_LAZY_NAMES})


__all__ = [
    "CBAM",
    "KINDS",
    "AllRefusedError",
    "AttentionSpec",
    "AxialRecord",
    "BilinearAttentionRecord",
    "BranchRecord",
    "CaptureError",
    "CaptureWarning",
    "ChannelGate",
    "ChannelRecord",
    "Check",
    "ContextRecord",
    "ElementwiseRecord",
    "FactoredAttentionRecord",
    "FaithfulnessError",
    "Geometry",
    "HeatmapHead",
    "LocalAttentionRecord",
    "NoAttentionError",
    "NoSuchBlockError",
    "NonLocal",
    "Record",
    "Recording",
    "SelfAttentionRecord",
    "SpatialGate",
    "SpatialRecord",
    "SpatialTransformer",
    "SqueezeExcitation",
    "TokenLayout",
    "TransformRecord",
    "TwoStageTransformer",
    "WindowAttentionRecord",
    "__version__",
    "attention_type",
    "capture",
    "find_attention_modules",
    "get_attention_layer",
    "list_attention_layers",
    "list_attention_types",
    "obtain",
    "refuse_attention_type",
    "register_attention_layer",
    "register_attention_type",
    "unregister_attention_type",
]
