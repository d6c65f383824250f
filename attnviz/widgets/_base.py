"""What every attnviz widget app shares: the app base, the image index and block choice,
showing PNG bytes, and the checks of the images and labels an app is given."""

from __future__ import annotations

import struct
from typing import Any

import ipywidgets as widgets
import torch

__all__ = [
    "App",
    "BlockChoice",
    "ImageIndex",
    "as_list",
    "check_images",
    "close_tree",
    "display_images",
    "show_png",
]

_TOLERANCE = 1e-3  # display values may stray this far outside [0, 1] (float rounding)


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

    def pictures(self) -> dict[str, bytes]:
        """The PNG bytes each picture of the app shows now, by name (e.g. ``"bars"``).

        The names are the app's picture panels, in display order: what a script saving
        figures, or a test checking a redraw, reads (an empty panel gives ``b""``).
        """
        return {
            name[1:-4]: bytes(widget.value)
            for name, widget in vars(self).items()
            if name.startswith("_") and name.endswith("_png") and isinstance(widget, widgets.Image)
        }

    def picture(self) -> bytes:
        """The app's main picture as PNG bytes (its first panel)."""
        pictures = self.pictures()
        if not pictures:
            raise ValueError(f"{type(self).__name__} shows no picture")
        return next(iter(pictures.values()))

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


def show_png(widget: widgets.Image, png: bytes) -> None:
    """Set ``widget.value`` and pin its layout to the PNG's width and height.

    Front ends stretch an Image to its box (a VBox column) or squeeze it (an HBox row),
    which distorts the aspect ratio; a fixed size keeps every pixel where it was drawn.
    The size is read from the PNG header (IHDR), so nothing is decoded.
    """
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("show_png needs PNG bytes (render.png_bytes)")
    width, height = struct.unpack(">II", png[16:24])
    w, h = f"{width}px", f"{height}px"
    if widget.layout.width != w or widget.layout.height != h:
        widget.layout.width, widget.layout.height = w, h
        widget.layout.min_width = w
    widget.value = png


def _per_channel(values: Any, name: str, c: int, default: float) -> torch.Tensor:
    if values is None:
        return torch.full((c, 1, 1), default)
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if len(t) not in (1, c):
        raise ValueError(f"{name} must give 1 or {c} per-channel values, got {len(t)}")
    return t.expand(c).reshape(c, 1, 1).clone()


def display_images(images: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """``images * std + mean`` (undoing a network's normalisation), checked to lie in [0, 1]."""
    c = images.shape[1]
    shown = images * _per_channel(std, "std", c, 1.0) + _per_channel(mean, "mean", c, 0.0)
    lo, hi = float(shown.min()), float(shown.max())
    if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
        raise ValueError(
            f"images * std + mean must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; pass the "
            "normalisation's mean and std, e.g. mean=(0.485, 0.456, 0.406), "
            "std=(0.229, 0.224, 0.225)"
        )
    return shown.clamp(0, 1)


def check_images(images: Any, name: str = "images", *, unit_range: bool = False) -> torch.Tensor:
    """Images as an (N, C, H, W) float CPU tensor, C = 1 or 3, N >= 1.

    With ``unit_range``, values must lie in [0, 1] (images shown as they are).

    Raises:
        ValueError: another shape, or values outside [0, 1] with ``unit_range``.
        TypeError: integer images.
    """
    t = torch.as_tensor(images).detach().cpu()
    if t.dim() != 4 or t.shape[1] not in (1, 3) or len(t) == 0:
        raise ValueError(
            f"{name} must be (N, C, H, W) with N >= 1, C = 1 or 3, got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of network inputs, got {t.dtype}")
    if unit_range and (t.min() < 0 or t.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1]; undo the normalisation (x * std + mean)")
    return t


def as_list(values: Any, name: str, length: int) -> list | None:
    """``values`` (a sequence, tensor or array) as a list of ``length`` entries; None stays."""
    if values is None:
        return None
    out = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(out) != length:
        raise ValueError(f"{name} must hold {length} entries, got {len(out)}")
    return out
