"""Records of spatial transformers: the affine theta a transformer sampled its input at
(:class:`TransformRecord`), and the two stages of :class:`attnviz.modules.TwoStageTransformer`
(:class:`TwoStageTransformRecord`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Record

__all__ = ["TransformRecord", "TwoStageTransformRecord"]


class TransformRecord(Record):
    """A spatial transformer's A_theta (B x 2 x 3), its output V and the input's H x W."""

    kind = "transform"
    _main = "theta"

    @property
    def theta(self) -> torch.Tensor:
        return self._get("theta")

    @property
    def output(self) -> torch.Tensor:
        """V, the transformed output (B x C x H' x W')."""
        return self._get("output")

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the image that was sampled."""
        return self.meta["input_size"]

    @property
    def align_corners(self) -> bool:
        return self.meta.get("align_corners", False)

    def grid(self) -> torch.Tensor:
        """The sampling grid (B x H' x W' x 2, normalised [-1, 1]) that produced ``output``."""
        out = self.output
        return F.affine_grid(self.theta.float(), list(out.shape), align_corners=self.align_corners)


class TwoStageTransformRecord(TransformRecord):
    """A two-stage spatial transformer (:class:`attnviz.modules.TwoStageTransformer`).

    ``theta`` is the composed transform that sampled ``output``; its pieces are the
    first stage's ``window`` (B x 2 x 3: where the object is and how big) and the second
    stage's ``rotation`` (B x 2 x 2: how it was turned), ``theta = [A_1 R | t_1]``;
    ``crop`` is what the second stage read (the window's crop).
    """

    @property
    def window(self) -> torch.Tensor:
        return self._get("window")

    @property
    def rotation(self) -> torch.Tensor:
        return self._get("rotation")

    @property
    def crop(self) -> torch.Tensor:
        return self._get("crop")

    @property
    def angle(self) -> torch.Tensor:
        """The rotation's angle in radians (B), counter-clockwise in sampling coordinates."""
        r = self.rotation.double()
        return torch.atan2(r[:, 1, 0], r[:, 0, 0]).float()
