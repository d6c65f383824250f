"""The map pipeline's maths: check, upsample and normalize attention maps (torch, pure).

Every picture and every score of a map goes through these functions: records
(``query_map``), metrics, :mod:`attnviz.render` and the widgets. Nothing here draws.

Upsampling is bilinear, computed as two small matrix products, ``Wy @ map @ Wx^T``, with
interpolation matrices that reproduce ``F.interpolate(mode="bilinear")`` (to float
rounding). On tiny maps this is a few thousand multiply-adds on one thread, where the
interpolation kernel would split a 224 x 224 output over every core: a widget's redraw
then stays fast when other processes compete for the cores.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["NORMALIZE_MODES", "as_maps", "map_ranges", "normalize", "upsample"]

#: how :func:`normalize` picks each map's range
NORMALIZE_MODES = ("per_map", "shared")


def as_maps(maps: Any, name: str = "map") -> tuple[torch.Tensor, bool]:
    """(N, h, w) float64 tensor of one (h, w) map or a batch, and whether it was one map.

    Accepts tensors, numpy arrays and nested sequences of numbers.

    Raises:
        TypeError: not an array, tensor or nested sequence of numbers.
        ValueError: another shape, or NaN / inf values (named, with their count).
    """
    if isinstance(maps, torch.Tensor):
        t = maps.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.from_numpy(np.array(maps, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy array of numbers, got "
                f"{type(maps).__name__}"
            ) from None
    if t.dim() not in (2, 3) or 0 in t.shape:
        raise ValueError(f"{name} must be (h, w) or (N, h, w), got shape {tuple(t.shape)}")
    bad = {"NaN": int(torch.isnan(t).sum()), "inf": int(torch.isinf(t).sum())}
    if any(bad.values()):
        what = " and ".join(f"{k} ({v} of {t.numel()} values)" for k, v in bad.items() if v)
        raise ValueError(
            f"{name} contains {what}; a map must be finite (a diverged model or a 0/0 in the "
            "map's computation?)"
        )
    single = t.dim() == 2
    return (t[None] if single else t), single


def out_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int or a pair of positive ints."""
    if isinstance(size, (int, numbers.Integral)):
        size = (int(size), int(size))
    try:
        out = tuple(int(s) for s in size)
    except TypeError:
        raise ValueError(f"size must be an int or (H, W), got {size!r}") from None
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"size must be (H, W) of positive ints, got {size!r}")
    return out


@functools.lru_cache(maxsize=256)
def _weights(n_in: int, n_out: int, align_corners: bool) -> torch.Tensor:
    """(n_out, n_in) float64 linear-interpolation matrix, as ``F.interpolate`` samples."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        if align_corners:
            src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        w[o, i0] += 1.0 - frac
        w[o, i1] += frac
    return w


def upsample(maps: Any, size: int | Sequence[int], *, stride_aligned: bool = True) -> torch.Tensor:
    """Bilinear upsampling of an h x w map (or a batch) to the image's H x W pixels.

    With ``stride_aligned=True`` (``align_corners=False``) cell (i, j) covers the block of
    H/h x W/w pixels a network's strides give it, and its value lands on the centre of
    that block, ((j + 0.5) W/w, (i + 0.5) H/h) in edge-based pixel coordinates, so the
    map is not shifted by half a cell: a one-hot cell's own block holds the brightest
    pixels. ``stride_aligned=False`` (``align_corners=True``) pins the corner cells'
    centres to the corner pixels' centres instead, which stretches the map by about one
    cell.

    Args:
        maps: (h, w) or (N, h, w) finite values (tensor, array or nested lists).
        size: (H, W) of the image, or one int for a square.
        stride_aligned: as above.

    Returns:
        (H, W) or (N, H, W) float32 tensor on the CPU (new, also when the size fits).

    Raises:
        ValueError: bad shape or size, NaN or inf in the map.
    """
    t, single = as_maps(maps)
    h, w = out_size(size)
    if t.shape[-2:] != (h, w):
        wy = _weights(t.shape[-2], h, not stride_aligned)
        wx = _weights(t.shape[-1], w, not stride_aligned)
        t = wy @ t @ wx.T
    out = t.float()
    return out[0] if single else out


def _check_range(vmin: float | None, vmax: float | None) -> None:
    for name, v in (("vmin", vmin), ("vmax", vmax)):
        if v is not None and not (isinstance(v, numbers.Real) and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number or None, got {v!r}")
    if vmin is not None and vmax is not None and vmin > vmax:
        raise ValueError(f"vmin must not exceed vmax, got vmin={vmin}, vmax={vmax}")


def map_ranges(
    t: torch.Tensor, mode: str = "per_map", vmin: float | None = None, vmax: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) per map of an (N, h, w) batch, each of shape (N,): see :func:`normalize`."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}")
    _check_range(vmin, vmax)
    n = len(t)
    if mode == "per_map":
        lo, hi = t.amin(dim=(1, 2)), t.amax(dim=(1, 2))
    else:
        lo, hi = t.min().expand(n).clone(), t.max().expand(n).clone()
    if vmin is not None:
        lo = torch.full((n,), float(vmin), dtype=t.dtype)
    if vmax is not None:
        hi = torch.full((n,), float(vmax), dtype=t.dtype)
    return lo, hi


def normalize(
    maps: Any, mode: str = "per_map", vmin: float | None = None, vmax: float | None = None
) -> torch.Tensor:
    """Scale a map (or a batch) to [0, 1]: (m - lo) / (hi - lo), clipped.

    Args:
        maps: (h, w) or (N, h, w) finite values.
        mode: ``"per_map"``: lo and hi are each map's own minimum and maximum (every map
            spans the colour scale); ``"shared"``: one lo and hi for the whole batch (maps
            stay comparable).
        vmin, vmax: fixed lo / hi in the map's units, replacing the computed ones (values
            outside are clipped); e.g. ``vmin=0, vmax=1`` for sigmoid gates.

    Returns:
        float32 tensor of the input's shape in [0, 1]. A map whose range is empty
        (constant, or hi <= lo) comes out as zeros: no division by zero.

    Raises:
        ValueError: unknown mode, vmin > vmax, a bad shape, NaN or inf in the map.
    """
    t, single = as_maps(maps)
    lo, hi = map_ranges(t, mode, vmin, vmax)
    span = (hi - lo)[:, None, None]
    ok = span > 0
    out = torch.where(ok, (t - lo[:, None, None]) / torch.where(ok, span, 1.0), 0.0)
    out = out.clamp(0.0, 1.0).float()
    return out[0] if single else out
