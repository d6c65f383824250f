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

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ._resources import photos_dir

__all__ = [
    "LIMITS",
    "ImageLimits",
    "ImageLoadError",
    "ImageTooLargeError",
    "display_copy",
    "load_image",
    "load_sample",
    "network_view",
    "prepare",
    "sample_path",
    "sample_photos",
    "set_image_limits",
]

#: where the sample photos live (inside the installed package; assets/photos in a checkout)
PHOTOS_DIR = photos_dir()
_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ImageLimits:
    """What :func:`load_image` accepts, checked from the file's header before decoding.

    Attributes:
        max_pixels: decoded pixels (width x height) at most. The default, 40 megapixels,
            covers photos from phones and most cameras; the worst image it admits (a 40 MP
            RGBA or 16-bit PNG) is read with a peak memory growth under 500 MB
            (tests/test_photos.py). A larger JPEG is decoded at reduced scale (1/2, 1/4,
            1/8) to fit instead of being refused; other formats are refused.
        max_aspect: longer side / shorter side at most (default 20). A classifier's
            preprocessing resizes the shorter side to a few hundred pixels, so a
            3 x 100000 strip would become a 232 x 7.7 million image (5 GB).

    Change them with :func:`set_image_limits`.
    """

    max_pixels: int = 40_000_000
    max_aspect: float = 20.0


#: the limits every photo path applies (library, CLI, widgets)
LIMITS = ImageLimits()


def set_image_limits(*, max_pixels: int | None = None, max_aspect: float | None = None) -> None:
    """Raise (or lower) :data:`LIMITS` for this process, e.g. for a 100-megapixel scan.

    Raises:
        ValueError: a limit that is not a positive number (``max_aspect`` at least 1).
    """
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
        LIMITS.max_pixels = max_pixels
    if max_aspect is not None:
        if (
            isinstance(max_aspect, bool)
            or not isinstance(max_aspect, (int, float))
            or not (max_aspect >= 1)
        ):
            raise ValueError(f"max_aspect must be a number >= 1, got {max_aspect!r}")
        LIMITS.max_aspect = float(max_aspect)


class ImageTooLargeError(ValueError):
    """An image beyond :data:`LIMITS` (the message names the limit and how to raise it)."""


def _check_limits(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageLoadError(f"{what} has no pixels ({w} x {h})")
    aspect = max(w, h) / min(w, h)
    if aspect > LIMITS.max_aspect:
        raise ImageTooLargeError(
            f"{what} is {w} x {h} pixels, an aspect ratio of {aspect:.0f}:1; attnviz accepts "
            f"up to {LIMITS.max_aspect:g}:1 (a classifier would resize its shorter side and "
            "blow the longer one up). Crop it, or raise the limit with "
            "attnviz.photos.set_image_limits(max_aspect=...)"
        )
    if w * h > LIMITS.max_pixels:
        raise ImageTooLargeError(
            f"{what} is {w} x {h} = {w * h / 1e6:.1f} megapixels; attnviz accepts up to "
            f"{LIMITS.max_pixels:,} pixels ({LIMITS.max_pixels / 1e6:g} megapixels). Shrink "
            "it, or raise the limit with attnviz.photos.set_image_limits(max_pixels=...)"
        )


def _fit_draft(image: Image.Image, max_side: int | None) -> None:
    """JPEG: decode at reduced scale, to ``max_side`` if given and within the pixel limit."""
    if image.format != "JPEG":
        return
    w, h = image.size
    target = (w, h)
    if max_side is not None and max(w, h) > max_side:
        target = (max_side, max_side)
    scale = 1
    while (w // scale) * (h // scale) > LIMITS.max_pixels and scale < 8:
        scale *= 2
    if scale > 1:
        target = (min(target[0], w // scale), min(target[1], h // scale))
    if target != (w, h):
        image.draft(None, target)  # the smallest of 1/2, 1/4, 1/8 still >= target


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


@contextlib.contextmanager
def _opened(source: Any) -> Iterator[Image.Image]:
    """``source`` opened lazily (pixels decoded later, by ``load``); a file we open is
    closed on leaving, even for multi-page TIFFs that Pillow would keep open."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise TypeError(
            "source must be a path, bytes, a file object, a PIL image or a numpy array, "
            f"got {type(source).__name__}"
        )
    what = _describe(source)
    fh = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageLoadError(f"{what} is a folder, not an image file")
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"no image file at {what}") from None
    try:
        try:
            with warnings.catch_warnings():  # our own limit, lower than Pillow's, decides
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(fh if fh is not None else source)
        except UnidentifiedImageError as e:
            if _empty(fh if fh is not None else source):
                raise ImageLoadError(f"{what} is empty (0 bytes), not an image") from e
            raise ImageLoadError(f"{what} is not an image (or not a format Pillow reads)") from e
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"{what}: {e}") from e
        yield image
    finally:
        if fh is not None:
            fh.close()


def _empty(fh: Any) -> bool:
    """Whether a file object holds no bytes at all (its position is kept)."""
    try:
        here = fh.tell()
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(here)
    except (AttributeError, OSError, ValueError):
        return False
    return size == 0


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
# Conversions run over strips of rows (about 2 megapixels each) into one 8-bit result, so a
# 40-megapixel 16-bit or float image never has a full-size temporary in a wider type.
_STRIP = 2_000_000


def _rows(height: int, width: int) -> range:
    return range(0, height, max(1, _STRIP // max(1, width)))


def _map_rows(arr: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` applied to strips of rows of ``arr``, into one uint8 array of its shape."""
    out = np.empty(arr.shape, np.uint8)
    step = _rows(arr.shape[0], int(np.prod(arr.shape[1:]))).step
    for top in range(0, arr.shape[0], step):
        out[top : top + step] = fn(arr[top : top + step])
    return out


def _scale_16(arr: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8 bits by v / 257 rounded (65535 -> 255, 257 -> 1), in integers."""
    return _map_rows(arr, lambda a: ((a.astype(np.uint32) + 128) // 257).astype(np.uint8))


def _stretched(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    """Linear map of [lo, hi] onto [0, 255] (a constant image -> 0)."""
    if hi <= lo:
        return lambda a: np.zeros(a.shape, np.uint8)
    k = 255.0 / (hi - lo)
    return lambda a: np.round((a.astype(np.float32) - lo) * k).astype(np.uint8)


def _int_map(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    """Mode ``I``: values in [0, 65535] are 16-bit samples (Pillow reads 16-bit PNG and TIFF
    files as ``I`` or ``I;16``), scaled as :func:`_scale_16`; other ranges are stretched."""
    if lo >= 0 and hi <= 65535:
        return lambda a: ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return _stretched(lo, hi)


def _float_map(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    """Mode ``F``: values in [0, 1] are intensities (x 255, rounded); others are stretched."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("a float image must be finite (it contains NaN or infinity)")
    if lo >= 0.0 and hi <= 1.0:
        return lambda a: np.round(a.astype(np.float32) * 255.0).astype(np.uint8)
    return _stretched(lo, hi)


def _scale_int(arr: np.ndarray) -> np.ndarray:
    return _map_rows(arr, _int_map(float(arr.min()), float(arr.max())))


def _scale_float(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError("a float image must be finite (it contains NaN or infinity)")
    return _map_rows(arr, _float_map(float(arr.min()), float(arr.max())))


def _strips(image: Image.Image) -> Iterator[tuple[tuple[int, int, int, int], Image.Image]]:
    """(box, crop) over strips of rows of ``image``."""
    w, h = image.size
    rows = _rows(h, w)
    for top in rows:
        box = (0, top, w, min(h, top + rows.step))
        yield box, image.crop(box)


def _grey_to_rgb(image: Image.Image, fn: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """A one-band image of a wide type, mapped to 8 bits strip by strip, as RGB."""
    out = np.empty((image.height, image.width), np.uint8)
    for (_, top, _, bottom), strip in _strips(image):
        out[top:bottom] = fn(np.asarray(strip))
    return Image.fromarray(out).convert("RGB")


def _over_white(image: Image.Image) -> Image.Image:
    """An image with transparency composited over white, rgb * a + 255 * (1 - a), strip by
    strip (no full-size RGBA or mask copy)."""
    out = Image.new("RGB", image.size, (255, 255, 255))
    for box, strip in _strips(image):
        rgba = strip.convert("RGBA")
        out.paste(rgba.convert("RGB"), box[:2], mask=rgba.getchannel("A"))
    return out


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, as a viewer shows it."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        return _grey_to_rgb(image, _int_map(0, 65535))
    if mode in ("I", "F"):
        # computed by Pillow, no copy; one band (I or F), so a single (min, max) pair
        lo, hi = cast("tuple[float, float]", image.getextrema())
        return _grey_to_rgb(image, (_int_map if mode == "I" else _float_map)(lo, hi))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        return _over_white(image)
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
        _check_limits(source.size, "the image")
        return _finish(ImageOps.exif_transpose(source, in_place=False), max_side)
    if isinstance(source, np.ndarray):
        if source.ndim in (2, 3):
            _check_limits((source.shape[1], source.shape[0]), "the array")
        image = _from_array(source)
        ImageOps.exif_transpose(image, in_place=True)
        return _finish(image, max_side)
    with _opened(source) as image:
        what = _describe(source)
        _fit_draft(image, max_side)  # JPEG: decode at 1/2, 1/4 or 1/8 (sets the size)
        _check_limits(image.size, what)  # from the header: nothing decoded yet
        _decode(image, what)
        ImageOps.exif_transpose(image, in_place=True)  # our own: no full-size copy
        return _finish(image, max_side)


def _finish(image: Image.Image, max_side: int | None) -> Image.Image:
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
    """The sample photos shipped with attnviz, by name (licences: PHOTOS_DIR/LICENSE.md)."""
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
