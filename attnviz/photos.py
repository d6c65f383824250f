"""Your own photos in, RGB out: reading, display copies, network input and sample photos.

:func:`load_image` reads whatever a user has (a path, the bytes of an upload, a file
object, a PIL image or an array) and returns an 8-bit RGB PIL image that looks as the
photo does in a viewer: EXIF orientation applied, transparency composited over white,
16-bit and float images scaled to 8 bits, CMYK converted. Large photos stay cheap: the
network's transforms resize them, and :func:`display_copy` gives a copy small enough to
draw overlays on (JPEGs are then decoded at reduced scale directly).

The sample photos in ``assets/photos/`` come from scikit-image's data sets; their
sources and licences are in ``assets/photos/LICENSE.md``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageLoadError",
    "display_copy",
    "load_image",
    "load_sample",
    "network_view",
    "prepare",
    "sample_path",
    "sample_photos",
]

#: where the sample photos live (next to the package in a source checkout)
PHOTOS_DIR = Path(__file__).resolve().parent.parent / "assets" / "photos"
_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageLoadError(OSError, ValueError):
    """A file that is not an image, or an image that cannot be decoded (truncated, corrupt).

    Both an ``OSError`` (as Pillow's own errors) and a ``ValueError`` (bad input).
    """


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return repr(name)
    return f"the given {type(source).__name__}"


def _open(source: Any) -> Image.Image:
    """Open ``source`` lazily (the pixels are decoded later, by ``load``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise TypeError(
            "source must be a path, bytes, a file object, a PIL image or a numpy array, "
            f"got {type(source).__name__}"
        )
    try:
        return Image.open(source)
    except UnidentifiedImageError as e:
        raise ImageLoadError(
            f"{_describe(source)} is not an image (or not a format Pillow reads): {e}"
        ) from e


def _decode(image: Image.Image, what: str) -> None:
    try:
        image.load()
    except (OSError, SyntaxError) as e:  # Pillow raises SyntaxError for some broken headers
        raise ImageLoadError(
            f"{what} could not be decoded: the image file is truncated or corrupt ({e})"
        ) from e


def _from_array(arr: np.ndarray) -> Image.Image:
    """(H, W) or (H, W, 3|4) uint8/uint16/int/float/bool array -> PIL image."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if arr.dtype == np.uint8:
            return Image.fromarray(np.ascontiguousarray(arr))
        if arr.dtype == np.uint16:
            return Image.fromarray(_scale_16(arr))
        if np.issubdtype(arr.dtype, np.floating):
            return Image.fromarray(_scale_float(arr))
    elif arr.ndim == 2:
        if arr.dtype == np.bool_:
            return Image.fromarray(arr.astype(np.uint8) * 255)
        if arr.dtype == np.uint8:
            return Image.fromarray(arr)
        if arr.dtype == np.uint16:
            return Image.fromarray(_scale_16(arr))
        if np.issubdtype(arr.dtype, np.integer):
            return Image.fromarray(_scale_int(arr))
        if np.issubdtype(arr.dtype, np.floating):
            return Image.fromarray(_scale_float(arr))
    raise ValueError(
        "an array image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16, "
        f"int, bool or float, got shape {arr.shape} and dtype {arr.dtype}"
    )


# -- modes -> 8-bit --------------------------------------------------------------------------
def _scale_16(arr: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8 bits by v / 257 rounded (65535 -> 255, 257 -> 1), in integers."""
    return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Linear map of the actual [min, max] onto [0, 255] (a constant image -> 0)."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr.astype(np.float32) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _scale_int(arr: np.ndarray) -> np.ndarray:
    """Mode ``I``: values in [0, 65535] are 16-bit samples (Pillow reads 16-bit PNG and TIFF
    files as ``I`` or ``I;16``), scaled as :func:`_scale_16`; other ranges are stretched."""
    if arr.min() >= 0 and arr.max() <= 65535:
        return _scale_16(arr)
    return _stretch(arr)


def _scale_float(arr: np.ndarray) -> np.ndarray:
    """Mode ``F``: values in [0, 1] are intensities (x 255, rounded); others are stretched."""
    if not np.isfinite(arr).all():
        raise ValueError("a float image must be finite (it contains NaN or infinity)")
    if arr.min() >= 0.0 and arr.max() <= 1.0:
        return np.round(arr.astype(np.float32) * 255.0).astype(np.uint8)
    return _stretch(arr)


def _over_white(image: Image.Image) -> Image.Image:
    """An RGBA image composited over white: rgb * a + 255 * (1 - a)."""
    out = Image.new("RGB", image.size, (255, 255, 255))
    out.paste(image.convert("RGB"), mask=image.getchannel("A"))
    return out


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, as a viewer shows it."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        return Image.fromarray(_scale_16(np.asarray(image))).convert("RGB")
    if mode == "I":
        return Image.fromarray(_scale_int(np.asarray(image))).convert("RGB")
    if mode == "F":
        return Image.fromarray(_scale_float(np.asarray(image))).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        return _over_white(image.convert("RGBA"))
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV


def load_image(source: Any, *, max_side: int | None = None) -> Image.Image:
    """Read a photo as an 8-bit RGB PIL image, oriented and coloured as a viewer shows it.

    Conversions:

    - EXIF orientation (phones' rotated photos) applied (``ImageOps.exif_transpose``);
    - grey (``L``, ``1``) repeated to RGB; palettes (``P``) expanded;
    - transparency (``RGBA``, ``LA``, ``PA``, ``P``/``L`` with a transparent colour)
      composited over white;
    - 16-bit (``I;16*``, uint16 arrays): v / 257 rounded, so 65535 -> 255 and 257 -> 1;
    - 32-bit int (``I``): values in [0, 65535] as 16-bit (Pillow reads 16-bit PNGs as
      ``I``), any other range stretched linearly from its min..max to 0..255;
    - float (``F``, float arrays): values in [0, 1] times 255, other ranges stretched
      from min..max to 0..255;
    - ``CMYK`` (and ``YCbCr``, ...) converted by Pillow (CMYK (0, 0, 0, 0) -> white).

    Args:
        source: a path, the file's bytes (e.g. an upload), a binary file object, a PIL
            image (not modified) or a numpy array ((H, W) or (H, W, 1|3|4); uint8,
            uint16, int, bool or float).
        max_side: if given, shrink (never enlarge) so the longer side is at most this;
            JPEGs are then decoded at reduced scale, so a 24-megapixel photo never
            occupies full-size memory.

    Returns:
        A new RGB PIL image.

    Raises:
        ImageLoadError (an OSError and a ValueError): not an image, or truncated/corrupt;
            the message names the file.
        TypeError: an unsupported source type.
        ValueError: an unsupported array shape or dtype, or a bad ``max_side``.
    """
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")
    if isinstance(source, Image.Image):  # the caller's: transpose into a copy
        image = ImageOps.exif_transpose(source, in_place=False)
    else:
        image = _from_array(source) if isinstance(source, np.ndarray) else _open(source)
        if max_side is not None:
            image.draft(None, (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8
        _decode(image, _describe(source))
        ImageOps.exif_transpose(image, in_place=True)  # our own: no full-size copy
    rgb = _to_rgb(image)
    if max_side is not None:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def display_copy(image: Any, max_side: int = 1024) -> Image.Image:
    """A copy of a photo small enough to show and to draw overlays on.

    Attention maps are upsampled to this copy's size, not to the photo's: a 6000 x 4000
    photo becomes 1024 x 683, about 2 MB of pixels instead of 72 MB.

    Args:
        image: anything :func:`load_image` reads.
        max_side: the longer side of the copy at most (never enlarged).

    Returns:
        A new RGB PIL image.
    """
    return load_image(image, max_side=max_side)


def prepare(image: Any, transforms: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """A photo as a batch of one for the network: ``transforms(load_image(image))[None]``.

    Args:
        image: anything :func:`load_image` reads.
        transforms: the network's preprocessing, e.g. ``Pretrained.transforms`` or
            ``weights.transforms()`` (resize, crop, normalise); it resizes large photos.

    Returns:
        A 1 x C x H x W tensor.

    Raises:
        TypeError: ``transforms`` is not callable or does not return a C x H x W tensor.
    """
    if not callable(transforms):
        raise TypeError(f"transforms must be callable, got {type(transforms).__name__}")
    x = transforms(load_image(image))
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise TypeError(
            f"transforms must return a C x H x W tensor, got {type(x).__name__} of shape "
            f"{tuple(getattr(x, 'shape', ()))}"
        )
    return x.unsqueeze(0)


def network_view(image: Any, transforms: Any, max_side: int = 448) -> Image.Image:
    """The part of the photo the network sees, at display resolution.

    torchvision's classification transforms resize the shorter side to
    ``resize_size`` and take a centred ``crop_size`` square; maps computed on the network
    input therefore belong to that centred region, which this returns (shrunk so its
    longer side is at most ``max_side``). Transforms without those attributes are
    taken to use the whole photo.
    """
    img = load_image(image)
    crop, resize = getattr(transforms, "crop_size", None), getattr(transforms, "resize_size", None)
    if crop and resize:
        w, h = img.size
        side = min(w, h) * (crop[0] / resize[0])
        left, top = (w - side) / 2, (h - side) / 2
        img = img.crop((round(left), round(top), round(left + side), round(top + side)))
    return display_copy(img, max_side=max_side)


# -- sample photos ---------------------------------------------------------------------------
def sample_photos() -> list[str]:
    """The names of the sample photos in ``assets/photos/`` (see its LICENSE.md)."""
    if not PHOTOS_DIR.is_dir():
        return []
    return sorted(p.stem for p in PHOTOS_DIR.iterdir() if p.suffix.lower() in _SUFFIXES)


def sample_path(name: str) -> Path:
    """The file of a sample photo.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    for suffix in _SUFFIXES:
        path = PHOTOS_DIR / f"{name}{suffix}"
        if isinstance(name, str) and path.is_file():
            return path
    raise ValueError(f"no sample photo {name!r}; choose one of {sample_photos()}")


def load_sample(name: str, *, max_side: int | None = None) -> Image.Image:
    """A sample photo as an RGB PIL image (see :func:`sample_photos`)."""
    return load_image(sample_path(name), max_side=max_side)
