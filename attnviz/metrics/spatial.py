"""Scores of spatial attention maps against ground truth (CBAM's Ms, Grad-CAM, priors).

Every score reads maps at their own resolution and brings them to the image through the
one map pipeline (:mod:`attnviz.maps`); nothing here draws.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..maps import as_size, upsample
from ..maps import normalize as _normalize
from .report import scores_table

__all__ = [
    "center_prior",
    "energy_pointing_game",
    "mask_iou",
    "mask_share_maps",
    "pointing_game",
    "score_maps",
]

# Conventions shared by every score below (those of render.upsample_map): a map of h x w
# cells covers an image of H x W pixels; cell (i, j) owns the pixel block with edges
# i * H/h .. (i + 1) * H/h and j * W/w .. (j + 1) * W/w, and its value sits at the block's
# centre ((j + 0.5) W/w, (i + 0.5) H/h). Boxes are (x0, y0, x1, y1) in edge-based pixel
# coordinates of the image (0 = left edge of the first pixel), as PhotoDigits.boxes.
# Maps are processed in chunks at their own resolution, so a batch of small maps never
# becomes a batch of image-sized float32 maps (only mask_iou upsamples, one chunk at a time).

_CHUNK = 256


def _map_batch(maps: Any, name: str = "maps") -> torch.Tensor:
    """An N x h x w float tensor (any float dtype kept; moved to the CPU per chunk later)."""
    t = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or 0 in t.shape:
        raise ValueError(f"{name} must be N x h x w (or one h x w map), got {tuple(t.shape)}")
    return t


def _finite(chunk: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """The chunk as float64 on the CPU, refused with a clear message if not finite."""
    m = chunk.detach().to("cpu", torch.float64)
    if not torch.isfinite(m).all():
        n_nan, n_inf = int(m.isnan().sum()), int(m.isinf().sum())
        raise ValueError(f"{name} contain {n_nan} NaN and {n_inf} inf values; maps must be finite")
    return m


def _box_batch(boxes: Any, n: int) -> torch.Tensor:
    b = torch.as_tensor(boxes).detach().to("cpu", torch.float64)
    if b.dim() == 1:
        b = b[None]
    if tuple(b.shape) != (n, 4):
        raise ValueError(
            f"boxes must be ({n}, 4) as x0, y0, x1, y1 (one per map), got {tuple(b.shape)}"
        )
    return b


def _image_size(image_size: Any, maps: torch.Tensor) -> tuple[int, int]:
    if image_size is None:
        h, w = maps.shape[-2:]
        return h, w
    return as_size(image_size, "image_size")


def _centres(cells: int, pixels: int) -> torch.Tensor:
    """Pixel coordinate of each cell's centre: (k + 0.5) * pixels / cells."""
    return (torch.arange(cells, dtype=torch.float64) + 0.5) * (pixels / cells)


def _chunks(n: int, chunk: int) -> range:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return range(0, n, chunk)


def pointing_game(
    maps: torch.Tensor,
    boxes: torch.Tensor,
    *,
    tolerance: float = 0,
    image_size: int | tuple[int, int] | None = None,
    chunk: int = _CHUNK,
) -> torch.Tensor:
    """Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
    ECCV 2016): does the map's maximum fall on the object?

    A map scores a hit when the centre of its maximal cell, mapped to image pixels (see
    the conventions above), lies inside the box grown by ``tolerance`` pixels on every side
    (closed intervals: the border counts). Ties: a hit needs *every* cell that attains the
    maximum inside the grown box, so a flat map (all cells tied) only hits a box that
    covers the whole image, and a map cannot score by saturating everywhere.

    Args:
        maps: N x h x w (or h x w) finite maps covering the images.
        boxes: N x 4 ground-truth boxes (x0, y0, x1, y1) in image pixels.
        tolerance: pixels the box grows by (>= 0); 15 in the paper's 224 x 224 setting.
        image_size: (H, W) of the images; ``None`` means the maps are at image resolution.
        chunk: maps processed at a time.

    Returns:
        N bools (a bool tensor); ``.float().mean()`` is the pointing-game accuracy.

    Raises:
        ValueError: bad shapes, a negative tolerance, NaN or inf in the maps.
    """
    maps = _map_batch(maps)
    n, h, w = maps.shape
    b = _box_batch(boxes, n)
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    if maps.dtype in (torch.float16, torch.bfloat16):
        warnings.warn(
            f"pointing_game got {maps.dtype} maps: near-saturated sigmoid maps (CBAM's Ms) "
            "round to equal values there, every tied maximum must be in the box, and scores "
            "drop (measured: 0.77 -> 0.15 for a 4 x 4 CBAM map). Score float32 maps.",
            stacklevel=2,
        )
    big_h, big_w = _image_size(image_size, maps)
    cx, cy = _centres(w, big_w), _centres(h, big_h)
    hits = []
    for i in _chunks(n, chunk):
        m, bb = _finite(maps[i : i + chunk]), b[i : i + chunk]
        in_x = (cx >= bb[:, 0:1] - tolerance) & (cx <= bb[:, 2:3] + tolerance)  # c x w
        in_y = (cy >= bb[:, 1:2] - tolerance) & (cy <= bb[:, 3:4] + tolerance)  # c x h
        inside = in_y[:, :, None] & in_x[:, None, :]
        is_max = m == m.amax(dim=(1, 2), keepdim=True)
        hits.append((~is_max | inside).all(dim=2).all(dim=1))
    return torch.cat(hits)


def _overlaps(lo: torch.Tensor, hi: torch.Tensor, cells: int, pixels: int) -> torch.Tensor:
    """Length of each cell's pixel interval [k, k + 1] * pixels / cells inside [lo, hi]."""
    edges = torch.arange(cells + 1, dtype=torch.float64) * (pixels / cells)
    left = torch.maximum(edges[:-1], lo[:, None])
    right = torch.minimum(edges[1:], hi[:, None])
    return (right - left).clamp_min(0.0)


def energy_pointing_game(
    maps: torch.Tensor,
    boxes: torch.Tensor,
    *,
    image_size: int | tuple[int, int] | None = None,
    chunk: int = _CHUNK,
) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., "Score-CAM", CVPRW 2020): the share of a
    map's mass that falls inside the box.

    Computed exactly with cell-area weighting, no upsampling: each cell's (non-negative)
    value is spread evenly over the pixel block it owns, and the box takes the part of
    each block it covers, ``sum_ij m_ij |cell_ij ∩ box| / (sum_ij m_ij |cell_ij|)``. So a
    uniform map scores exactly the box's share of the image area, at any resolution, and
    fractional boxes are handled exactly. Negative values count as zero (ReLU, as
    Grad-CAM's own maps). A map with no positive mass scores 0.

    Args:
        maps: N x h x w (or h x w) finite maps covering the images.
        boxes: N x 4 (x0, y0, x1, y1) in image pixels (parts outside the image add nothing).
        image_size: (H, W) of the images; ``None``: the maps are at image resolution.
        chunk: maps processed at a time.

    Returns:
        N float64 shares in [0, 1].

    Raises:
        ValueError: bad shapes, NaN or inf in the maps.
    """
    maps = _map_batch(maps)
    n, h, w = maps.shape
    b = _box_batch(boxes, n)
    big_h, big_w = _image_size(image_size, maps)
    out = []
    for i in _chunks(n, chunk):
        m, bb = _finite(maps[i : i + chunk]).clamp_min(0.0), b[i : i + chunk]
        ox = _overlaps(bb[:, 0], bb[:, 2], w, big_w)
        oy = _overlaps(bb[:, 1], bb[:, 3], h, big_h)
        inside = torch.einsum("nhw,nh,nw->n", m, oy, ox)
        total = m.sum(dim=(1, 2)) * (big_h / h) * (big_w / w)
        out.append(torch.where(total > 0, inside / total.clamp_min(1e-300), 0.0))
    return torch.cat(out)


def _mask_batch(masks: Any, n: int) -> torch.Tensor:
    t = torch.as_tensor(masks)
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or len(t) != n:
        raise ValueError(f"masks must be ({n}, H, W) (one per map), got {tuple(t.shape)}")
    return t


def mask_iou(
    maps: torch.Tensor,
    masks: torch.Tensor,
    *,
    threshold: float = 0.5,
    normalize: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    """IoU of the thresholded map with the object's mask.

    Each map is normalised to [0, 1] at its own resolution (``attnviz.maps.normalize``),
    upsampled stride-aligned to the mask's H x W (``attnviz.maps.upsample``), and the pixels
    with value >= ``threshold`` are compared with the mask: |map ∩ mask| / |map ∪ mask|.
    When both are empty the IoU is 1 (they agree); a constant map normalises to zeros and
    so selects no pixel for any threshold > 0.

    Args:
        maps: N x h x w (or h x w) finite maps covering the images.
        masks: N x H x W masks (bool, or anything non-zero = object).
        threshold: in [0, 1], on the normalised map.
        normalize, vmin, vmax: as for ``attnviz.maps.normalize``; ``"shared"`` takes one range
            over all N maps (computed first, then applied chunk by chunk).
        chunk: maps upsampled at a time (memory: chunk x H x W float32).

    Returns:
        N float64 IoUs in [0, 1].

    Raises:
        ValueError: bad shapes, a threshold outside [0, 1], NaN or inf in the maps.
    """
    maps = _map_batch(maps)
    n = len(maps)
    masks = _mask_batch(masks, n)
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    normalize_mode = normalize
    if normalize_mode == "shared" and (vmin is None or vmax is None):
        ranges = [_finite(maps[i : i + chunk]).aminmax() for i in _chunks(n, chunk)]
        lo, hi = min(float(r.min) for r in ranges), max(float(r.max) for r in ranges)
        vmin, vmax = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    out = []
    for i in _chunks(n, chunk):
        unit = _normalize(_finite(maps[i : i + chunk]), normalize_mode, vmin, vmax)
        up = upsample(unit, tuple(masks.shape[-2:]))
        pred, truth = up >= threshold, masks[i : i + chunk].to("cpu").bool()
        inter = (pred & truth).sum(dim=(1, 2)).double()
        union = (pred | truth).sum(dim=(1, 2)).double()
        out.append(torch.where(union > 0, inter / union.clamp_min(1.0), 1.0))
    return torch.cat(out)


def center_prior(n: int, size: int | tuple[int, int], *, sigma: float = 0.25) -> torch.Tensor:
    """Gaussian centre-bias maps: the baseline a map must beat to show it looks at objects.

    ``exp(-((x - W/2)^2 / (2 (sigma W)^2) + (y - H/2)^2 / (2 (sigma H)^2)))`` at each
    cell's centre (the conventions above), the same for all n images.

    Args:
        n: number of maps.
        size: (h, w) of the maps (e.g. the image size, or a CBAM map's size), or one int.
        sigma: the Gaussian's standard deviation as a fraction of the side.

    Returns:
        n x h x w float32, a broadcast view of one map (no n-fold memory); ``.clone()``
        before writing into it.

    Raises:
        ValueError: n < 1, a bad size or sigma <= 0.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"sigma must be > 0 (a fraction of the side), got {sigma!r}")
    h, w = _image_size(size, torch.empty(0))
    x = (_centres(w, w) - w / 2) / (sigma * w)
    y = (_centres(h, h) - h / 2) / (sigma * h)
    prior = torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).float()
    return prior.expand(n, h, w)


def score_maps(
    maps_by_method: dict[str, torch.Tensor],
    boxes: torch.Tensor,
    masks: torch.Tensor,
    *,
    tolerance: float | Sequence[float] = 0,
    threshold: float = 0.5,
    chunk: int = _CHUNK,
) -> tuple[str, dict[str, dict[str, float]]]:
    """Score several kinds of map against the same ground truth, as a Markdown table.

    For every method: the pointing-game accuracy (:func:`pointing_game`), the mean energy
    share inside the box (:func:`energy_pointing_game`) and the mean mask IoU at
    ``threshold`` of the per-map normalised map (:func:`mask_iou`). Maps of any
    resolution (e.g. CBAM maps at their native h x w) are scored
    chunk by chunk, never all upsampled at once.

    Args:
        maps_by_method: name -> N x h x w maps (h x w may differ between methods), e.g.
            ``{"CBAM layer4": ..., "Grad-CAM": ..., "centre prior": center_prior(N, 64)}``.
        boxes: N x 4 (x0, y0, x1, y1) in image pixels.
        masks: N x H x W object masks; H x W is the image size.
        tolerance: of the pointing game, in pixels; a sequence (e.g. ``(0, 4)``) scores it
            at each, one column per tolerance.
        threshold: of the mask IoU.
        chunk: maps processed at a time.

    Returns:
        (table, scores): a Markdown table, one row per method, and
        ``{method: {"pointing_game", "energy", "mask_iou": means, "n": N}}``, where
        ``"pointing_game"`` is at the first tolerance; with several tolerances each also
        has ``"pointing_game_<t>px"``.

    Raises:
        ValueError: no methods, maps whose count differs from the boxes', and the errors
            of the three scores.
    """
    if not maps_by_method:
        raise ValueError("maps_by_method must name at least one method's maps")
    tolerances = [tolerance] if isinstance(tolerance, (int, float)) else list(tolerance)
    if not tolerances:
        raise ValueError("tolerance must be a number of pixels or a non-empty sequence of them")
    # (H, W) of the masks; checked as an image_size by the scores below
    size = cast("tuple[int, int]", tuple(torch.as_tensor(masks).shape[-2:]))
    scores: dict[str, dict[str, float]] = {}
    for name, method_maps in maps_by_method.items():
        m = _map_batch(method_maps, f"maps of {name!r}")
        hits = {
            t: float(
                pointing_game(m, boxes, tolerance=t, image_size=size, chunk=chunk).double().mean()
            )
            for t in tolerances
        }
        row: dict[str, float] = {"pointing_game": hits[tolerances[0]]}
        if len(tolerances) > 1:
            row.update({f"pointing_game_{t:g}px": v for t, v in hits.items()})
        energy = energy_pointing_game(m, boxes, image_size=size, chunk=chunk)
        iou = mask_iou(m, masks, threshold=threshold, chunk=min(chunk, 64))
        row.update(energy=float(energy.mean()), mask_iou=float(iou.mean()), n=len(m))
        scores[name] = row
    return scores_table(scores, tolerances, threshold), scores


def mask_share_maps(masks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The ideal map at a given resolution: the share of each cell covered by the object.

    A map of h x w cells cannot point more precisely than its cells (see the conventions
    above). Scoring these maps with :func:`pointing_game` gives the best a map of that
    resolution can do, the ceiling to read a coarse attention map against: on 64 x 64
    images a 4 x 4 map's cells are 16 pixels wide, and even this map's maximum can sit in
    a cell whose centre misses a small object's box.

    Args:
        masks: N x H x W object masks (bool or float in [0, 1]); H and W divisible by h, w.
        size: (h, w) of the maps, or one int for square maps.

    Returns:
        N x h x w float maps: the mean of the mask over each cell.
    """
    m = torch.as_tensor(masks)
    if m.dim() != 3:
        raise ValueError(f"masks must be N x H x W, got {tuple(m.shape)}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    big_h, big_w = m.shape[-2:]
    if h < 1 or w < 1 or big_h % h or big_w % w:
        raise ValueError(
            f"the masks' {big_h} x {big_w} must split into {h} x {w} equal cells; pick a "
            "size that divides the image size"
        )
    return F.avg_pool2d(m.float()[:, None], (big_h // h, big_w // w))[:, 0]
