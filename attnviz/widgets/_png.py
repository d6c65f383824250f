"""Show PNG bytes in an ``ipywidgets.Image`` at their own pixel size."""

from __future__ import annotations

import struct

import ipywidgets as widgets


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
