"""Render attention to pixels: numpy uint8 arrays or PIL images out, never displays.

Images come in as torch tensors, numpy arrays or PIL images in any of the usual
layouts (see :func:`to_uint8_rgb`); coordinates are the edge-based pixel
coordinates of :mod:`attnviz.maps` (0 is the left edge of the first pixel, W the
right edge of the last one), so ``maps.theta_corners`` output draws as is.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import maps

__all__ = [
    "BOX_COLOR",
    "NORMALISE_MODES",
    "QUAD_COLOR",
    "as_pil",
    "colorize",
    "draw_box",
    "draw_quad",
    "figure_to_image",
    "montage",
    "normalise_map",
    "overlay",
    "overlay_grid",
    "overlay_info",
    "png_bytes",
    "stn_grid",
    "to_uint8_rgb",
    "upsample_map",
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


# -- maps over images: upsampling, normalisation, colour, overlays ---------------------------
# A map of h x w cells (a CBAM spatial map Ms, a Grad-CAM map) covers the whole image of
# H x W pixels: cell (i, j) stands for the block of H/h x W/w pixels whose edges are
# i * H/h .. (i + 1) * H/h and j * W/w .. (j + 1) * W/w, as a network's strides lay it out,
# and its value belongs at the block's centre. Maps are normalised at their own resolution
# (the numbers the network produced) and upsampled afterwards.

#: ways to bring a map to [0, 1]: each map by its own range, or one range for all of them
NORMALISE_MODES = ("per_map", "shared")


def _as_maps(maps: Any, name: str = "map") -> tuple[np.ndarray, bool]:
    """(N, h, w) float64 copy of one (h, w) map or a batch, and whether it was one map.

    Raises:
        TypeError: not an array, tensor or nested sequence of numbers.
        ValueError: another shape, or NaN / inf values (named, with their count).
    """
    if isinstance(maps, torch.Tensor):
        arr = maps.detach().cpu().double().numpy()
    else:
        try:
            arr = np.array(maps, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy array of numbers, got "
                f"{type(maps).__name__}"
            ) from None
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ValueError(f"{name} must be (h, w) or (N, h, w), got shape {tuple(arr.shape)}")
    bad = {"NaN": int(np.isnan(arr).sum()), "inf": int(np.isinf(arr).sum())}
    if any(bad.values()):
        what = " and ".join(f"{k} ({v} of {arr.size} values)" for k, v in bad.items() if v)
        raise ValueError(
            f"{name} contains {what}; a map must be finite (a diverged model or a 0/0 in the "
            "map's computation?)"
        )
    single = arr.ndim == 2
    return (arr[None] if single else arr), single


def _as_out_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, numbers.Integral):
        size = (size, size)
    try:
        out = tuple(int(s) for s in size)
    except TypeError:
        raise ValueError(f"size must be an int or (H, W), got {size!r}") from None
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"size must be (H, W) of positive ints, got {size!r}")
    return out


def upsample_map(
    map: torch.Tensor | np.ndarray, size: int | Sequence[int], *, stride_aligned: bool = True
) -> np.ndarray:
    """Bilinear upsampling of an h x w map (or a batch) to the image's H x W pixels.

    With ``stride_aligned=True`` (``align_corners=False``) cell (i, j) covers the block of
    H/h x W/w pixels a network's strides give it, and its value lands on the centre of
    that block, ((j + 0.5) W/w, (i + 0.5) H/h) in edge-based pixel coordinates, so the
    map is not shifted by half a cell: a one-hot cell's own block holds the brightest
    pixels (each brighter than every pixel outside it). ``stride_aligned=False``
    (``align_corners=True``) pins the corner cells' centres to the corner pixels' centres
    instead, which stretches the map by about one cell.

    Args:
        map: (h, w) or (N, h, w) finite values.
        size: (H, W) of the image, or one int for a square.
        stride_aligned: as above.

    Returns:
        (H, W) or (N, H, W) float32 array (a new array, also when the size already fits).

    Raises:
        ValueError: bad shape or size, NaN or inf in the map.
    """
    arr, single = _as_maps(map)
    size = _as_out_size(size)
    if arr.shape[-2:] == size:
        out = arr
    else:
        up = torch.nn.functional.interpolate(
            torch.from_numpy(arr)[:, None], size=size, mode="bilinear",
            align_corners=not stride_aligned,
        )  # fmt: skip
        out = up[:, 0].numpy()
    out = out.astype(np.float32)
    return out[0] if single else out


def _check_range(vmin: float | None, vmax: float | None) -> None:
    for name, v in (("vmin", vmin), ("vmax", vmax)):
        if v is not None and not (isinstance(v, numbers.Real) and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number or None, got {v!r}")
    if vmin is not None and vmax is not None and vmin > vmax:
        raise ValueError(f"vmin must not exceed vmax, got vmin={vmin}, vmax={vmax}")


def _map_ranges(
    arr: np.ndarray, mode: str, vmin: float | None, vmax: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per map of an (N, h, w) batch, each of shape (N,)."""
    if mode not in NORMALISE_MODES:
        raise ValueError(f"normalise mode must be one of {NORMALISE_MODES}, got {mode!r}")
    _check_range(vmin, vmax)
    if mode == "per_map":
        lo, hi = arr.min(axis=(1, 2)), arr.max(axis=(1, 2))
    else:
        lo, hi = np.full(len(arr), arr.min()), np.full(len(arr), arr.max())
    if vmin is not None:
        lo = np.full(len(arr), float(vmin))
    if vmax is not None:
        hi = np.full(len(arr), float(vmax))
    return lo, hi


def normalise_map(
    map: torch.Tensor | np.ndarray,
    mode: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Scale a map (or a batch) to [0, 1]: (m - lo) / (hi - lo), clipped.

    Args:
        map: (h, w) or (N, h, w) finite values.
        mode: ``"per_map"``: lo and hi are each map's own minimum and maximum (every map
            spans the colour scale); ``"shared"``: one lo and hi for the whole batch (maps
            stay comparable).
        vmin, vmax: fixed lo / hi in the map's units, replacing the computed ones (values
            outside are clipped); e.g. ``vmin=0, vmax=1`` for sigmoid gates.

    Returns:
        float32 array of the input's shape in [0, 1]. A map whose range is empty
        (constant, or hi <= lo) comes out as zeros: no division by zero.

    Raises:
        ValueError: unknown mode, vmin > vmax, a bad shape, NaN or inf in the map.
    """
    arr, single = _as_maps(map)
    lo, hi = _map_ranges(arr, mode, vmin, vmax)
    span = (hi - lo)[:, None, None]
    ok = span > 0
    out = np.where(ok, (arr - lo[:, None, None]) / np.where(ok, span, 1.0), 0.0)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return out[0] if single else out


def overlay_info(
    map: torch.Tensor | np.ndarray,
    *,
    normalise: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
) -> dict[str, Any]:
    """Which normalisation :func:`normalise_map` (and so :func:`overlay`) applies, in words.

    Returns:
        ``mode`` (``"per_map"``, or ``"shared"`` for a shared or fixed range), ``ranges``
        (one (lo, hi) per map, in the map's units) and ``caption``, the text a picture
        should carry: ``"per-map"`` or ``"shared [lo, hi]"`` (3 significant digits);
        per-map with only one end fixed reads e.g. ``"per-map, from 0"``.

    Raises:
        The errors of :func:`normalise_map`.
    """
    arr, _ = _as_maps(map)
    lo, hi = _map_ranges(arr, normalise, vmin, vmax)
    shared = normalise == "shared" or (vmin is not None and vmax is not None)
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
        map01: (H, W) or (N, H, W) values in [0, 1] (e.g. from :func:`normalise_map`).
        cmap: a matplotlib colormap name.

    Returns:
        (H, W, 3) or (N, H, W, 3) uint8 array.

    Raises:
        ValueError: unknown colormap, values outside [0, 1], NaN or inf.
    """
    arr, single = _as_maps(map01, "map01")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
        raise ValueError(
            f"map01 must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; normalise it first "
            "with normalise_map"
        )
    lut = _colormap_lut(cmap)
    index = np.clip(np.floor(arr * len(lut)), 0, len(lut) - 1).astype(np.intp)
    out = lut[index]
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
    normalise: str = "per_map",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """A map, normalised, coloured and upsampled, blended over its image.

    ``round((1 - alpha) * image + alpha * colour)`` per pixel and channel, with ``image``
    as :func:`to_uint8_rgb` gives it (grey repeated, RGBA composited over white) and
    ``colour = colorize(upsample_map(normalise_map(map)))``: the map is normalised at its
    own resolution, then upsampled stride-aligned to the image (:func:`upsample_map`).
    :func:`overlay_info` with the same arguments says which normalisation was used.

    Args:
        image: anything :func:`to_uint8_rgb` accepts, H x W.
        map: (h, w) map (or (1, h, w), (1, 1, h, w)) covering the whole image.
        alpha: weight of the colour, in [0, 1].
        cmap: matplotlib colormap name.
        normalise, vmin, vmax: as ``mode``, ``vmin``, ``vmax`` of :func:`normalise_map`.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        ValueError: alpha outside [0, 1], several maps, NaN / inf in the map, and the
            errors of :func:`to_uint8_rgb` and :func:`normalise_map`.
    """
    if not (isinstance(alpha, numbers.Real) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    base = to_uint8_rgb(image)
    unit = normalise_map(_one_map(map), normalise, vmin, vmax)
    if unit.shape != base.shape[:2]:
        unit = upsample_map(unit, base.shape[:2])
    colour = colorize(unit, cmap)
    return np.round((1.0 - alpha) * base + alpha * colour.astype(np.float64)).astype(np.uint8)


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
    x0, y0, x1, y1 = draw.textbbox((0, 0), text)
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
    normalise: str = "per_map",
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
        normalise, vmin, vmax: as for :func:`normalise_map`; ``"shared"`` shares one range
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
    if normalise == "shared" and (vmin is None or vmax is None):
        arrays = [_as_maps(_one_map(m))[0] for row in grid for m in row]
        vmin = float(min(a.min() for a in arrays)) if vmin is None else vmin
        vmax = float(max(a.max() for a in arrays)) if vmax is None else vmax
    cells = [
        [overlay(tiles[c], m, alpha=alpha, cmap=cmap, normalise=normalise, vmin=vmin, vmax=vmax)
         for c, m in enumerate(row)]
        for row in grid
    ]  # fmt: skip
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
