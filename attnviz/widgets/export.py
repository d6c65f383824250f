"""One HTML file that keeps an explorer's interaction: no kernel, nothing fetched.

Two kinds of page, both self-contained (scripts, styles, pictures and data inlined; a
Content-Security-Policy of ``default-src 'none'`` makes the browser refuse any request,
so the page works from disk, offline, and leaks nothing):

- **pointer pages** (:func:`pointer_page`, the query explorer and its head grid): the
  attention rows of each image, packed as float16 (:func:`attnviz.render.pointer.
  pack_attention`), and the very script the live widget runs (``static/pointer.js``), so a
  click on the exported page draws the same pixels as a click on the live explorer.
- **frame pages** (:func:`frames_page`, the STN inspector, the channel explorer, any
  app): every combination of the chosen controls' values, stepped through the app itself,
  with the PNG bytes its panels showed (each distinct picture stored once) and its text;
  the page's controls pick the frame, so it shows exactly what the live app showed.

:class:`ExportedPage` is what ``export_html`` returns: its path, size and time, and, in a
notebook, the page itself in a sandboxed frame (which survives ``nbconvert`` to HTML and
still answers clicks there).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from ..render import png_bytes
from ..storage import atomic_write_text
from .pointer import SCRIPT

__all__ = ["ExportedPage", "frames_page", "pointer_page", "write_page"]

#: the page may make no request at all; inline scripts and styles, data: pictures only
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:"
)
CSS = (
    "body{font:13px system-ui,sans-serif;margin:12px;color:#222;background:#fff}"
    "h1{font-size:16px;margin:0 0 8px}#controls{display:flex;flex-wrap:wrap;gap:6px 16px;"
    "margin-bottom:8px}#controls label{display:flex;gap:6px;align-items:center}"
    "#info{font:12px monospace;margin-top:6px;max-width:60em}"
    ".panels{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}"
    ".panels img{image-rendering:pixelated}small{color:#666}"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _script() -> str:
    """``pointer.js`` as a classic script that defines ``window.attnvizPointer``."""
    source = SCRIPT.read_text(encoding="utf-8").rstrip()
    tail = "export default { render };"
    if not source.endswith(tail):
        raise RuntimeError(f"{SCRIPT} must end with {tail!r}")
    return "(() => {\n" + source[: -len(tail)] + "window.attnvizPointer = { render };\n})();"


def _static(name: str) -> str:
    return (SCRIPT.parent / name).read_text(encoding="utf-8")


def _json_script(data: Any) -> str:
    # </script> cannot appear inside: escape every "<" of the JSON
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def _page(title: str, body: str, data: Any, script: str) -> str:
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}"
        f"<script id='attnviz-data' type='application/json'>{_json_script(data)}</script>"
        f"<script>{script}</script></body></html>\n"
    )


@dataclass
class ExportedPage:
    """An exported page: ``html`` (the text), ``path`` (where it was written, or None),
    ``seconds`` (time to make it) and ``height`` (pixels its frame gets in a notebook)."""

    html: str
    path: Path | None
    seconds: float
    height: int = 600

    @property
    def nbytes(self) -> int:
        return len(self.html.encode("utf-8"))

    def _repr_html_(self) -> str:
        where = f" ({html.escape(str(self.path))})" if self.path else ""
        return (
            f"<iframe class='attnviz-export' sandbox='allow-scripts' "
            f"style='width:100%;height:{self.height}px;border:1px solid #ddd' "
            f'srcdoc="{html.escape(self.html, quote=True)}"></iframe>'
            f"<div><small>exported page, {self.nbytes / 2**20:.2f} MiB{where}</small></div>"
        )

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "not written"
        return f"ExportedPage({where}, {self.nbytes / 2**20:.2f} MiB, {self.seconds:.1f} s)"


def write_page(text: str, path: str | os.PathLike | None) -> Path | None:
    """Write ``text`` to ``path`` atomically (:func:`attnviz.storage.atomic_write_text`:
    a temporary file renamed into place, with the permissions a new file gets)."""
    if path is None:
        return None
    target = Path(path)
    if target.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"an exported page is HTML: give a path ending in .html, got {target}")
    return atomic_write_text(text, target)


# -- pointer pages (query explorer, head grid) ---------------------------------------------


def pointer_page(
    title: str,
    images: Sequence[dict[str, Any]],
    state: dict[str, Any],
    lut: bytes,
) -> str:
    """The page of a query explorer: ``images`` (each ``label``, ``photo`` (H*W*3 bytes),
    ``size`` [H, W] and an :class:`~attnviz.render.pointer.AttentionPack` ``pack``) and
    the first ``state`` (the :class:`~attnviz.widgets.pointer.PointerView` traits
    ``block``, ``head``, ``show``, ``query``, ``alpha``, ``grid``, ``thumb``, ``scale``,
    ``mode``)."""
    data = {
        "state": state,
        "lut": _b64(lut),
        "images": [
            {
                "label": v["label"],
                "size": list(v["size"]),
                "photo": _b64(v["photo"]),
                "meta": v["pack"].meta,
                "data": _b64(v["pack"].data),
            }
            for v in images
        ],
    }
    body = "<div id='controls'></div><div id='view'></div><div id='info'></div>"
    return _page(title, body, data, _script() + "\n" + _static("page_pointer.js"))


# -- frame pages (any app: every combination of chosen controls) --------------------------


def _shrunk(png: bytes, scale: int) -> tuple[bytes, int, int, int]:
    """A picture drawn ``scale`` times larger by repeating pixels is stored at its own size
    and shown ``scale`` times larger again by the page (``image-rendering: pixelated``,
    an integer factor: the same screen pixels). Returns (png, factor, width, height)."""
    arr = np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"))
    h, w = arr.shape[:2]
    if scale > 1 and h % scale == 0 and w % scale == 0:
        small = arr[::scale, ::scale]
        if np.array_equal(small.repeat(scale, 0).repeat(scale, 1), arr):
            return png_bytes(small, compress_level=9), scale, w, h
    return png, 1, w, h


def frames_page(
    title: str,
    names: Sequence[str],
    enumerate_frames: Callable[[Callable[[dict[str, Any]], dict[str, Any]]], dict[str, Any]],
    *,
    max_bytes: int,
    scale: int = 1,
) -> str:
    """The page of an app stepped through every combination of its chosen controls.

    ``scale``: the app's integer upscaling (pictures that are exact upscales are stored
    small). ``enumerate_frames(keep)`` returns the tree: a node is ``{"control", "options"
    (labels), "start" (index shown first), "children"}`` or a leaf, ``keep({"panels": {name:
    png bytes or None}, "info": html})`` (which stores the pictures at once and stops the
    export as soon as they pass ``max_bytes``).

    Raises:
        ValueError: the distinct pictures take more than ``max_bytes``.
    """
    pngs: list[list[Any]] = []
    index: dict[str, int] = {}
    total = 0
    frames = 0

    def keep(leaf: dict[str, Any]) -> dict[str, Any]:
        """Store one frame's pictures now, so that an export over budget stops at once."""
        nonlocal total, frames
        frames += 1
        out: dict[str, int | None] = {}
        for name, png in leaf["panels"].items():
            if png is None:
                out[name] = None
                continue
            key = hashlib.sha1(png).hexdigest()
            if key not in index:
                index[key] = len(pngs)
                small, k, width, height = _shrunk(png, scale)
                pngs.append([_b64(small), k, width, height])
                total += len(pngs[-1][0])
                if total > max_bytes:
                    raise ValueError(
                        f"the pictures of {frames} frames already take {total / 2**20:.1f} MiB, "
                        f"more than max_bytes ({max_bytes / 2**20:.1f} MiB): export fewer "
                        "images or controls (values={'image': [0]}, controls=[...]), or raise "
                        "max_bytes"
                    )
            out[name] = index[key]
        return {"panels": out, "info": leaf["info"]}

    tree = enumerate_frames(keep)
    data = {"tree": tree, "panels": list(names), "pngs": pngs}
    body = "<div id='controls'></div><div id='panels' class='panels'></div><div id='info'></div>"
    return _page(title, body, data, _static("page_frames.js"))


def timed(make: Callable[[], str], path: Any, height: int) -> ExportedPage:
    """Make a page (``make()`` -> its HTML), write it to ``path``, time both; ``height``:
    the pixels its frame gets in a notebook."""
    start = time.perf_counter()
    text = make()
    written = write_page(text, path)
    return ExportedPage(text, written, time.perf_counter() - start, height)
