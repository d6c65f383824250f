"""Geometry shared by the rendered data sets: similarity transforms and ink boxes."""

from __future__ import annotations

import torch

__all__ = ["canvas_to_digit", "grid", "ink_boxes", "normaliser", "similarity"]


def normaliser(size: int) -> torch.Tensor:
    """3x3 matrix taking edge-based pixel coords of a size x size image to [-1, 1]."""
    return torch.tensor([[2.0 / size, 0, -1], [0, 2.0 / size, -1], [0, 0, 1]])


def similarity(angle, scale, cx, cy, digit: int = 28) -> torch.Tensor:
    """Pixel-space map digit -> canvas: p = c + s R(angle) (q - digit/2), as N x 3 x 3."""
    n = angle.shape[0]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    m = torch.zeros(n, 3, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    half = digit / 2
    m[:, 0, 2] = cx - (cos * half - sin * half)
    m[:, 1, 2] = cy - (sin * half + cos * half)
    m[:, 2, 2] = 1
    return m


def canvas_to_digit(digit_to_canvas_px: torch.Tensor, canvas: int, digit: int = 28) -> torch.Tensor:
    """Homography from canvas normalised coords to digit normalised coords."""
    return (
        normaliser(digit)
        @ torch.linalg.inv(digit_to_canvas_px)
        @ torch.linalg.inv(normaliser(canvas))
    )


def grid(transforms: torch.Tensor, canvas: int) -> torch.Tensor:
    """Sampling grid (N x S x S x 2) of a batch of homographies over the canvas."""
    t = (torch.arange(canvas, dtype=torch.float32) + 0.5) / canvas * 2 - 1
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)  # S*S x 3
    mapped = torch.einsum("nij,pj->npi", transforms, pts)
    grid = mapped[..., :2] / mapped[..., 2:]
    return grid.reshape(-1, canvas, canvas, 2)


def ink_boxes(images: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """Tight boxes (x0, y0, x1, y1, pixel edges) of pixels above ``threshold``."""
    ink = images[:, 0] > threshold
    rows, cols = ink.any(dim=2), ink.any(dim=1)
    size = images.shape[-1]
    idx = torch.arange(size)

    def span(mask):
        first = torch.where(mask, idx, size).amin(dim=1)
        last = torch.where(mask, idx, -1).amax(dim=1) + 1
        empty = first >= size
        return torch.where(empty, 0, first), torch.where(empty, 0, last)

    x0, x1 = span(cols)
    y0, y1 = span(rows)
    return torch.stack([x0, y0, x1, y1], dim=1).float()
