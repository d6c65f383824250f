"""A picture that answers the pointer: click to choose a pixel, hover to preview it.

:class:`PointerView` is an `anywidget <https://anywidget.dev>`_ widget: its script
(``static/pointer.js``) ships inside the package and runs as it is in JupyterLab 4,
Notebook 7, VS Code, Colab and Voila, with no build step and nothing fetched. anywidget
was chosen over ipyevents (pointer events on the core ``Image``) because the answer to a
click must not wait for the kernel: the script holds the attention rows and draws the
pointed pixel's map itself within a frame, and the very same script draws the exported
offline page (:mod:`attnviz.widgets.export`), so the page and the live explorer show the
same pixels. ipyevents would only report events and leave every picture to a kernel
round trip, and offers nothing to an exported file.

Two modes:

- ``"attention"``: self-attention packed by :func:`attnviz.render.pointer.pack_attention`;
  the script draws the map of the chosen (``query``) or hovered pixel, and optionally the
  head-by-block grid (``grid``), by the rule of :mod:`attnviz.render.pointer`, whose numpy
  mirror (:meth:`PointerView.panel`, :meth:`PointerView.heads`) gives the same bytes.
- ``"png"``: the kernel draws the picture (``png``); the script reports the hovered pixel
  (``hover``) and clicks (``click``: x, y and a count) in image pixels.
"""

from __future__ import annotations

import io
import pathlib
from typing import Any

import anywidget
import numpy as np
import traitlets
from PIL import Image as PILImage

from .. import render
from ..render.pointer import AttentionPack, PointerState, draw_grid, draw_panel

__all__ = ["SCRIPT", "PointerView"]

#: the script of the widget and of exported pages
SCRIPT = pathlib.Path(__file__).with_name("static") / "pointer.js"


class PointerView(anywidget.AnyWidget):
    """The clickable picture (see the module doc). Traits synced with the page:

    ``mode`` ("attention" / "png"), ``size`` [H, W] of the image in pixels, ``scale``
    (canvas pixels per image pixel), ``image`` (the photo, H*W*3 bytes RGB), ``meta`` /
    ``data`` (an :class:`~attnviz.render.pointer.AttentionPack`), ``lut`` (the colormap,
    256*3 bytes), ``block``, ``head`` (-1: mean over heads), ``show``, ``query`` [x, y],
    ``alpha`` (0..255), ``grid`` / ``thumb`` (the head grid and its thumbnails' width),
    ``png`` (png mode's picture) and, from the page, ``hover`` ([x, y], [] when the
    pointer left) and ``click`` ([x, y, count], png mode).
    """

    _esm = SCRIPT
    mode = traitlets.Unicode("attention").tag(sync=True)
    size = traitlets.List(traitlets.Int(), [1, 1]).tag(sync=True)
    scale = traitlets.Int(1).tag(sync=True)
    image = traitlets.Bytes(b"").tag(sync=True)
    meta: traitlets.Dict = traitlets.Dict({"blocks": [], "rollout": None}).tag(sync=True)
    data = traitlets.Bytes(b"").tag(sync=True)
    lut = traitlets.Bytes(b"").tag(sync=True)
    block = traitlets.Unicode("").tag(sync=True)
    head = traitlets.Int(-1).tag(sync=True)
    show = traitlets.Unicode("query").tag(sync=True)
    query = traitlets.List(traitlets.Int(), [0, 0]).tag(sync=True)
    alpha = traitlets.Int(153).tag(sync=True)
    grid = traitlets.Bool(False).tag(sync=True)
    thumb = traitlets.Int(48).tag(sync=True)
    png = traitlets.Bytes(b"").tag(sync=True)
    hover = traitlets.List(traitlets.Int(), []).tag(sync=True)
    click = traitlets.List(traitlets.Int(), [0, 0, 0]).tag(sync=True)

    def __init__(self, cmap: str = "inferno", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cmap = cmap
        self.lut = np.ascontiguousarray(render.heat._colormap_lut(cmap)).tobytes()
        self._pack: AttentionPack | None = None
        self._photo: np.ndarray | None = None

    # -- attention mode --------------------------------------------------------------------
    def show_attention(self, photo: np.ndarray, pack: AttentionPack, scale: int) -> None:
        """Show ``photo`` ((H, W, 3) uint8) with the rows of ``pack``, ``scale`` times larger.
        Keeps the block if the pack has it (else its first block)."""
        photo = np.ascontiguousarray(photo, dtype=np.uint8)
        h, w = photo.shape[:2]
        names = [b["name"] for b in pack.meta["blocks"]]
        self._pack, self._photo = pack, photo
        with self.hold_sync():
            self.mode = "attention"
            self.size, self.scale = [h, w], int(scale)
            self.image = photo.tobytes()
            self.meta, self.data = pack.meta, pack.data
            if self.block not in names:
                self.block = names[0]
            x, y = self.query
            self.query = [min(x, w - 1), min(y, h - 1)]

    @property
    def pack(self) -> AttentionPack:
        if self._pack is None:
            raise ValueError("the view shows no attention yet (show_attention)")
        return self._pack

    def state(self, preview: tuple[int, int] | None = None) -> PointerState:
        """What the page shows now (``preview``: a hovered pixel, as while hovering)."""
        x, y = self.query
        return PointerState(
            block=self.block,
            head=None if self.head < 0 else self.head,
            show=self.show,
            query=(x, y),
            preview=preview,
            alpha=self.alpha,
        )

    def panel(self, preview: tuple[int, int] | None = None) -> np.ndarray:
        """The main picture's pixels as the page draws them ((H*scale, W*scale, 3) uint8)."""
        if self.mode == "png":
            return np.asarray(PILImage.open(io.BytesIO(self.png)).convert("RGB"))
        assert self._photo is not None
        return draw_panel(self._photo, self.pack, self.state(preview), self.scale, self.cmap)

    def heads(self, preview: tuple[int, int] | None = None) -> np.ndarray:
        """The head-by-block grid's pixels as the page draws them."""
        assert self._photo is not None
        return draw_grid(self._photo, self.pack, self.state(preview), self.thumb, self.cmap)

    def pictures(self, name: str, level: int = 0) -> dict[str, bytes]:
        """PNG bytes of what the view shows: ``name`` (the main picture) and, with the
        grid on, ``"heads"``."""
        if self.mode == "png":
            return {name: bytes(self.png)}
        out = {name: render.png_bytes(self.panel(), compress_level=level)}
        if self.grid:
            out["heads"] = render.png_bytes(self.heads(), compress_level=level)
        return out

    # -- png mode --------------------------------------------------------------------------
    @property
    def pointed(self) -> tuple[int, int] | None:
        """The image pixel (x, y) under the pointer, else the last one clicked, else None."""
        if len(self.hover) == 2:
            return int(self.hover[0]), int(self.hover[1])
        if self.click[2] > 0:
            return int(self.click[0]), int(self.click[1])
        return None

    def show_png(self, png: bytes, size: tuple[int, int], scale: int) -> None:
        """Show a picture the kernel drew, whose pixels are an H x W image ``scale`` times
        larger; pointer positions are reported in that image's pixels."""
        with self.hold_sync():
            self.mode = "png"
            self.size, self.scale = [int(size[0]), int(size[1])], int(scale)
            self.png = png
