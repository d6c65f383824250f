"""Interactive apps built from standard ipywidgets 8 widgets (no CDN, no extensions).

Each app is a small class with ``.root`` (its box), ``close()`` and
``_repr_mimebundle_``, so leaving it last in a cell displays it.
"""

from .channels import ChannelExplorer
from .gallery import ChannelGallery
from .photo import ModelPicker, PhotoExplainer
from .query import QueryExplorer
from .spatial import SpatialExplorer
from .stn import STNInspector
from .upload import PhotoPicker

__all__ = [
    "ChannelExplorer",
    "ChannelGallery",
    "ModelPicker",
    "PhotoExplainer",
    "PhotoPicker",
    "QueryExplorer",
    "STNInspector",
    "SpatialExplorer",
]
