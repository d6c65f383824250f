"""Attention maps as colours over images: normalize, colour, upsample, blend.

One path for every picture of a map: :func:`attnviz.maps.normalize` at the map's own
resolution, :func:`attnviz.maps.upsample` (stride-aligned) to the image, one colormap
lookup (:func:`colorize`), then the blend (:func:`overlay`). The maths lives in
:mod:`attnviz.maps`; this module only turns it into pixels.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..maps import NORMALIZE_MODES, as_maps, map_ranges, upsample
from ..maps import normalize as _normalize
from .image import ImageLike, to_uint8_rgb, upscale

__all__ = [
    "NORMALIZE_MODES",
    "colorize",
    "normalize_map",
    "overlay",
    "overlay_grid",
    "overlay_info",
    "upsample_map",
]

_TOLERANCE = 1e-3


def upsample_map(
    map: torch.Tensor | np.ndarray, size: int | Sequence[int], *, stride_aligned: bool = True
) -> np.ndarray:
    """:func:`attnviz.maps.upsample` as a float32 numpy array (for pictures)."""
    return upsample(map, size, stride_aligned=stride_aligned).numpy()


def normalize_map(
    map: torch.Tensor | np.ndarray,
    mode: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """:func:`attnviz.maps.normalize` as a float32 numpy array in [0, 1] (for pictures)."""
    return _normalize(map, mode, vmin, vmax).numpy()


def overlay_info(
    map: torch.Tensor | np.ndarray,
    *,
    normalize: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
) -> dict[str, Any]:
    """Which normalisation :func:`normalize_map` (and so :func:`overlay`) applies, in words.

    Returns:
        ``mode`` (``"per_map"``, or ``"shared"`` for a shared or fixed range), ``ranges``
        (one (lo, hi) per map, in the map's units) and ``caption``, the text a picture
        should carry: ``"per-map"`` or ``"shared [lo, hi]"`` (3 significant digits);
        per-map with only one end fixed reads e.g. ``"per-map, from 0"``.

    Raises:
        The errors of :func:`normalize_map`.
    """
    t, _ = as_maps(map)
    lo, hi = (r.numpy() for r in map_ranges(t, normalize, vmin, vmax))
    shared = normalize == "shared" or (vmin is not None and vmax is not None)
    if shared:
        caption = f"shared [{lo[0]:.3g}, {hi[0]:.3g}]"
    else:
        ends = [f"from {vmin:.3g}"] if vmin is not None else []
        ends += [f"to {vmax:.3g}"] if vmax is not None else []
        caption = ", ".join(["per-map", *ends])
    return {
        "mode": "shared" if shared else "per_map",
        "ranges": [(float(a), float(b)) for a, b in zip(lo, hi)],
        "caption": caption,
    }


@functools.lru_cache(maxsize=32)
def _colormap_lut(name: str) -> np.ndarray:
    """The colormap's N entries as (N, 3) uint8, rounded (not truncated as ``bytes=True``)."""
    import matplotlib  # here: keeps ``import attnviz`` cheap

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; use a matplotlib name such as 'jet', 'inferno', "
            "'viridis', 'magma', 'turbo' or 'gray'"
        ) from None
    lut = np.round(cmap(np.arange(cmap.N))[:, :3] * 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def colorize(map01: torch.Tensor | np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Colour a map in [0, 1] with a matplotlib colormap (no pyplot, no figure).

    Entry ``min(floor(v * N), N - 1)`` of the colormap's N colours, exactly what
    ``matplotlib.colormaps[cmap](v)`` picks, rounded to uint8.

    Args:
        map01: (H, W) or (N, H, W) values in [0, 1] (e.g. from :func:`normalize_map`).
        cmap: a matplotlib colormap name.

    Returns:
        (H, W, 3) or (N, H, W, 3) uint8 array.

    Raises:
        ValueError: unknown colormap, values outside [0, 1], NaN or inf.
    """
    t, single = as_maps(map01, "map01")
    arr = t.numpy()
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
        raise ValueError(
            f"map01 must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; normalise it first "
            "with normalize_map"
        )
    lut = _colormap_lut(cmap)
    # floor(v * N) clipped to [0, N - 1]: clipped first, the truncating cast is the floor
    n = len(lut)
    scaled = np.multiply(arr, np.float32(n), dtype=np.float32)
    np.clip(scaled, 0, n - 1, out=scaled)
    out = np.take(lut, scaled.astype(np.uint8 if n <= 256 else np.intp), axis=0)
    return out[0] if single else out


def _one_map(map: Any) -> Any:
    """Drop leading axes of size one: (1, h, w) and (1, 1, h, w) read as (h, w)."""
    shape = tuple(map.shape) if hasattr(map, "shape") else np.shape(map)
    while len(shape) > 2 and shape[0] == 1:
        map, shape = map[0], shape[1:]
    if len(shape) != 2:
        raise ValueError(f"map must be one (h, w) map, got shape {shape}")
    return map


def overlay(
    image: ImageLike,
    map: torch.Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalize: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """A map, normalised, coloured and upsampled, blended over its image.

    ``round((1 - alpha) * image + alpha * colour)`` per pixel and channel, with ``image``
    as :func:`to_uint8_rgb` gives it (grey repeated, RGBA composited over white) and
    ``colour = colorize(upsample_map(normalize_map(map)))``: the map is normalised at its
    own resolution, then upsampled stride-aligned to the image (:func:`upsample_map`).
    :func:`overlay_info` with the same arguments says which normalisation was used.

    Args:
        image: anything :func:`to_uint8_rgb` accepts, H x W.
        map: (h, w) map (or (1, h, w), (1, 1, h, w)) covering the whole image.
        alpha: weight of the colour, in [0, 1].
        cmap: matplotlib colormap name.
        normalize, vmin, vmax: as ``mode``, ``vmin``, ``vmax`` of :func:`normalize_map`.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        ValueError: alpha outside [0, 1], several maps, NaN / inf in the map, and the
            errors of :func:`to_uint8_rgb` and :func:`normalize_map`.
    """
    if not (isinstance(alpha, numbers.Real) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    base = to_uint8_rgb(image)
    unit = _normalize(_one_map(map), normalize, vmin, vmax)
    if tuple(unit.shape) != base.shape[:2]:
        unit = upsample(unit, base.shape[:2]).clamp_(0, 1)
    colour = colorize(unit, cmap)
    a = np.float32(alpha)  # float32: half the memory traffic of float64, same picture
    blend = (np.float32(1.0) - a) * base.astype(np.float32)
    blend += a * colour.astype(np.float32)
    return np.round(blend, out=blend).astype(np.uint8)


def _grid_rows(maps: Any, rows: int | None, cols: int) -> list[list[Any]]:
    if isinstance(maps, (torch.Tensor, np.ndarray)) and maps.ndim == 3:
        maps = maps[None]  # one row
    grid = [list(row) for row in maps]
    if not grid or any(len(row) != cols for row in grid):
        raise ValueError(
            f"maps must hold rows of {cols} maps (one per image), got row lengths "
            f"{[len(row) for row in grid]}"
        )
    if rows is not None and len(grid) != rows:
        raise ValueError(f"row_labels name {rows} rows but maps has {len(grid)}")
    return grid


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    # Pillow types the box as floats; the default font at (0, 0) gives whole pixels
    x0, y0, x1, y1 = cast("tuple[int, int, int, int]", draw.textbbox((0, 0), text))
    return x1 - min(x0, 0), y1 - min(y0, 0)


def overlay_grid(
    images: Sequence[ImageLike] | torch.Tensor,
    maps: Sequence[Sequence[Any]] | torch.Tensor | np.ndarray,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    captions: Sequence[Sequence[str | None]] | None = None,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalize: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
    scale: int = 1,
    pad: int = 4,
) -> Image.Image:
    """A labelled grid of overlays: rows of maps (models, blocks, methods) over columns of images.

    The CBAM paper's Grad-CAM figure (Woo et al. 2018, Fig. 4) is
    ``overlay_grid(images, cams, ["ResNet50", "+SE", "+CBAM"], names, [["P=0.93", ...], ...])``.
    Cell (r, c) is :func:`overlay` of ``maps[r][c]`` on image c upscaled by ``scale``, its
    caption below it; row labels sit on the left, column labels on top (PIL's default
    font, black on white).

    Args:
        images: C images of one size (anything :func:`to_uint8_rgb` accepts, or an
            (C, ch, H, W) tensor).
        maps: R rows of C maps (nested sequences, or an (R, C, h, w) / (C, h, w) array).
        row_labels: R labels, or None.
        col_labels: C labels, or None.
        captions: R rows of C captions (None for none), or None.
        alpha, cmap: as for :func:`overlay`.
        normalize, vmin, vmax: as for :func:`normalize_map`; ``"shared"`` shares one range
            over the whole grid, so its colours compare across rows and columns.
        scale: integer nearest-neighbour upscaling of the images (maps follow, bilinear).
        pad: pixels around and between cells.

    Returns:
        An RGB PIL image.

    Raises:
        ValueError: counts that do not match, images of different sizes, and the errors
            of :func:`overlay`.
    """
    tiles = [upscale(im, scale) for im in images]
    if not tiles or len({t.shape for t in tiles}) > 1:
        raise ValueError(
            f"images must be one or more images of one size, got {[t.shape for t in tiles]}"
        )
    cols = len(tiles)
    grid = _grid_rows(maps, None if row_labels is None else len(row_labels), cols)
    if col_labels is not None and len(col_labels) != cols:
        raise ValueError(f"col_labels must hold {cols} labels, got {len(col_labels)}")
    if captions is not None and (
        len(captions) != len(grid) or any(len(row) != cols for row in captions)
    ):
        raise ValueError(f"captions must be {len(grid)} rows of {cols} captions")
    if normalize == "shared" and (vmin is None or vmax is None):
        arrays = [as_maps(_one_map(m))[0] for row in grid for m in row]
        vmin = float(min(a.min() for a in arrays)) if vmin is None else vmin
        vmax = float(max(a.max() for a in arrays)) if vmax is None else vmax
    cells = [
        [
            overlay(tiles[c], m, alpha=alpha, cmap=cmap, normalize=normalize, vmin=vmin, vmax=vmax)
            for c, m in enumerate(row)
        ]
        for row in grid
    ]
    return _draw_grid(cells, row_labels, col_labels, captions, pad)


def _draw_grid(cells, row_labels, col_labels, captions, pad: int) -> Image.Image:
    h, w = cells[0][0].shape[:2]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [*(row_labels or []), *(col_labels or [])]
    texts += [t for row in captions or [] for t in row if t]
    line = max([_text_size(probe, str(t))[1] for t in texts] + [0])
    left = max([_text_size(probe, str(t))[0] for t in row_labels or []] + [0])
    left = left + pad if left else 0
    top = line + pad if col_labels is not None else 0
    below = line + pad if captions is not None else 0
    cell_h, cell_w = h + below + pad, w + pad
    canvas = Image.new(
        "RGB", (pad + left + len(cells[0]) * cell_w, pad + top + len(cells) * cell_h), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels or []):
        x = pad + left + c * cell_w + w // 2
        draw.text((x - _text_size(draw, str(label))[0] // 2, pad), str(label), fill="black")
    for r, row in enumerate(cells):
        y = pad + top + r * cell_h
        if row_labels is not None:
            label = str(row_labels[r])
            draw.text((pad, y + (h - _text_size(draw, label)[1]) // 2), label, fill="black")
        for c, cell in enumerate(row):
            x = pad + left + c * cell_w
            canvas.paste(Image.fromarray(cell), (x, y))
            text = captions[r][c] if captions is not None else None
            if text:
                tx = x + (w - _text_size(draw, str(text))[0]) // 2
                draw.text((tx, y + h + pad // 2), str(text), fill="black")
    return canvas
