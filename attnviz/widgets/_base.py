"""What every attnviz widget app shares: the app base, the image index and block choice,
showing PNG bytes, and the checks of the images and labels an app is given."""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, overload

import ipywidgets as widgets
import numpy as np
import torch

from .. import render
from ..running import single_threaded
from .pointer import PointerView

__all__ = [
    "App",
    "BlockChoice",
    "ImageIndex",
    "Opacity",
    "as_list",
    "check_images",
    "close_tree",
    "display_images",
    "redraw",
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

    What a user sees and does is public: :attr:`controls` (the widgets they move, pick or
    click), :attr:`panels` and :meth:`pictures` (the pictures shown), :meth:`visible_pictures`
    (those on display in the current mode) and :attr:`info` (the text beside them).

    Subclasses set ``self.root``, name their controls in ``_CONTROLS``, keep their picture
    panels in attributes ``_<name>_png`` and their text line in ``_info``, and override
    :meth:`_release` to drop caches, links or callbacks when the app closes.
    """

    root: widgets.Box
    log: widgets.Output
    #: the app's controls in display order: public name -> attribute holding the widget
    _CONTROLS: ClassVar[dict[str, str]] = {}
    #: the controls :meth:`export_html` steps through by default, outermost first
    _EXPORT: ClassVar[tuple[str, ...]] = ()
    #: zlib level of the PNGs sent to the front end. 0 (stored) is the fastest to make,
    #: about 190 KiB per 256 x 256 panel: right for a local kernel. Raise it (1-6) when
    #: the kernel is remote (Colab) and bandwidth matters more than a few milliseconds.
    png_level: int = 0

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.root._repr_mimebundle_(**kwargs)

    def _release(self) -> None:
        """Drop what the app holds besides its widgets (caches, links, callbacks)."""

    def _show(self, widget: widgets.Image | PointerView, image: Any) -> None:
        """Show ``image`` (anything :func:`attnviz.render.to_uint8_rgb` takes) in ``widget``,
        encoding it only when its pixels differ from what the widget shows already."""
        arr = render.to_uint8_rgb(image)
        shown: dict[int, np.ndarray] = self.__dict__.setdefault("_shown_arrays", {})
        last = shown.get(id(widget))
        if last is not None and last.shape == arr.shape and np.array_equal(last, arr):
            return
        png = render.png_bytes(arr, compress_level=self.png_level)
        if isinstance(widget, PointerView):  # a clickable picture: positions in image pixels
            k = max(1, widget.scale)
            widget.show_png(png, (arr.shape[0] // k, arr.shape[1] // k), k)
        else:
            show_png(widget, png)
        shown[id(widget)] = arr

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        """Set several widgets without a redraw per widget; one redraw at the end."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        self._redraw()

    def _redraw(self) -> None:
        """Draw every panel from the app's state (each app defines it)."""
        raise NotImplementedError

    def _guard(self, callback: Callable[..., Any]) -> Callable[..., None]:
        """``callback`` for a widget event: skipped while several widgets are set together
        (``self._holding``), errors shown in the app's ``log`` where the user is looking."""

        def run(*args: Any) -> None:
            if getattr(self, "_holding", False):
                return
            try:
                callback(*args)
            except Exception:
                self.log.append_stderr(traceback.format_exc())

        return run

    @property
    def controls(self) -> dict[str, widgets.Widget]:
        """The widgets the user moves, picks or clicks, by name (the app's docstring lists
        them; e.g. ``"channel"``, the channel slider), the very widgets on display.

        Setting a control's ``value`` (or calling a button's ``click()``) is what the user
        does: the same callbacks run and the same pictures redraw. Its ``options``, ``max``,
        ``description`` and ``disabled`` are what the user is offered.
        """
        return {name: getattr(self, attr) for name, attr in self._CONTROLS.items()}

    @property
    def panels(self) -> dict[str, Any]:
        """The app's picture panels (``Image`` widgets, or the clickable
        :class:`~attnviz.widgets.pointer.PointerView`) by name (e.g. ``"bars"``), in the
        order they were made; a redraw sets the ``value`` (PNG bytes) of these same
        widgets, never replaces them. :meth:`pictures` gives their bytes."""
        return {
            name[1:-4]: widget
            for name, widget in vars(self).items()
            if name.startswith("_")
            and name.endswith("_png")
            and isinstance(widget, (widgets.Image, PointerView))
        }

    def pictures(self) -> dict[str, bytes]:
        """The PNG bytes each picture of the app shows now, by name (e.g. ``"bars"``).

        The names are the app's picture panels (:attr:`panels`): what a script saving
        figures, or a test checking a redraw, reads (an empty panel gives ``b""``).
        """
        out: dict[str, bytes] = {}
        for name, widget in self.panels.items():
            if isinstance(widget, widgets.Image):
                out[name] = bytes(widget.value)
            else:  # a PointerView: the pixels its page draws (and its head grid)
                out.update(widget.pictures(name, level=self.png_level))
        return out

    def visible_pictures(self) -> list[str]:
        """The names of the panels on display now, in layout order: those not inside a
        box the current mode hides (``layout.display == "none"``)."""
        names = {id(widget): name for name, widget in self.panels.items()}
        shown: list[str] = []

        def walk(widget: widgets.Widget) -> None:
            layout = getattr(widget, "layout", None)
            if layout is not None and layout.display == "none":
                return
            if id(widget) in names:
                shown.append(names[id(widget)])
            for child in getattr(widget, "children", ()):
                walk(child)

        walk(self.root)
        return shown

    @property
    def info(self) -> str:
        """The text shown with the pictures now (HTML; "" for an app without one)."""
        widget = getattr(self, "_info", None)
        return "" if widget is None else str(widget.value)

    def picture(self) -> bytes:
        """The app's main picture as PNG bytes (its first panel)."""
        pictures = self.pictures()
        if not pictures:
            raise ValueError(f"{type(self).__name__} shows no picture")
        return next(iter(pictures.values()))

    def export_html(
        self,
        path: str | os.PathLike | None = None,
        *,
        controls: Sequence[str] | None = None,
        values: dict[str, Sequence[Any]] | None = None,
        max_bytes: int = 10 * 10**6,
        title: str | None = None,
    ) -> Any:
        """One self-contained HTML file that keeps the app's interaction, offline.

        The app is stepped through every combination of the values of ``controls`` (by
        default the app's own choice, e.g. the STN inspector's epochs and images), nested
        in that order (a control's values are read after the ones before it are set, so a
        channel slider follows its block); every frame's visible pictures (PNG, each
        distinct one stored once) and text go into the page, whose sliders pick the
        frame. The page shows the very pictures the app showed. The app is left as it was.

        Args:
            path: where to write the page (``.html``, written atomically); None: only
                return it (to show it in a notebook).
            controls: names from :attr:`controls`, outermost first.
            values: the values to step through for some controls (e.g.
                ``{"image": [0, 3]}``); the others take every value they offer.
            max_bytes: refuse (ValueError, saying what to cut) beyond this many bytes of
                pictures.
            title: the page's title (default the app's class name).

        Returns:
            an :class:`~attnviz.widgets.export.ExportedPage` (``path``, ``nbytes``,
            ``seconds``; shown in a notebook as the page itself).
        """
        from .export import frames_page, timed

        names = list(self._EXPORT if controls is None else controls)
        unknown = [n for n in names if n not in self.controls]
        if not names or unknown:
            raise ValueError(
                f"controls must name some of {list(self.controls)}, got {names}"
                + (f" ({unknown} unknown)" if unknown else "")
            )
        panels = list(self.panels)

        def walk(depth: int, keep: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
            if depth == len(names):
                visible = set(self.visible_pictures())
                pictures = self.pictures()
                return keep(
                    {
                        "panels": {n: (pictures[n] if n in visible else None) for n in panels},
                        "info": self.info,
                    }
                )
            widget = self.controls[names[depth]]
            offered, labels = _choices(widget)
            chosen = offered
            if names[depth] in (values or {}):
                chosen = list((values or {})[names[depth]])
                bad = [v for v in chosen if v not in offered]
                if bad or not chosen:
                    raise ValueError(
                        f"values[{names[depth]!r}] must be some of {offered}, got {chosen}"
                    )
                labels = [labels[offered.index(v)] for v in chosen]
            first = widget.value
            start = chosen.index(first) if first in chosen else 0
            children = []
            try:
                for v in chosen:
                    widget.value = v
                    children.append(walk(depth + 1, keep))
            finally:  # even when the export stops: the app is left as it was
                widget.value = first
            return {
                "control": names[depth],
                "options": labels,
                "start": start,
                "children": children,
            }

        def make() -> str:
            level = self.png_level
            self.png_level = 9  # the page is kept and shared: small pictures
            self.__dict__.pop("_shown_arrays", None)
            try:
                return frames_page(
                    title or type(self).__name__,
                    panels,
                    lambda keep: walk(0, keep),
                    max_bytes=max_bytes,
                    scale=int(getattr(self, "scale", 1)),
                )
            finally:
                self.png_level = level
                self.__dict__.pop("_shown_arrays", None)

        height = 160 + max((_png_size(p)[1] for p in self.pictures().values()), default=300)
        return timed(make, path, height)

    def close(self) -> None:
        """Close every widget of the app and drop what it holds; safe to call twice."""
        self._release()
        close_tree(self.root)


def _choices(widget: widgets.Widget) -> tuple[list[Any], list[str]]:
    """The values a control can take and their labels (sliders, dropdowns, checkboxes)."""
    if isinstance(widget, widgets.Checkbox):
        return [False, True], ["off", "on"]
    if isinstance(widget, (widgets.IntSlider, widgets.BoundedIntText)):
        values = list(range(widget.min, widget.max + 1, widget.step or 1))
        return values, [str(v) for v in values]
    if isinstance(widget, (widgets.Dropdown, widgets.SelectionSlider, widgets.ToggleButtons)):
        pairs = [o if isinstance(o, tuple) else (str(o), o) for o in widget.options]
        return [v for _, v in pairs], [str(label) for label, _ in pairs]
    raise ValueError(f"a {type(widget).__name__} cannot be stepped through for an export")


_PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header (IHDR), nothing decoded; (0, 0) if no PNG."""
    return struct.unpack(">II", png[16:24]) if png[:8] == _PNG else (0, 0)


class Opacity:
    """The ``opacity`` property of apps that blend maps over images via ``self._opacity``."""

    _opacity: widgets.FloatSlider

    @property
    def opacity(self) -> float:
        """How opaque the maps drawn over the images are, in [0, 1]; settable (a redraw)."""
        return float(self._opacity.value)

    @opacity.setter
    def opacity(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"opacity must lie in [0, 1], got {value!r}")
        self._opacity.value = float(value)


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


def redraw(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """Mark an app's redraw: it runs with torch on one thread (see
    :func:`attnviz.running.single_threaded`), so a slider step stays fast on a busy
    machine. Redraws work on cached, tiny maps; forward passes are not redraws."""

    @functools.wraps(method)
    def wrapper(self: Any) -> None:
        with single_threaded():
            method(self)

    return wrapper


def show_png(widget: widgets.Image, png: bytes) -> None:
    """Set ``widget.value`` and pin its layout to the PNG's width and height.

    Front ends stretch an Image to its box (a VBox column) or squeeze it (an HBox row),
    which distorts the aspect ratio; a fixed size keeps every pixel where it was drawn.
    The size is read from the PNG header (IHDR), so nothing is decoded.
    """
    if png[:8] != _PNG:
        raise ValueError("show_png needs PNG bytes (render.png_bytes)")
    width, height = _png_size(png)
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


@overload
def as_list(values: None, name: str, length: int) -> None: ...
@overload
def as_list(values: Any, name: str, length: int) -> list: ...
def as_list(values: Any, name: str, length: int) -> list | None:
    """``values`` (a sequence, tensor or array) as a list of ``length`` entries; None stays."""
    if values is None:
        return None
    out = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(out) != length:
        raise ValueError(f"{name} must hold {length} entries, got {len(out)}")
    return out
