"""Charts drawn straight into pixels (no matplotlib figure): fast enough for a slider."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["bar_chart", "branch_choice", "mark_bar"]

_BAR = np.array([70, 110, 170], np.uint8)  # a bar
_PICK = np.array([230, 85, 13], np.uint8)  # the selected channel's bar
_PICK_BG = np.array([253, 226, 200], np.uint8)  # behind it, so a tiny weight still shows
_GRID = np.array([215, 215, 215], np.uint8)
_PLOT_H, _TOP, _BOTTOM, _LEFT, _RIGHT = 140, 8, 14, 30, 12


def _bar_geometry(c: int) -> tuple[int, int]:
    """(bar width, gap) in pixels for C bars: about 512 pixels wide, at least 1 per bar."""
    width = max(1, min(10, 512 // c))
    return width, 1 if width >= 3 else 0


def bar_chart(heights: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """A bar chart of C values on the axis [lo, hi]: (RGB uint8 image, the pixel column
    where each bar starts). Grid lines at 0, 0.5 and 1 where they fall in the range; the
    extremes and the channel indices 0 and C - 1 as labels."""
    c = len(heights)
    bw, gap = _bar_geometry(c)
    width = _LEFT + c * bw + _RIGHT
    img = np.full((_TOP + _PLOT_H + _BOTTOM, width, 3), 255, np.uint8)
    for level in (0.0, 0.5, 1.0):
        if lo <= level <= hi:
            img[_y(level, lo, hi), _LEFT - 4 :] = _GRID
    x0 = _LEFT + np.arange(c) * bw
    col = np.arange(width)
    bar = (col - _LEFT) // bw
    inside = (col >= _LEFT) & (bar < c) & ((col - _LEFT) % bw < bw - gap)
    bar = np.clip(bar, 0, c - 1)
    top = _y(np.maximum(heights, 0.0), lo, hi)[bar]
    bottom = _y(np.minimum(heights, 0.0), lo, hi)[bar]
    rows = np.arange(img.shape[0])[:, None]
    mask = inside[None, :] & (rows >= np.minimum(top, bottom)) & (rows <= np.maximum(top, bottom))
    img[mask] = _BAR
    _axis_labels(img, lo, hi, c)
    return img, x0


def _y(v: Any, lo: float, hi: float) -> Any:
    """Pixel row of value v (row of ``hi`` is _TOP, of ``lo`` is _TOP + _PLOT_H - 1)."""
    return np.rint(_TOP + (hi - np.asarray(v)) / (hi - lo) * (_PLOT_H - 1)).astype(int)


def _axis_labels(img: np.ndarray, lo: float, hi: float, c: int) -> None:
    """Weights on the left (0, 1 and the extremes), channel indices 0 and C-1 below."""
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    grey = (90, 90, 90)
    for level in sorted({lo, 0.0, hi} if lo < 0 else {0.0, 1.0, hi}):
        draw.text((2, int(_y(level, lo, hi)) - 5), f"{level:.2g}", fill=grey)
    bottom = _TOP + _PLOT_H + 1
    draw.text((_LEFT, bottom), "0", fill=grey)
    right = _LEFT + c * _bar_geometry(c)[0]
    draw.text((right, bottom), str(c - 1), fill=grey, anchor="ra")
    img[:] = np.asarray(pil)


def mark_bar(base: np.ndarray, x0: np.ndarray, channel: int) -> np.ndarray:
    """A copy of :func:`bar_chart`'s image with one bar (and the column behind it)
    highlighted."""
    bw, gap = _bar_geometry(len(x0))
    out = base.copy()
    cols = slice(x0[channel], x0[channel] + max(bw - gap, 1))
    column = out[_TOP : _TOP + _PLOT_H, cols]
    is_bar = (column == _BAR).all(axis=-1)
    column[~is_bar] = _PICK_BG
    column[is_bar] = _PICK
    return out


def branch_choice(weights: Any, *, width: int = 512, row_height: int = 28) -> np.ndarray:
    """Branch attention (SKNet, ResNeSt) as a picture: one row per branch, one column per
    channel, the colour the weight the channel gave that branch (viridis, 0 to 1).

    Channels are ordered by the branch they favour most, then by how strongly, so the
    share of channels choosing each branch reads as the length of its bright run.

    Args:
        weights: K x C branch weights of one image (each column sums to one).
        width: picture width in pixels (each channel at least one pixel).
        row_height: pixels per branch.

    Returns:
        (K * row_height) x W x 3 uint8 array; W = ``width`` or C, whichever is larger.

    Raises:
        ValueError: not a K x C array with K >= 2, or values outside [0, 1].
    """
    from .heat import colorize

    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, np.float32)
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"weights must be K x C with K >= 2 branches, got {w.shape}")
    if w.size and (w.min() < -1e-6 or w.max() > 1 + 1e-6):
        raise ValueError("branch weights must lie in [0, 1] (a softmax over branches)")
    choice = w.argmax(0)
    order = np.lexsort((-w.max(0), choice))
    cells = colorize(np.clip(w[:, order], 0, 1), "viridis")  # K x C x 3
    cols = max(width, w.shape[1])
    x = (np.arange(cols) * w.shape[1]) // cols
    return np.repeat(cells[:, x], row_height, axis=0)
