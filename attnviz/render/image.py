"""Images to pixels: any tensor, array or PIL image to 8-bit RGB, upscaling, montages, PNG.

Images come in as torch tensors, numpy arrays or PIL images in any of the usual layouts
(see :func:`to_uint8_rgb`); everything returns arrays or PIL images and displays nothing.
"""

from __future__ import annotations

import io
import math
import numbers
import struct
import zlib
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "ImageLike",
    "as_pil",
    "check_scale",
    "figure_to_image",
    "fit_height",
    "montage",
    "png_bytes",
    "to_uint8_rgb",
    "upscale",
]

ImageLike = Union[torch.Tensor, np.ndarray, Image.Image]
_TOLERANCE = 1e-3  # float images may stray this far outside [0, 1] (interpolation error)


def _as_array(image: ImageLike) -> tuple[np.ndarray, bool]:
    """The image as a numpy array, and whether channels-first is the likelier layout."""
    if isinstance(image, Image.Image):
        alpha = "A" in image.getbands() or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if alpha else "RGB")), False
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return (image.float() if image.is_floating_point() else image).numpy(), True
    if isinstance(image, np.ndarray):
        return image, False
    raise TypeError(
        f"image must be a torch.Tensor, numpy array or PIL image, got {type(image).__name__}"
    )


def _to_hwc(arr: np.ndarray, channels_first: bool) -> np.ndarray:
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3 and min(arr.shape) > 0:
        chw, hwc = arr.shape[0] in (1, 3), arr.shape[-1] in (1, 3, 4)
        if chw and (channels_first or not hwc):
            return arr.transpose(1, 2, 0)
        if hwc:
            return arr
    raise ValueError(
        "image must be (H, W), (C, H, W) with C in (1, 3) or (H, W, C) with C in (1, 3, 4), "
        f"got shape {tuple(arr.shape)}"
    )


def _to_unit(arr: np.ndarray) -> np.ndarray:
    """uint8, bool or float in [0, 1] -> float64 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"image must be uint8, bool or float in [0, 1], got dtype {arr.dtype}")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not (lo >= -_TOLERANCE and hi <= 1 + _TOLERANCE):
        raise ValueError(
            f"a float image must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; undo the "
            "normalisation first (x * std + mean) or pass uint8"
        )
    return np.clip(arr, 0.0, 1.0)


def to_uint8_rgb(image: ImageLike) -> np.ndarray:
    """Any single image as an (H, W, 3) uint8 array.

    Args:
        image: torch tensor, numpy array or PIL image; (H, W), (1, H, W), (3, H, W),
            (H, W, 1), (H, W, 3) or (H, W, 4); uint8, bool or float in [0, 1]. Grey is
            repeated to RGB; alpha is composited over white. Where a layout is
            ambiguous (e.g. 3 x 4 x 3), tensors are read channels-first and numpy
            arrays channels-last.

    Returns:
        (H, W, 3) uint8 array (a new array).

    Raises:
        TypeError: an unsupported type or dtype.
        ValueError: an unsupported shape, or float values outside [0, 1].
    """
    arr, channels_first = _as_array(image)
    arr = _to_hwc(arr, channels_first)
    if arr.dtype == np.uint8 and arr.shape[-1] == 3:
        return arr.copy()
    unit = _to_unit(arr)
    if unit.shape[-1] == 4:
        alpha = unit[..., 3:]
        unit = unit[..., :3] * alpha + (1.0 - alpha)
    unit = np.broadcast_to(unit, (*unit.shape[:2], 3))
    return np.round(unit * 255).astype(np.uint8)


def check_scale(scale: int) -> int:
    """``scale`` if it is an integer upscaling factor >= 1, else a ValueError."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    return int(scale)


def upscale(image: ImageLike, scale: int) -> np.ndarray:
    """Enlarge an image by an integer factor with nearest neighbour (no blur).

    Args:
        image: anything :func:`to_uint8_rgb` accepts.
        scale: positive integer factor.

    Returns:
        (H * scale, W * scale, 3) uint8 array.

    Raises:
        ValueError: ``scale`` is not a positive int (and the errors of ``to_uint8_rgb``).
    """
    scale = check_scale(scale)
    arr = to_uint8_rgb(image)
    return arr.repeat(scale, axis=0).repeat(scale, axis=1)


def montage(
    images: Sequence[ImageLike], ncols: int, pad: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile equally sized images into a grid, row by row.

    Args:
        images: a non-empty sequence of images of the same H x W (anything
            :func:`to_uint8_rgb` accepts).
        ncols: images per row (fewer images give one shorter row).
        pad: pixels between neighbouring tiles (none around the outside).
        pad_value: grey level (0-255) of the padding.

    Returns:
        (rows * H + (rows - 1) * pad, cols * W + (cols - 1) * pad, 3) uint8 array;
        tile k sits at row k // cols, column k % cols.

    Raises:
        ValueError: no images, images of different sizes, or a bad ``ncols`` / ``pad``.
    """
    tiles = [to_uint8_rgb(im) for im in images]
    if not tiles:
        raise ValueError("images must not be empty")
    if len({t.shape for t in tiles}) > 1:
        raise ValueError(f"images must share one size, got {sorted({t.shape for t in tiles})}")
    if ncols < 1 or pad < 0:
        raise ValueError(f"ncols must be >= 1 and pad >= 0, got ncols={ncols}, pad={pad}")
    (h, w, _), cols = tiles[0].shape, min(ncols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), pad_value, np.uint8)
    for k, tile in enumerate(tiles):
        y, x = (k // cols) * (h + pad), (k % cols) * (w + pad)
        out[y : y + h, x : x + w] = tile
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _stored_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG with no row filter and stored (level 0) zlib blocks.

    What Pillow writes at ``compress_level=0`` byte for byte in pixels, about ten times
    faster: Pillow still tries every row filter, which is most of its time when nothing
    is compressed.
    """
    h, w, _ = rgb.shape
    rows = np.empty((h, 3 * w + 1), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = rgb.reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
        + _png_chunk(b"IEND", b"")
    )


def png_bytes(image: ImageLike, compress_level: int = 1) -> bytes:
    """Encode an image as PNG bytes, e.g. for ``ipywidgets.Image(value=...)``.

    Args:
        image: a PIL image, or anything :func:`to_uint8_rgb` accepts.
        compress_level: zlib level 0-9; 1 favours speed and size; 0 stores the pixels
            uncompressed (3 bytes a pixel), the fastest to make, for live redraws on a
            local kernel.

    Returns:
        The PNG file's bytes.
    """
    if not (isinstance(compress_level, int) and 0 <= compress_level <= 9):
        raise ValueError(f"compress_level must be an int in [0, 9], got {compress_level!r}")
    if compress_level == 0 and not isinstance(image, Image.Image):
        return _stored_png(np.ascontiguousarray(to_uint8_rgb(image)))
    pil = image if isinstance(image, Image.Image) else Image.fromarray(to_uint8_rgb(image))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def as_pil(image: ImageLike) -> Image.Image:
    """Any image this module accepts, as an RGB PIL image (displays as a PNG in notebooks)."""
    return (
        image.convert("RGB")
        if isinstance(image, Image.Image)
        else Image.fromarray(to_uint8_rgb(image))
    )


def figure_to_image(figure: Any, dpi: int = 100) -> Image.Image:
    """Render a matplotlib ``Figure`` to a PIL image without pyplot (no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def fit_height(image: ImageLike, height: int) -> np.ndarray:
    """Nearest-neighbour resize to ``height`` rows, keeping the aspect ratio."""
    arr = to_uint8_rgb(image)
    h, w = arr.shape[:2]
    if h == height:
        return arr
    size = (max(1, round(w * height / h)), height)
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.NEAREST))
