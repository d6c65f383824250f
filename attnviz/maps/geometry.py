"""Geometry of spatial transformers: theta, the sampled region, boxes and resampling.

Conventions (Jaderberg et al., "Spatial Transformer Networks",
NeurIPS 2015, eq. 1): A_theta (2 x 3) maps a point (x_t, y_t) of the OUTPUT grid,
in normalised coordinates [-1, 1], to the point (x_s, y_s) of the INPUT it is
sampled from::

    (x_s, y_s)^T = A_theta (x_t, y_t, 1)^T

exactly as ``torch.nn.functional.affine_grid(theta, size, align_corners=False)``.
With ``align_corners=False`` the normalised coordinates are edge based: -1 is the
left (top) edge of the first pixel and +1 the right (bottom) edge of the last one,
so in pixels ``x_pix = (x_norm + 1) * W / 2`` and ``y_pix = (y_norm + 1) * H / 2``.
Because they are resolution independent, the same theta samples the same region
of a higher-resolution copy of the input (:func:`resample`).

Every function accepts one theta (2 x 3) or a batch (B x 2 x 3); one theta counts
as a batch of one, so results are always batched.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "as_size",
    "box_iou",
    "compose_theta",
    "decompose_theta",
    "polygon_area",
    "polygon_iou",
    "resample",
    "theta_corners",
]

#: the output frame's corners in normalised coordinates: top-left, top-right,
#: bottom-right, bottom-left
_FRAME = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))

#: the keys that :func:`compose_theta` needs
_PARTS = ("scale_x", "scale_y", "shear", "rotation", "tx", "ty")


def _as_theta(theta: torch.Tensor, name: str = "theta") -> torch.Tensor:
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(theta).__name__}")
    if theta.dim() == 2:
        theta = theta.unsqueeze(0)
    if theta.dim() != 3 or tuple(theta.shape[1:]) != (2, 3):
        raise ValueError(f"{name} must have shape (2, 3) or (B, 2, 3), got {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {theta.dtype}; use {name}.float()")
    return theta


def as_size(size: Sequence[int] | int, name: str = "size") -> tuple[int, int]:
    """(H, W) of positive ints from an int or a pair; the error names ``name``."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be (H, W) of positive ints, got {size}")
    return size


def _as_batch(t: torch.Tensor, name: str, tail: tuple[int, ...], doc: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() == len(tail):
        t = t.unsqueeze(0)
    if t.dim() != len(tail) + 1 or tuple(t.shape[1:]) != tail:
        raise ValueError(f"{name} must have shape {doc}, got {tuple(t.shape)}")
    return t


def theta_corners(theta: torch.Tensor, input_size: Sequence[int] | int) -> torch.Tensor:
    """Where the corners of the output frame V are sampled in the input U, in pixels.

    Applies eq. 1 to the corners (+-1, +-1) of the output grid and converts the
    result to the input's edge-based pixel coordinates.

    Args:
        theta: A_theta, (2, 3) or (B, 2, 3).
        input_size: (H, W) of the input U (or one int for a square input).

    Returns:
        (B, 4, 2) pixel (x, y) of the output's top-left, top-right, bottom-right and
        bottom-left corners; the identity gives exactly (0, 0), (W, 0), (W, H), (0, H).

    Raises:
        ValueError: ``theta`` or ``input_size`` has the wrong shape.
    """
    theta = _as_theta(theta)
    h, w = as_size(input_size, "input_size")
    frame = torch.tensor(_FRAME, dtype=theta.dtype, device=theta.device)
    src = frame @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]  # (B, 4, 2)
    half = torch.tensor([w / 2, h / 2], dtype=theta.dtype, device=theta.device)
    return (src + 1) * half


def decompose_theta(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split A_theta into rotation, scale, shear and translation.

    The linear part is factored QR-style as
    ``A = R(rotation) @ [[scale_x, 0], [0, scale_y]] @ [[1, shear], [0, 1]]``
    with ``scale_x >= 0``; a reflection shows as a negative ``scale_y``. Scales are
    in the normalised units of eq. 1: ``scale_x = 0.5`` means the output spans half
    the input's width. A degenerate theta (zero first column) gives NaN.

    Args:
        theta: A_theta, (2, 3) or (B, 2, 3).

    Returns:
        Tensors of shape (B,): ``scale_x``, ``scale_y``, ``shear``, ``rotation``
        (radians; with y pointing down the sampled quad turns clockwise on screen, so
        the crop shows the input turned counter-clockwise), ``tx``, ``ty``
        (normalised units: 1 is half the input) and ``zoom`` = 1 / sqrt(|det A|), how
        many times the output magnifies the input (linear, from the area ratio).

    Raises:
        ValueError: ``theta`` is not (2, 3) or (B, 2, 3).
    """
    theta = _as_theta(theta)
    a00, a01, a10, a11 = theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1]
    rotation = torch.atan2(a10, a00)
    scale_x = torch.hypot(a00, a10)
    det = a00 * a11 - a01 * a10
    upper = torch.cos(rotation) * a01 + torch.sin(rotation) * a11  # (R^T A)[0, 1]
    return {
        "scale_x": scale_x,
        "scale_y": det / scale_x,
        "shear": upper / scale_x,
        "rotation": rotation,
        "tx": theta[:, 0, 2],
        "ty": theta[:, 1, 2],
        "zoom": det.abs().rsqrt(),
    }


def compose_theta(parts: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """Build A_theta from the parts of :func:`decompose_theta` (its exact inverse).

    Args:
        parts: ``scale_x``, ``scale_y``, ``shear``, ``rotation`` (radians), ``tx`` and
            ``ty``, each a float or a tensor of shape (B,) (they broadcast); other
            keys such as ``zoom`` are ignored.

    Returns:
        (B, 2, 3) A_theta.

    Raises:
        ValueError: a part is missing.
    """
    missing = [k for k in _PARTS if k not in parts]
    if missing:
        raise ValueError(f"parts lacks {missing}; it needs all of {list(_PARTS)}")
    vals = [torch.as_tensor(parts[k]) for k in _PARTS]
    dtype = functools.reduce(
        torch.promote_types, (v.dtype for v in vals), torch.get_default_dtype()
    )
    sx, sy, k, r, tx, ty = torch.broadcast_tensors(*(v.to(dtype).reshape(-1) for v in vals))
    c, s = torch.cos(r), torch.sin(r)
    row0 = torch.stack([c * sx, c * sx * k - s * sy, tx], dim=-1)
    row1 = torch.stack([s * sx, s * sx * k + c * sy, ty], dim=-1)
    return torch.stack([row0, row1], dim=1)


def polygon_area(poly: torch.Tensor) -> torch.Tensor:
    """Unsigned area of simple polygons (B, K, 2) by the shoelace formula, shape (B,)."""
    if poly.dim() == 2:
        poly = poly.unsqueeze(0)
    if poly.dim() != 3 or poly.shape[-1] != 2:
        raise ValueError(f"poly must have shape (K, 2) or (B, K, 2), got {tuple(poly.shape)}")
    x, y = poly[..., 0], poly[..., 1]
    cross = x * y.roll(-1, dims=-1) - x.roll(-1, dims=-1) * y
    return cross.sum(dim=-1).abs() / 2


def _shoelace(points: list[tuple[float, float]]) -> float:
    n = len(points)
    twice = sum(
        points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
        for i in range(n)
    )
    return abs(twice) / 2


def _clip(points: list, axis: int, bound: float, keep_above: bool) -> list:
    """One Sutherland-Hodgman pass: keep the part of ``points`` on one side of a line."""

    def inside(p):
        return p[axis] >= bound if keep_above else p[axis] <= bound

    out = []
    for i, cur in enumerate(points):
        prev = points[i - 1]
        if inside(cur) != inside(prev):
            t = (bound - prev[axis]) / (cur[axis] - prev[axis])
            out.append(tuple(prev[j] + t * (cur[j] - prev[j]) for j in range(2)))
        if inside(cur):
            out.append(cur)
    return out


def _quad_box_intersection(quad: list, box: list) -> float:
    x0, y0, x1, y1 = box
    points = [tuple(p) for p in quad]
    for axis, bound, above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        points = _clip(points, axis, bound, above)
        if len(points) < 3:
            return 0.0
    return _shoelace(points)


def polygon_iou(quad: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Exact IoU of convex quadrilaterals with axis-aligned boxes, pair by pair.

    The quad is clipped against the box (Sutherland-Hodgman) and the areas come
    from the shoelace formula, in float64. Use it to score the region an STN
    samples (:func:`theta_corners`) against a ground-truth box.

    Args:
        quad: (4, 2) or (B, 4, 2) corners (x, y), in order (either orientation).
        box: (4,) or (B, 4) boxes (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1.

    Returns:
        (B,) IoU in [0, 1] (0 where the union is empty), float64 on ``quad``'s device.

    Raises:
        ValueError: wrong shapes, different batch sizes, or a box with x1 < x0 or y1 < y0.
    """
    quad = _as_batch(quad, "quad", (4, 2), "(4, 2) or (B, 4, 2)").double()
    box = _as_batch(box, "box", (4,), "(4,) or (B, 4) as x0, y0, x1, y1").double()
    if quad.shape[0] != box.shape[0]:
        raise ValueError(f"quad and box must have the same batch size, got {len(quad)}, {len(box)}")
    if (box[:, 2] < box[:, 0]).any() or (box[:, 3] < box[:, 1]).any():
        raise ValueError("box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1")
    areas = [_quad_box_intersection(q, b) for q, b in zip(quad.tolist(), box.tolist())]
    inter = torch.tensor(areas, dtype=torch.float64, device=quad.device)
    box_area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    union = polygon_area(quad) + box_area - inter
    return torch.where(union > 0, inter / union.where(union > 0, 1), torch.zeros_like(union))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of axis-aligned boxes pair by pair (row i of ``a`` with row i of ``b``).

    For every pair of two sets (N x M) use ``torchvision.ops.box_iou``.

    Args:
        a: (4,) or (B, 4) boxes (x0, y0, x1, y1).
        b: (4,) or (B, 4) boxes, same batch size as ``a``.

    Returns:
        (B,) IoU in [0, 1] (0 where the union is empty).

    Raises:
        ValueError: wrong shapes or different batch sizes.
    """
    a = _as_batch(a, "a", (4,), "(4,) or (B, 4) as x0, y0, x1, y1")
    b = _as_batch(b, "b", (4,), "(4,) or (B, 4) as x0, y0, x1, y1")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same batch size, got {len(a)} and {len(b)}")
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.where(union > 0, 1), torch.zeros_like(union))


def _broadcast(image: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) and thetas (B, 2, 3) of one batch size, dtype and device."""
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (C, H, W) or (B, C, H, W) tensor, got {shape}")
    if not image.is_floating_point():
        raise TypeError(f"image must be floating, got {image.dtype}; use image.float() / 255")
    image = image if image.dim() == 4 else image.unsqueeze(0)
    b = max(len(image), len(theta))
    if len(image) not in (1, b) or len(theta) not in (1, b):
        raise ValueError(f"image batch {len(image)} and theta batch {len(theta)} do not match")
    return image.expand(b, *image.shape[1:]), theta.to(image).expand(b, 2, 3)


def resample(
    image: torch.Tensor, theta: torch.Tensor, output_size: Sequence[int] | int
) -> torch.Tensor:
    """Sample V = U at the grid of A_theta (eqs. 1 and 5: bilinear, zero padding).

    Normalised coordinates do not depend on resolution, so the theta regressed on
    a small input re-samples the same region from a higher-resolution original,
    as the paper suggests (section 3).

    Args:
        image: U, floating, (C, H, W) or (B, C, H, W).
        theta: A_theta, (2, 3) or (B, 2, 3); a batch of one broadcasts over the images,
            and one image broadcasts over a batch of thetas.
        output_size: (H', W') of V (or one int for a square output).

    Returns:
        V, (C, H', W') for one image and one theta, else (B, C, H', W').

    Raises:
        ValueError: wrong shapes or batch sizes that do not broadcast.
        TypeError: ``image`` is not a floating tensor.
    """
    tensors = isinstance(image, torch.Tensor) and isinstance(theta, torch.Tensor)
    single = tensors and (image.dim(), theta.dim()) == (3, 2)
    image, theta = _broadcast(image, _as_theta(theta))
    size = [len(image), image.shape[1], *as_size(output_size, "output_size")]
    grid = F.affine_grid(theta, size, align_corners=False)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0] if single else out
