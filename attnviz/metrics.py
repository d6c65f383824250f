"""Scores of attention against ground truth.

Spatial transformer: how well the region a transformer samples covers the
object -- the exact IoU of the sampled quadrilateral (the image of the output
frame under A_theta, Jaderberg et al. 2015, eq. 1) with the ground-truth box.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import maps
from .capture import capture

__all__ = ["sampled_box_iou"]


def sampled_box_iou(
    model: nn.Module,
    images: torch.Tensor,
    boxes: torch.Tensor,
    *,
    name: str | None = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """IoU of each image's sampled quadrilateral with its ground-truth box.

    Args:
        model: a model containing a spatial transformer (captured in eval mode; the
            model's own mode is restored).
        images: N x C x H x W, what the model reads.
        boxes: N x 4 ground-truth boxes (x0, y0, x1, y1, pixel edges of ``images``).
        name: which transformer, when the model has several (its qualified name).
        batch_size: images per forward pass.

    Returns:
        N IoUs in [0, 1] (float64).
    """
    if images.dim() != 4 or boxes.shape != (len(images), 4):
        raise ValueError(
            f"images must be N x C x H x W and boxes N x 4, got {tuple(images.shape)} and "
            f"{tuple(boxes.shape)}"
        )
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        with torch.no_grad(), capture(model, kinds="transform", names=name) as rec:
            model(images[i : i + batch_size].to(device))
        (r,) = _one(rec.select(kind="transform"))
        corners = maps.theta_corners(r.theta.float(), r.input_size)
        out.append(maps.polygon_iou(corners, boxes[i : i + batch_size]))
    return torch.cat(out)


def _one(records: list[Any]) -> list[Any]:
    if len(records) != 1:
        names = [r.name for r in records]
        raise ValueError(f"the model has several spatial transformers {names}; pass name=")
    return records
