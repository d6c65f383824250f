"""Spatial Transformer.

Jaderberg, Simonyan, Zisserman and Kavukcuoglu, "Spatial Transformer Networks",
NeurIPS 2015. Three parts (section 3):

1. localisation network: theta = f_loc(U), its last regression layer initialised
   to the identity transform (weights 0, bias [1, 0, 0, 0, 1, 0]);
2. grid generator (eq. 1): (x_s, y_s)^T = A_theta (x_t, y_t, 1)^T over the output
   grid in normalised coordinates [-1, 1];
3. sampler (eq. 5): V = bilinear sample of U at the grid.

theta (B x 2 x 3) is the output of the ``theta`` submodule, the sampling grid
(B x H' x W' x 2) the output of ``grid`` and V the output of ``sampler`` (and of
the module), so forward hooks see each of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TRANSFORMS", "AffineGrid", "GridSampler", "SpatialTransformer", "ThetaBuilder"]

#: transform name -> number of parameters regressed by the localisation head
TRANSFORMS = {"affine": 6, "attention": 3}
_IDENTITY = {"affine": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "attention": [1.0, 0.0, 0.0]}


class ThetaBuilder(nn.Module):
    """Turns the regressed parameters into A_theta (B x 2 x 3).

    ``"affine"``: the six parameters row by row. ``"attention"``: (s, tx, ty), the
    paper's restricted isotropic scale + translation, A = [[s, 0, tx], [0, s, ty]].
    """

    def __init__(self, transform: str = "affine") -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {sorted(TRANSFORMS)}, got {transform!r}")
        self.transform = transform

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        if self.transform == "affine":
            return params.view(-1, 2, 3)
        s, tx, ty = params.unbind(dim=1)
        zero = torch.zeros_like(s)
        return torch.stack([s, zero, tx, zero, s, ty], dim=1).view(-1, 2, 3)

    def extra_repr(self) -> str:
        return f"transform={self.transform!r}"


class AffineGrid(nn.Module):
    """Grid generator (eq. 1): ``affine_grid(theta, (B, C, H', W'))``."""

    def __init__(self, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.affine_grid(theta, list(size), align_corners=self.align_corners)


class GridSampler(nn.Module):
    """Bilinear sampler (eq. 5), optionally padding with a constant value.

    ``padding_value`` is the value read outside the input. Padding with the
    background of a normalised image (instead of 0) keeps the transformer from
    learning to zoom out (STYLE.md, traps). Implemented exactly as
    ``grid_sample(U - p) + p``, since bilinear weights sum to one.
    """

    def __init__(self, align_corners: bool = False, padding_value: float | None = None) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.padding_value = padding_value

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        p = self.padding_value
        if p is None or p == 0:
            return F.grid_sample(
                x, grid, mode="bilinear", padding_mode="zeros", align_corners=self.align_corners
            )
        out = F.grid_sample(
            x - p, grid, mode="bilinear", padding_mode="zeros", align_corners=self.align_corners
        )
        return out + p


def _infer_features(localization: nn.Module) -> int:
    last = None
    for m in localization.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(
            "could not infer the size of the localisation network's output: it has no "
            "nn.Linear layer. Pass in_features=<number of features it outputs per image>."
        )
    return last.out_features


class SpatialTransformer(nn.Module):
    """A spatial transformer: localisation network, identity-initialised head, grid, sampler.

    Args:
        localization: f_loc without its final regression layer; any module mapping
            U (B x C x H x W) to features (B x in_features, or anything that flattens to it).
        output_size: (H', W') of V; ``None`` keeps the input's H x W.
        transform: ``"affine"`` (6 parameters) or ``"attention"`` (isotropic scale and
            translation, 3 parameters).
        in_features: size of the localisation output; inferred from its last
            ``nn.Linear`` when omitted.
        align_corners: passed to ``affine_grid`` and ``grid_sample``.
        padding_value: value read outside the input (``None``: zeros).

    Submodules:
        localization, head: f_loc; ``head`` is the regression layer (zero weights,
            identity bias).
        theta: builds A_theta (B x 2 x 3) -- the captured transform.
        grid: the sampling grid (B x H' x W' x 2).
        sampler: V (B x C x H' x W').

    ``forward(x, source=None)``: theta is regressed from ``x``; V is sampled from
    ``source`` when given (e.g. a higher-resolution original of the same image, as
    in section 3 of the paper), else from ``x``.
    """

    def __init__(
        self,
        localization: nn.Module,
        output_size: Sequence[int] | int | None = None,
        transform: str = "affine",
        *,
        in_features: int | None = None,
        align_corners: bool = False,
        padding_value: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(localization, nn.Module):
            raise TypeError(f"localization must be an nn.Module, got {type(localization).__name__}")
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if output_size is not None:
            output_size = tuple(int(s) for s in output_size)
            if len(output_size) != 2 or min(output_size) < 1:
                raise ValueError(f"output_size must be (H, W) of positive ints, got {output_size}")
        self.output_size = output_size
        self.localization = localization
        features = in_features if in_features is not None else _infer_features(localization)
        self.theta = ThetaBuilder(transform)
        self.head = nn.Linear(features, TRANSFORMS[transform])
        self.grid = AffineGrid(align_corners)
        self.sampler = GridSampler(align_corners, padding_value)
        self.reset_head()

    @property
    def transform(self) -> str:
        return self.theta.transform

    @property
    def align_corners(self) -> bool:
        return self.grid.align_corners

    def reset_head(self) -> None:
        """Initialise the regression layer to the identity transform (section 4 of the paper)."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor(_IDENTITY[self.transform]))

    def regress(self, x: torch.Tensor) -> torch.Tensor:
        """theta (B x 2 x 3) for input ``x``, without sampling."""
        return self.theta(self.head(self.localization(x).flatten(1)))

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"SpatialTransformer expects B x C x H x W input, got shape {tuple(x.shape)}"
            )
        src = x if source is None else source
        if src.dim() != 4 or src.shape[0] != x.shape[0]:
            raise ValueError(
                f"source must be B x C x H x W with the same batch as x, got {tuple(src.shape)}"
            )
        theta = self.regress(x)
        h, w = self.output_size or src.shape[-2:]
        grid = self.grid(theta, (src.shape[0], src.shape[1], h, w))
        return self.sampler(src, grid)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
