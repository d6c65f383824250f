"""Render attention to pixels: numpy uint8 arrays or PIL images out, never displays.

Images come in as torch tensors, numpy arrays or PIL images in any of the usual
layouts (see :func:`to_uint8_rgb`); coordinates are the edge-based pixel
coordinates of :mod:`attnviz.maps` (0 is the left edge of the first pixel, W the
right edge of the last one), so ``maps.theta_corners`` output draws as is.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import maps

__all__ = [
    "BOX_COLOR",
    "QUAD_COLOR",
    "draw_box",
    "draw_quad",
    "montage",
    "png_bytes",
    "stn_grid",
    "to_uint8_rgb",
    "upscale",
]

#: default colour of the region an STN samples (its quadrilateral)
QUAD_COLOR = (255, 64, 0)
#: default colour of a ground-truth box
BOX_COLOR = (0, 200, 0)

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


def _check_scale(scale: int) -> int:
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
    scale = _check_scale(scale)
    arr = to_uint8_rgb(image)
    return arr.repeat(scale, axis=0).repeat(scale, axis=1)


def _canvas(image: ImageLike, scale: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    return Image.fromarray(upscale(image, scale))


def _points(corners, scale: int, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Edge-based coordinates [0, W] onto the canvas pixels [0, W * scale - 1].

    The (size - 1) / size factor puts the frame of the whole image on its border
    pixels instead of half outside; it moves a point by less than one canvas pixel.
    """
    if isinstance(corners, torch.Tensor):
        corners = corners.detach().cpu().double().numpy()
    pts = np.asarray(corners, dtype=np.float64)
    if pts.ndim == 3 and pts.shape[0] == 1:
        pts = pts[0]
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"corners must be (K, 2) pixel (x, y) points, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("corners must be finite (a degenerate theta gives inf or NaN)")
    fit = np.array([(size[0] - 1) / size[0], (size[1] - 1) / size[1]])
    return [(math.floor(x + 0.5), math.floor(y + 0.5)) for x, y in pts * scale * fit]


def draw_quad(
    image: ImageLike,
    corners: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    *,
    scale: int = 1,
    color: Sequence[int] = QUAD_COLOR,
    width: int = 1,
) -> Image.Image:
    """Draw a closed polygon, e.g. the quadrilateral an STN samples, over an image.

    Args:
        image: an array or tensor (see :func:`to_uint8_rgb`), upscaled by ``scale``
            with nearest neighbour; or a PIL image, taken as a canvas already drawn
            at this scale (e.g. the result of another ``draw_*`` call) and not
            resized, so calls compose:
            ``draw_box(draw_quad(x, quad, scale=4), box, scale=4)``.
        corners: (4, 2) or (1, 4, 2) pixel (x, y) corners in the original image's
            edge-based coordinates, as returned by ``maps.theta_corners``; any (K, 2)
            polygon works.
        scale: integer factor from those coordinates to the canvas.
        color: RGB outline colour.
        width: outline width in canvas pixels.

    Returns:
        A new RGB PIL image (the input is never modified).

    Raises:
        ValueError: bad ``corners`` shape, non-finite corners or a bad ``scale``.
    """
    scale = _check_scale(scale)
    canvas = _canvas(image, scale)
    pts = _points(corners, scale, canvas.size)
    joint = "curve" if width > 1 else None
    ImageDraw.Draw(canvas).line([*pts, pts[0]], fill=tuple(color), width=width, joint=joint)
    return canvas


def draw_box(
    image: ImageLike,
    box: torch.Tensor | np.ndarray | Sequence[float],
    *,
    scale: int = 1,
    color: Sequence[int] = BOX_COLOR,
    width: int = 1,
) -> Image.Image:
    """Draw an axis-aligned box (x0, y0, x1, y1), e.g. a ground-truth box, over an image.

    Same conventions as :func:`draw_quad` (edge-based pixel coordinates, PIL
    images taken as canvases at ``scale``).

    Raises:
        ValueError: ``box`` does not hold four numbers.
    """
    if isinstance(box, torch.Tensor):
        box = box.detach().cpu().double().numpy()
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,):
        raise ValueError(f"box must be four numbers x0, y0, x1, y1, got shape {np.shape(box)}")
    x0, y0, x1, y1 = b
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return draw_quad(image, corners, scale=scale, color=color, width=width)


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


def png_bytes(image: ImageLike, compress_level: int = 1) -> bytes:
    """Encode an image as PNG bytes, e.g. for ``ipywidgets.Image(value=...)``.

    Args:
        image: a PIL image, or anything :func:`to_uint8_rgb` accepts.
        compress_level: zlib level 0-9; the default 1 favours speed for live redraws.

    Returns:
        The PNG file's bytes.
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(to_uint8_rgb(image))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _fit_height(image: ImageLike, height: int) -> np.ndarray:
    """Nearest-neighbour resize to ``height`` rows, keeping the aspect ratio."""
    arr = to_uint8_rgb(image)
    h, w = arr.shape[:2]
    if h == height:
        return arr
    size = (max(1, round(w * height / h)), height)
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.NEAREST))


def _stn_pair(image, corners, output, box, scale: int, gap: int) -> np.ndarray:
    left = draw_quad(image, corners, scale=scale)
    if box is not None:
        left = draw_box(left, box, scale=scale)
    right = _fit_height(output, left.height)
    spacer = np.full((left.height, gap, 3), 255, np.uint8)
    return np.concatenate([np.asarray(left), spacer, right], axis=1)


def _check_stn_batch(images, thetas, outputs, boxes) -> None:
    n = len(images)
    if images.dim() != 4 or outputs.dim() != 4:
        raise ValueError(
            "images and outputs must be (N, C, H, W), got "
            f"{tuple(images.shape)} and {tuple(outputs.shape)}"
        )
    if tuple(thetas.shape) != (n, 2, 3) or len(outputs) != n:
        raise ValueError(
            f"thetas must be ({n}, 2, 3) and outputs hold {n} images to match images, got "
            f"{tuple(thetas.shape)} and {tuple(outputs.shape)}"
        )
    if boxes is not None and tuple(boxes.shape) != (n, 4):
        raise ValueError(f"boxes must be ({n}, 4) as x0, y0, x1, y1, got {tuple(boxes.shape)}")


def stn_grid(
    images: torch.Tensor,
    thetas: torch.Tensor,
    outputs: torch.Tensor,
    boxes: torch.Tensor | None = None,
    scale: int = 3,
    ncols: int = 8,
) -> Image.Image:
    """Inputs with the region the STN samples, each beside its straightened crop.

    For every sample: the input U (upscaled by ``scale``) with the quadrilateral of
    A_theta (``maps.theta_corners``, colour :data:`QUAD_COLOR`) and the ground-truth
    box if given (:data:`BOX_COLOR`), next to the transformed output V resized
    (nearest neighbour) to the same height.

    Args:
        images: U, (N, C, H, W), float in [0, 1] or uint8.
        thetas: A_theta of each image, (N, 2, 3).
        outputs: V, (N, C, H', W') (e.g. ``TransformRecord.output``), same range.
        boxes: optional (N, 4) ground-truth boxes x0, y0, x1, y1 in input pixels.
        scale: integer upscaling of the inputs.
        ncols: input/output pairs per row.

    Returns:
        One RGB PIL image.

    Raises:
        ValueError: shapes that do not match.
    """
    images, thetas, outputs = (torch.as_tensor(t) for t in (images, thetas, outputs))
    boxes = None if boxes is None else torch.as_tensor(boxes)
    _check_stn_batch(images, thetas, outputs, boxes)
    corners = maps.theta_corners(thetas.double(), images.shape[-2:])
    pairs = [
        _stn_pair(images[i], corners[i], outputs[i], None if boxes is None else boxes[i], scale, 2)
        for i in range(len(images))
    ]
    return Image.fromarray(montage(pairs, ncols, pad=3 * scale))
