"""What every attnviz widget app shares: display, closing, the image index."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets


def close_tree(widget: widgets.Widget) -> None:
    """Close a widget and everything inside it (children first); safe to call twice."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()


class App:
    """Base of the apps: ``root`` (a Box) is what displays; ``close()`` closes all of it.

    Subclasses set ``self.root`` and override :meth:`_release` to drop caches, links or
    callbacks when the app closes.
    """

    root: widgets.Box

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.root._repr_mimebundle_(**kwargs)

    def _release(self) -> None:
        """Drop what the app holds besides its widgets (caches, links, callbacks)."""

    def close(self) -> None:
        """Close every widget of the app and drop what it holds; safe to call twice."""
        self._release()
        close_tree(self.root)


class ImageIndex:
    """The ``index`` property of apps that show one of ``self.images`` via ``self._image``."""

    images: Any
    _image: widgets.IntSlider

    @property
    def index(self) -> int:
        """The image shown (0 .. N-1); setting it moves the slider and redraws."""
        return self._image.value

    @index.setter
    def index(self, value: int) -> None:
        if not 0 <= value < len(self.images):
            raise ValueError(f"index must be in [0, {len(self.images) - 1}], got {value}")
        self._image.value = value


class BlockChoice:
    """The ``block`` property of apps whose ``self._block`` dropdown picks a cached record."""

    _block: widgets.Dropdown
    _cache: dict[str, Any]

    @property
    def block(self) -> str:
        """The attention block shown (a record name); settable."""
        return self._block.value

    @block.setter
    def block(self, name: str) -> None:
        if name not in self._cache["blocks"]:
            raise ValueError(f"block must be one of {list(self._cache['blocks'])}, got {name!r}")
        self._block.value = name
