"""Interactive apps built from standard ipywidgets 8 widgets (no CDN, no extensions).

Each app is a small class with ``.root`` (its box), ``close()`` and
``_repr_mimebundle_``, so leaving it last in a cell displays it.
"""

from .channels import ChannelExplorer
from .stn import STNInspector

__all__ = ["ChannelExplorer", "STNInspector"]
