"""Records of attention that gates what a module computes: a weight per channel
(:class:`ChannelRecord`), per position (:class:`SpatialRecord`), per channel and position
(:class:`ElementwiseRecord`, :class:`AxialRecord` as the product of two axes), per branch
(:class:`BranchRecord`), and global-context pooling (:class:`ContextRecord`)."""

from __future__ import annotations

import torch

from ..maps.views import weighted_activation
from .base import Record

__all__ = [
    "AxialRecord",
    "BranchRecord",
    "ChannelRecord",
    "ContextRecord",
    "ElementwiseRecord",
    "SpatialRecord",
]


class ChannelRecord(Record):
    """Channel weights (SE's s, CBAM's Mc, ECA, ...): ``weights`` is B x C."""

    kind = "channel"
    _main = "weights"

    @property
    def weights(self) -> torch.Tensor:
        return self._get("weights")

    def view(self) -> tuple[str, torch.Tensor]:
        """The weighted activation ``sum_c s_c u_c`` (needs ``capture(..., features=True)``):
        derived from the weights, not a map the module applied."""
        if "features" not in self._parts:
            raise ValueError(
                f"{self.name}: a channel record has a picture only as the weighted "
                "activation, which needs capture(..., features=True)"
            )
        return "SE-weighted activation", weighted_activation(self.features, self.weights)


class SpatialRecord(Record):
    """A spatial map (CBAM's Ms): ``map`` is B x H x W."""

    kind = "spatial"
    _main = "map"

    @property
    def map(self) -> torch.Tensor:
        return self._get("map")

    def view(self) -> tuple[str, torch.Tensor]:
        """The map itself."""
        return "spatial map", self.map.float()


class ElementwiseRecord(Record):
    """A gate per channel and position (Gather-Excite with extent, strip attention).

    ``gate`` is B x C x H x W; the module's output is its input times the gate.
    """

    kind = "elementwise"
    _main = "gate"

    @property
    def gate(self) -> torch.Tensor:
        return self._get("gate")

    def view(self) -> tuple[str, torch.Tensor]:
        """The gate's mean over channels."""
        return "gate (mean over channels)", self.gate.float().mean(1)


class AxialRecord(Record):
    """A gate factorised along the two axes (coordinate attention, efficient local attention).

    ``height`` is B x C x H, ``width`` B x C x W; the module multiplies its input by both,
    so the gate it applied at (c, i, j) is ``height[c, i] * width[c, j]`` (:meth:`gate`).
    """

    kind = "axial"
    _main = "height"

    @property
    def height(self) -> torch.Tensor:
        return self._get("height")

    @property
    def width(self) -> torch.Tensor:
        return self._get("width")

    def gate(self) -> torch.Tensor:
        """The applied gate, B x C x H x W: ``height[..., :, None] * width[..., None, :]``."""
        return self.height[..., :, None] * self.width[..., None, :]

    def view(self) -> tuple[str, torch.Tensor]:
        """The mean over channels of ``height x width``."""
        return "axial gate (mean over channels)", self.gate().float().mean(1)


class BranchRecord(Record):
    """Attention over K branches per channel (selective kernels, ResNeSt's split attention).

    ``weights`` is B x K x C: for every channel, how much of each path's output goes into
    the module's output, ``sum_k weights[:, k, c] * path_k[c]``; a softmax over K (a sigmoid
    when K = 1).
    """

    kind = "branch"
    _main = "weights"

    @property
    def weights(self) -> torch.Tensor:
        return self._get("weights")

    @property
    def paths(self) -> int:
        """K, the number of branches."""
        return int(self.weights.shape[1])

    def choice(self) -> torch.Tensor:
        """The branch each channel weights most: B x C integer indices."""
        return self.weights.argmax(dim=1)


class ContextRecord(Record):
    """Global-context attention (GCNet): attention pooling, then a scale and/or a shift.

    ``map`` (B x H x W, sums to one per image) is where the context is pooled from:
    ``context[c] = sum_p map[p] x[c, p]``. The module then applies ``scale`` (B x C, a
    sigmoid channel gate of the context) and/or adds ``shift`` (B x C, a transform of the
    context): ``output = x * scale + shift``. A module without one of them records none.
    """

    kind = "context"
    _main = "map"

    @property
    def map(self) -> torch.Tensor:
        return self._get("map")

    @property
    def scale(self) -> torch.Tensor:
        return self._get("scale")

    @property
    def shift(self) -> torch.Tensor:
        return self._get("shift")

    @property
    def has_scale(self) -> bool:
        return self._has("scale")

    @property
    def has_shift(self) -> bool:
        return self._has("shift")

    def view(self) -> tuple[str, torch.Tensor]:
        """The pooling map: where the context is gathered from."""
        return "context pooling map", self.map.float()
