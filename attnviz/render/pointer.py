"""Self-attention packed for the browser, and the pixels the browser draws from it.

An explorer that answers a click at once cannot ask the kernel for every pixel: the
browser holds the rows and draws them itself (``attnviz/widgets/static/pointer.js``), in
the live widget and in an exported page alike. This module is the Python half of that
contract:

- :func:`pack_attention` lays every block's rows out as float16 bytes plus a small JSON
  description (:class:`AttentionPack`): for each block and each head slot (slot 0 is
  the mean over heads, slot h + 1 is head h), the row of every query cell over the key
  grid, then the named tokens' rows (``"cls"``, ``"reg1"``, ...) and the attention each
  key receives; once per image, the class token's rollout. Where all of it would pass
  ``max_bytes``, each query row keeps its ``k`` largest weights (float16 value and uint16
  key index) and the rest read as zero; named-token rows are always whole.
- :func:`draw_panel` and :func:`draw_grid` compute, in numpy, exactly the pixels the
  script draws from a pack (same float16 values, same float64 arithmetic, same integer
  geometry), so a test can compare the browser's canvas with them byte for byte and
  ``explorer.pictures()`` shows what the page shows.

The drawing rule, for one map m over the key grid (Hk x Wk), on an image of H x W pixels
shown ``scale`` times larger:

- t = (m - min m) / (max m - min m) in float64 (0 where the map is flat); colour index
  min(255, floor(256 t)) into a 256-entry colormap (inferno);
- canvas pixel (u, v) shows image pixel (x, y) = (u // scale, v // scale), which lies in
  key cell (y Hk // H, x Wk // W): each key is drawn as the block of pixels it covers,
  no smoothing;
- blended with the image as (c A + p (255 - A) + 127) // 255, A = round(255 opacity);
- for a query: the query cell's box (2 pixels, white), a local-attention window's box
  (light blue) and a crosshair on the pixel (cyan over a black outline; yellow while a
  hover previews a pixel without choosing it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..maps import rollout_map
from ..records import LocalAttentionRecord, SelfAttentionRecord
from .heat import _colormap_lut

__all__ = [
    "CELL_COLOR",
    "CROSSHAIR_COLOR",
    "PREVIEW_COLOR",
    "SELECTED_COLOR",
    "WINDOW_COLOR",
    "AttentionPack",
    "PointerState",
    "crosshair",
    "draw_grid",
    "draw_panel",
    "pack_attention",
    "thumb_size",
]

CROSSHAIR_COLOR = (0, 255, 255)
PREVIEW_COLOR = (255, 255, 0)
CELL_COLOR = (255, 255, 255)
WINDOW_COLOR = (80, 200, 255)
SELECTED_COLOR = (0, 255, 255)
GRID_GAP = 3  # pixels between thumbnails (and around the grid)
GRID_BACKGROUND = 255


@dataclass
class PointerState:
    """What the page shows: block, head (None: mean over heads), ``show`` ("query",
    "received", "rollout" or a named token such as "cls"), the chosen query pixel (x, y),
    the hovered pixel being previewed (or None) and the overlay's opacity A in 0..255."""

    block: str
    head: int | None = None
    show: str = "query"
    query: tuple[int, int] = (0, 0)
    preview: tuple[int, int] | None = None
    alpha: int = 153


@dataclass
class AttentionPack:
    """One image's attention rows for the browser: ``meta`` (JSON-able) and ``data``
    (little-endian float16 values, and uint16 key indices where rows are truncated).

    ``meta``: ``image_size`` [H, W]; ``tokens`` (named tokens some block has);
    ``rollout`` (offset of the class token's rollout row over the last block's key grid,
    or None); ``blocks``, each with ``name``, ``query_size``, ``key_size``, ``heads``,
    ``k`` (keys kept per query row; K when whole), ``qoff`` / ``ioff`` (offsets of the
    query rows' values / key indices; ``ioff`` None when whole), ``specials`` (named
    tokens then ``"received"``), ``soff`` (their whole rows) and ``windows`` (a local-
    attention block's window per query cell, [r0, c0, r1, c1] end-exclusive, else None).
    """

    meta: dict[str, Any]
    data: bytes
    _blocks: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._blocks = {b["name"]: b for b in self.meta["blocks"]}

    @property
    def nbytes(self) -> int:
        return len(self.data) + len(json.dumps(self.meta))

    def block(self, name: str) -> dict[str, Any]:
        try:
            return self._blocks[name]
        except KeyError:
            raise ValueError(f"no block {name!r}; the pack has {list(self._blocks)}") from None

    def _u16(self, offset: int, count: int) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<u2", count=count, offset=offset)

    def _f16(self, offset: int, count: int) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<f2", count=count, offset=offset).astype(np.float64)

    def row(self, block: str, head: int | None, show: str, cell: int = 0) -> np.ndarray | None:
        """The map drawn (float64, Hk*Wk) for a block, head, what is shown and, for a
        query, the query cell's index; None where the block has no such row."""
        b = self.block(block)
        hk, wk = b["key_size"]
        n = hk * wk
        slot = 0 if head is None or head >= b["heads"] else head + 1
        if show == "rollout":
            r = self.meta["rollout"]
            return None if r is None else self._f16(r["offset"], r["keys"])
        if show == "query":
            q = b["query_size"][0] * b["query_size"][1]
            k = b["k"]
            at = (slot * q + cell) * k
            values = self._f16(b["qoff"] + 2 * at, k)
            if b["ioff"] is None:
                return values
            out = np.zeros(n)
            out[self._u16(b["ioff"] + 2 * at, k)] = values
            return out
        if show not in b["specials"]:
            return None
        s = b["specials"].index(show)
        return self._f16(b["soff"] + 2 * (slot * len(b["specials"]) + s) * n, n)


def _f16_bytes(t: torch.Tensor) -> bytes:
    return t.detach().float().cpu().numpy().astype("<f2").tobytes()


def _grid_or_none(r: SelfAttentionRecord) -> bool:
    try:
        r.query_size, r.key_size  # noqa: B018 (raises where there is no grid)
    except ValueError:
        return False
    return True


CHUNK = 256  # query rows computed at a time (a factored record never forms its matrix)


def _query_rows(r: SelfAttentionRecord, item: int) -> Iterator[torch.Tensor]:
    """The query cells' rows over the key grid, slot 0 the mean over heads then each head:
    (heads + 1) x R x K float32 for R query cells at a time, computed by the record
    (``query_rows``) so that a factored record streams them from q and k."""
    p = len(r.prefix)
    q = r.query_size[0] * r.query_size[1]
    for start in range(0, q, CHUNK):
        rows = r.query_rows(slice(p + start, p + min(start + CHUNK, q)))[item][..., p:].float()
        yield torch.cat([rows.mean(0, keepdim=True), rows])


def pack_attention(
    records: Mapping[str, SelfAttentionRecord],
    image_size: Sequence[int],
    *,
    max_bytes: int | None = None,
    item: int = 0,
) -> AttentionPack:
    """Pack image ``item`` of captured self-attention records for the browser.

    Args:
        records: name -> record, as :func:`attnviz.capture` gives them; records whose
            queries or keys have no grid on the image are skipped.
        image_size: (H, W) of the image the network saw.
        max_bytes: the most the rows may take; whole float16 rows where they fit, else
            the ``k`` largest weights of each query row with ``k`` as large as fits
            (named-token rows stay whole). None: whole rows, whatever they take.
        item: which image of the batch.

    Raises:
        ValueError: no record with a grid, or ``max_bytes`` too small for one key per row.
    """
    h, w = (int(v) for v in image_size)
    blocks = {n: r for n, r in records.items() if _grid_or_none(r)}
    if not blocks:
        raise ValueError("no self-attention record with queries and keys on the image grid")
    tokens: list[str] = []
    plans = []
    for name, r in blocks.items():
        specials = [t for t in r.prefix] + ["received"]
        for t in r.prefix:
            if t not in tokens:
                tokens.append(t)
        (hq, wq), (hk, wk) = r.query_size, r.key_size
        plans.append((name, r, specials, hq * wq, hk * wk, r.heads + 1))
    rollout = None
    if "cls" in tokens:
        rollout = rollout_map([r for r in blocks.values() if "cls" in r.prefix])[item]

    def size(k: int) -> int:
        total = 0 if rollout is None else 2 * rollout.numel()
        for _, _, specials, q, n, slots in plans:
            kk = min(k, n)
            total += slots * q * kk * (2 if kk == n else 4) + slots * len(specials) * n * 2
        return total

    k_all = max(n for *_, n, _ in plans)
    if max_bytes is None or size(k_all) <= max_bytes:
        k = k_all
    else:
        if size(1) > max_bytes:
            raise ValueError(
                f"the attention rows need at least {size(1)} bytes (one key per query, named "
                f"tokens whole), more than max_bytes={max_bytes}: raise max_bytes or show "
                "fewer blocks or images"
            )
        lo, hi = 1, k_all  # size(lo) fits, size(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if size(mid) <= max_bytes else (lo, mid)
        k = lo

    parts: list[bytes] = []
    offset = 0

    def put(chunk: bytes) -> int:
        nonlocal offset
        start = offset
        parts.append(chunk)
        offset += len(chunk)
        return start

    meta_blocks = []
    for name, r, specials, _, n, _ in plans:
        heads = [None, *range(r.heads)]
        kk = min(k, n)
        values, index = [], []
        for rows in _query_rows(r, item):  # slots x R x K, R query cells at a time
            if kk == n:
                values.append(rows)
            else:
                top = rows.topk(kk, dim=-1)
                values.append(top.values)
                index.append(top.indices)
        qoff = put(_f16_bytes(torch.cat(values, dim=1)))
        ioff = None
        if index:
            ioff = put(torch.cat(index, dim=1).to(torch.int32).numpy().astype("<u2").tobytes())
        special_rows = []
        for hd in heads:
            for s in specials:
                m = r.received(head=hd) if s == "received" else r.token_attention(s, head=hd)
                special_rows.append(m[item].flatten())
        soff = put(_f16_bytes(torch.stack(special_rows)))
        windows = None
        if isinstance(r, LocalAttentionRecord):
            hq, wq = r.query_size
            windows = [list(r.window((i, j))) for i in range(hq) for j in range(wq)]
        meta_blocks.append(
            {
                "name": name,
                "query_size": list(r.query_size),
                "key_size": list(r.key_size),
                "heads": r.heads,
                "k": kk,
                "qoff": qoff,
                "ioff": ioff,
                "specials": specials,
                "soff": soff,
                "windows": windows,
            }
        )
    meta_rollout = None
    if rollout is not None:
        meta_rollout = {
            "offset": put(_f16_bytes(rollout.flatten())),
            "keys": rollout.numel(),
            "key_size": list(rollout.shape),
        }
    meta = {
        "version": 1,
        "image_size": [h, w],
        "tokens": tokens,
        "rollout": meta_rollout,
        "blocks": meta_blocks,
    }
    return AttentionPack(meta=meta, data=b"".join(parts))


# -- the drawing rule, mirrored by pointer.js ---------------------------------------------
def _lut(cmap: str = "inferno") -> np.ndarray:
    return np.asarray(_colormap_lut(cmap))


def _colour_indices(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        return np.zeros(m.shape, dtype=np.int64)
    t = (m - lo) / (hi - lo)
    return np.minimum(255, np.floor(t * 256)).astype(np.int64)


def _blend(colour: np.ndarray, pixel: np.ndarray, alpha: int) -> np.ndarray:
    c, p = colour.astype(np.int64), pixel.astype(np.int64)
    return ((c * alpha + p * (255 - alpha) + 127) // 255).astype(np.uint8)


def _overlay(
    photo: np.ndarray,
    row: np.ndarray,
    key_size: Sequence[int],
    image_size: Sequence[int],
    ys: np.ndarray,
    xs: np.ndarray,
    alpha: int,
    cmap: str,
) -> np.ndarray:
    """``row`` (over the key grid) coloured and blended over ``photo``, the image pixels
    (ys, xs) of each output pixel: each key the block of pixels it covers (``paint`` in
    pointer.js)."""
    (hk, wk), (h, w) = key_size, image_size
    colour = _lut(cmap)[_colour_indices(row)].reshape(hk, wk, 3)
    return _blend(colour[(ys * hk) // h][:, (xs * wk) // w], photo, alpha)


def _outline(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: Any) -> None:
    """A 2-pixel box inside the inclusive rectangle [x0, x1] x [y0, y1], clipped."""
    h, w = canvas.shape[:2]
    for xa, ya, xb, yb in (
        (x0, y0, x1, y0 + 1),
        (x0, y1 - 1, x1, y1),
        (x0, y0, x0 + 1, y1),
        (x1 - 1, y0, x1, y1),
    ):
        xa, xb, ya, yb = max(xa, 0), min(xb, w - 1), max(ya, 0), min(yb, h - 1)
        if xa <= xb and ya <= yb:
            canvas[ya : yb + 1, xa : xb + 1] = colour


def crosshair(canvas: np.ndarray, cx: int, cy: int, arm: int, colour: Any) -> None:
    """Draw, in place, a crosshair on canvas pixel (cx, cy): arms ``arm`` pixels long,
    1 pixel of ``colour`` over a 3-pixel black outline, clipped to the canvas."""
    h, w = canvas.shape[:2]
    for c, width in (((0, 0, 0), 1), (colour, 0)):
        xa, xb = max(cx - arm, 0), min(cx + arm, w - 1)
        ya, yb = max(cy - arm, 0), min(cy + arm, h - 1)
        canvas[max(cy - width, 0) : min(cy + width, h - 1) + 1, xa : xb + 1] = c
        canvas[ya : yb + 1, max(cx - width, 0) : min(cx + width, w - 1) + 1] = c


def _query_cell(b: dict[str, Any], xy: Sequence[int], image_size: Sequence[int]) -> int:
    (h, w), (hq, wq) = image_size, b["query_size"]
    x, y = xy
    return ((y * hq) // h) * wq + (x * wq) // w


def draw_panel(
    image: np.ndarray,
    pack: AttentionPack,
    state: PointerState,
    scale: int,
    cmap: str = "inferno",
) -> np.ndarray:
    """The main panel exactly as ``pointer.js`` draws it: (H*scale, W*scale, 3) uint8.

    ``image`` is the photo, (H, W, 3) uint8. The map is the row the state picks (the
    previewed pixel's while a hover previews), overlaid by the rule in this module's doc.
    """
    h, w = image.shape[:2]
    b = pack.block(state.block)
    hk, wk = b["key_size"]
    where = state.preview if state.preview is not None else state.query
    cell = _query_cell(b, where, (h, w))
    row = pack.row(state.block, state.head, state.show, cell)
    if state.show == "rollout" and pack.meta["rollout"] is not None:
        hk, wk = pack.meta["rollout"]["key_size"]
    ys = np.arange(h * scale) // scale
    xs = np.arange(w * scale) // scale
    pixels = image[ys][:, xs]
    if row is None:
        return pixels.copy()
    canvas = _overlay(pixels, row, (hk, wk), (h, w), ys, xs, state.alpha, cmap)
    if state.show == "query":
        (hq, wq), (x, y) = b["query_size"], where
        i, j = divmod(cell, wq)
        if b["windows"] is not None:
            r0, c0, r1, c1 = b["windows"][cell]
            _outline(
                canvas,
                (c0 * w * scale) // wk,
                (r0 * h * scale) // hk,
                (c1 * w * scale) // wk - 1,
                (r1 * h * scale) // hk - 1,
                WINDOW_COLOR,
            )
        _outline(
            canvas,
            (j * w * scale) // wq,
            (i * h * scale) // hq,
            ((j + 1) * w * scale) // wq - 1,
            ((i + 1) * h * scale) // hq - 1,
            CELL_COLOR,
        )
        colour = PREVIEW_COLOR if state.preview is not None else CROSSHAIR_COLOR
        arm = max(3, 2 * scale)
        crosshair(canvas, x * scale + scale // 2, y * scale + scale // 2, arm, colour)
    return canvas


def thumb_size(image_size: Sequence[int], thumb: int) -> tuple[int, int]:
    """(width, height) of one head-grid thumbnail ``thumb`` pixels wide."""
    h, w = image_size
    return thumb, max(1, (thumb * h) // w)


def _grid_heads(pack: AttentionPack) -> int:
    return max(b["heads"] for b in pack.meta["blocks"])


def draw_grid(
    image: np.ndarray,
    pack: AttentionPack,
    state: PointerState,
    thumb: int = 48,
    cmap: str = "inferno",
) -> np.ndarray:
    """The head-by-block grid exactly as ``pointer.js`` draws it: one row per block, one
    column for the mean over heads then one per head, each cell the row the state picks
    for that block and head (the chosen query's cell on that block's grid; a hovered
    pixel being previewed changes only the main picture), overlaid on
    the photo shrunk to ``thumb`` pixels wide; the block and head shown large are boxed
    (cyan). Rollout shows the class token's rows. Cells a block lacks stay blank."""
    h, w = image.shape[:2]
    tw, th = thumb_size((h, w), thumb)
    blocks = pack.meta["blocks"]
    cols = _grid_heads(pack) + 1
    g = GRID_GAP
    shape = (g + len(blocks) * (th + g), g + cols * (tw + g), 3)
    canvas = np.full(shape, GRID_BACKGROUND, np.uint8)
    ys, xs = (np.arange(th) * h) // th, (np.arange(tw) * w) // tw
    small = image[ys][:, xs]
    show = "cls" if state.show == "rollout" else state.show
    where = state.query  # the grid follows clicks; a hover previews the main picture only
    current = pack.block(state.block)
    selected = 0 if state.head is None or state.head >= current["heads"] else state.head + 1
    for bi, b in enumerate(blocks):
        hk, wk = b["key_size"]
        cell = _query_cell(b, where, (h, w))
        for c in range(b["heads"] + 1):
            row = pack.row(b["name"], None if c == 0 else c - 1, show, cell)
            if row is None:
                continue
            y0, x0 = g + bi * (th + g), g + c * (tw + g)
            canvas[y0 : y0 + th, x0 : x0 + tw] = _overlay(
                small, row, (hk, wk), (h, w), ys, xs, state.alpha, cmap
            )
        if b["name"] == state.block:
            y0, x0 = g + bi * (th + g), g + selected * (tw + g)
            _outline(canvas, x0 - 2, y0 - 2, x0 + tw + 1, y0 + th + 1, SELECTED_COLOR)
    return canvas
