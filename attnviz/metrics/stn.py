"""Scores of spatial transformers: the sampled region against the object, and whether the
learned transform undoes each distortion.

The sampled region is the image of the output frame under A_theta (Jaderberg et al.
2015, eq. 1): its exact IoU with the ground-truth box (:func:`sampled_box_iou`), beside
the best IoU a square window can reach (:func:`square_window_ceiling`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import maps
from .._compat import renamed_kwargs
from ..capture import capture
from ..running import model_device
from ._common import one_record

__all__ = ["sampled_box_iou", "square_window_ceiling", "transform_agreement"]


@renamed_kwargs(name="block")
def sampled_box_iou(
    model: nn.Module,
    images: torch.Tensor,
    boxes: torch.Tensor,
    *,
    block: str | None = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """IoU of each image's sampled quadrilateral with its ground-truth box.

    Args:
        model: a model containing a spatial transformer (captured in eval mode; the
            model's own mode is restored).
        images: N x C x H x W, what the model reads.
        boxes: N x 4 ground-truth boxes (x0, y0, x1, y1, pixel edges of ``images``).
        block: which transformer, when the model has several (its qualified name).
        batch_size: images per forward pass.

    Returns:
        N IoUs in [0, 1] (float64).
    """
    if images.dim() != 4 or boxes.shape != (len(images), 4):
        raise ValueError(
            f"images must be N x C x H x W and boxes N x 4, got {tuple(images.shape)} and "
            f"{tuple(boxes.shape)}"
        )
    device = model_device(model)
    out = []
    for i in range(0, len(images), batch_size):
        with torch.no_grad(), capture(model, kinds="transform", blocks=block) as rec:
            model(images[i : i + batch_size].to(device))
        (r,) = one_record(rec.select(kind="transform"))
        corners = maps.theta_corners(r.theta.float(), r.input_size)
        out.append(maps.polygon_iou(corners, boxes[i : i + batch_size]))
    return torch.cat(out)


def square_window_ceiling(boxes: torch.Tensor) -> torch.Tensor:
    """The best IoU an axis-aligned square window can reach with each box.

    The attention transform (isotropic scale + translation) samples a square, so a
    box of w x h (w <= h) caps its IoU: a centred square of side s in [w, h] gives
    ws / (s^2 + wh - ws), largest at s = sqrt(wh), where it equals 1 / (2r - 1) with
    r = sqrt(h / w). Use it beside :func:`sampled_box_iou` to read what is reachable.

    Args:
        boxes: N x 4 boxes (x0, y0, x1, y1) with positive width and height.

    Returns:
        N ceilings in (0, 1] (float64).
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be N x 4, got {tuple(boxes.shape)}")
    b = boxes.double()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if (w <= 0).any() or (h <= 0).any():
        raise ValueError("every box needs a positive width and height (x1 > x0, y1 > y0)")
    r = torch.sqrt(torch.maximum(w, h) / torch.minimum(w, h))
    return 1.0 / (2.0 * r - 1.0)


def transform_agreement(theta: torch.Tensor, transforms: torch.Tensor) -> dict[str, float]:
    """How well learned thetas follow the transform that would undo each distortion.

    ``transforms`` are the data set's canvas -> digit maps (``DistortedDigits.transforms``);
    the theta that would recover the upright digit is the affine part of their inverse.
    Both are decomposed (:func:`attnviz.maps.decompose_theta`) and compared over the set:
    the correlation of rotations, of zooms and of translations (1: the transformer undoes
    that part of the distortion image by image; 0: it ignores it), and the mean absolute
    rotation of each, in degrees.
    """
    if theta.dim() != 3 or theta.shape[1:] != (2, 3) or transforms.shape != (len(theta), 3, 3):
        raise ValueError(
            f"theta must be N x 2 x 3 and transforms N x 3 x 3, got {tuple(theta.shape)} and "
            f"{tuple(transforms.shape)}"
        )
    got = maps.decompose_theta(theta.double())
    ideal = maps.decompose_theta(torch.linalg.inv(transforms.double())[:, :2])

    def corr(key: str) -> float:
        return torch.corrcoef(torch.stack([got[key], ideal[key]]))[0, 1].item()

    deg = 180 / np.pi
    return {
        "rotation_corr": corr("rotation"),
        "zoom_corr": corr("zoom"),
        "translation_corr": (corr("tx") + corr("ty")) / 2,
        "rotation_deg": got["rotation"].abs().mean().item() * deg,
        "ideal_rotation_deg": ideal["rotation"].abs().mean().item() * deg,
    }
