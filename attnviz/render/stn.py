"""Drawing a spatial transformer: the sampled quadrilateral, boxes, input-crop pairs.

Coordinates are the edge-based pixel coordinates of :mod:`attnviz.maps` (0 is the left
edge of the first pixel, W the right edge of the last one), so ``maps.theta_corners``
output draws as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .. import maps
from .image import ImageLike, check_scale, fit_height, montage, upscale

__all__ = ["BOX_COLOR", "QUAD_COLOR", "draw_box", "draw_quad", "stn_grid"]

#: default colour of the region an STN samples (its quadrilateral)
QUAD_COLOR = (255, 64, 0)
#: default colour of a ground-truth box
BOX_COLOR = (0, 200, 0)


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
    scale = check_scale(scale)
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


def _stn_pair(image, corners, output, box, scale: int, gap: int) -> np.ndarray:
    left = draw_quad(image, corners, scale=scale)
    if box is not None:
        left = draw_box(left, box, scale=scale)
    right = fit_height(output, left.height)
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


# -- maps over images: upsampling, normalisation, colour, overlays ---------------------------
# A map of h x w cells (a CBAM spatial map Ms, a Grad-CAM map) covers the whole image of
# H x W pixels: cell (i, j) stands for the block of H/h x W/w pixels whose edges are
# i * H/h .. (i + 1) * H/h and j * W/w .. (j + 1) * W/w, as a network's strides lay it out,
# and its value belongs at the block's centre. Maps are normalised at their own resolution
# (the numbers the network produced) and upsampled afterwards.
