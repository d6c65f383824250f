"""Interactive apps built from standard ipywidgets 8 widgets and one anywidget, the
clickable picture (:class:`PointerView`, whose script ships inside attnviz: nothing is
fetched from a CDN).

Each app is a small class with ``.root`` (its box), ``close()`` and
``_repr_mimebundle_``, so leaving it last in a cell displays it; ``export_html(path)``
writes it into one offline HTML file (:class:`ExportedPage`).
"""

from .channels import ChannelExplorer
from .deletion import DeletionExplorer
from .export import ExportedPage
from .gallery import ChannelGallery
from .photo import ModelPicker, PhotoExplainer
from .pointer import PointerView
from .query import QueryExplorer
from .spatial import SpatialExplorer
from .stn import STNInspector
from .upload import PhotoPicker

__all__ = [
    "ChannelExplorer",
    "ChannelGallery",
    "DeletionExplorer",
    "ExportedPage",
    "ModelPicker",
    "PhotoExplainer",
    "PhotoPicker",
    "PointerView",
    "QueryExplorer",
    "STNInspector",
    "SpatialExplorer",
]
