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

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TRANSFORMS",
    "AffineGrid",
    "AngleHead",
    "ComposeTheta",
    "GridSampler",
    "HeatmapHead",
    "RotationMatrix",
    "SpatialTransformer",
    "ThetaBuilder",
    "TwoStageTransformer",
]

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
    background of a normalized image (instead of 0) keeps the transformer from
    learning to zoom out: with zero padding, a zoomed-out crop of a normalized digit
    shows a dark frame the classifier can use. Implemented exactly as
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


class HeatmapSoftmax(nn.Module):
    """Softmax over the positions of a B x 1 x h x w score map: B x h x w probabilities.

    A module of its own so that a forward hook sees where the localisation network looks.
    """

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        b, _, h, w = scores.shape
        return torch.softmax(scores.flatten(1), dim=1).view(b, h, w)


class HeatmapHead(nn.Module):
    """Regression head that finds *where* by a soft-argmax and *how* from pooled features.

    A linear head on flattened features must learn, weight by weight, which place in the
    feature map means which translation, from classification gradients alone; on cluttered
    60 x 60 digits it did not within a CPU-sized budget (mean IoU with the digit's box
    0.17-0.20 after 30 epochs, measured; 0.67 with this head). This head scores every
    cell of the localisation network's feature map (a 1 x 1 convolution), turns the
    scores into probabilities p (softmax over cells) and puts the window's centre at
    their expectation,

        (t_x, t_y) = sum_ij p_ij (x_j, y_i),   (x_j, y_i): cell centres in [-1, 1],

    so what it learns about a digit at one place holds everywhere (translation-equivariant,
    as in keypoint soft-argmax regression). The rest of A_theta -- the isotropic scale
    (``"attention"``) or the 2 x 2 linear part (``"affine"``) -- comes from a small MLP on
    the globally pooled features.

    Initialisation: scores 0 (uniform p, so the centre is the image centre) and the linear
    part ``scale`` times the identity; ``scale=1`` is the identity transform.

    Args:
        channels: channels of the localisation network's feature map (B x C x h x w).
        transform: ``"affine"`` or ``"attention"``.
        scale: initial zoom (1: the whole image; 0.5: a window half the image's size).
        hidden: width of the MLP for the linear part.

    Submodules: ``score`` (the 1 x 1 convolution), ``heatmap`` (p, B x h x w, hookable),
    ``linear`` (the MLP).
    """

    def __init__(
        self, channels: int, transform: str = "affine", scale: float = 1.0, hidden: int = 32
    ) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {sorted(TRANSFORMS)}, got {transform!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (1 = identity), got {scale!r}")
        self.transform = transform
        self.init_scale = float(scale)
        self.score = nn.Conv2d(channels, 1, 1)
        self.heatmap = HeatmapSoftmax()
        n_linear = 4 if transform == "affine" else 1
        self.linear = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, n_linear)
        )
        self.reset_head()

    def reset_head(self) -> None:
        """Uniform scores (centre of the image) and the linear part ``scale`` x identity."""
        s = self.init_scale
        last = cast(nn.Linear, self.linear[-1])
        # both layers are built with a bias (typed Optional / left unannotated by torch)
        score_bias = cast(torch.Tensor, self.score.bias)
        last_bias = cast(torch.Tensor, last.bias)
        with torch.no_grad():
            for weight, bias in ((self.score.weight, score_bias), (last.weight, last_bias)):
                weight.zero_()
                bias.zero_()
            if self.transform == "affine":
                last_bias.copy_(torch.tensor([s, 0.0, 0.0, s]))
            else:
                last_bias.fill_(s)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4:
            raise ValueError(
                "HeatmapHead needs the localisation network's feature map (B x C x h x w), got "
                f"shape {tuple(features.shape)}: drop its Flatten/Linear layers"
            )
        p = self.heatmap(self.score(features))
        h, w = p.shape[-2:]
        ys = (torch.arange(h, device=p.device, dtype=p.dtype) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, device=p.device, dtype=p.dtype) + 0.5) / w * 2 - 1
        tx = (p.sum(dim=1) * xs).sum(dim=1)
        ty = (p.sum(dim=2) * ys).sum(dim=1)
        lin = self.linear(features.mean(dim=(2, 3)))
        if self.transform == "attention":
            return torch.stack([lin[:, 0], tx, ty], dim=1)
        a, b, c, d = lin.unbind(dim=1)
        return torch.stack([a, b, tx, c, d, ty], dim=1)

    def extra_repr(self) -> str:
        return f"transform={self.transform!r}, scale={self.init_scale}"


def _source(transformer: nn.Module, x: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """What a transformer samples (``source``, else its input ``x``), both checked."""
    if x.dim() != 4:
        raise ValueError(
            f"{type(transformer).__name__} expects B x C x H x W input, got shape {tuple(x.shape)}"
        )
    src = x if source is None else source
    if src.dim() != 4 or src.shape[0] != x.shape[0]:
        raise ValueError(
            f"source must be B x C x H x W with the same batch as x, got {tuple(src.shape)}"
        )
    return src


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
        head: the regression layer; ``None`` builds the paper's ``nn.Linear`` (zero weights,
            identity bias) on the flattened localisation output. Any module mapping the
            localisation output to the transform's parameters works, e.g.
            :class:`HeatmapHead` on a fully convolutional f_loc. A linear head is set to
            the identity; any other head is used as it comes (``reset_head`` calls its
            own ``reset_head``).

    Submodules:
        localization, head: f_loc and the regression layer.
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
        head: nn.Module | None = None,
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
        self.theta = ThetaBuilder(transform)
        if head is None:
            features = in_features if in_features is not None else _infer_features(localization)
            head = nn.Linear(features, TRANSFORMS[transform])
        elif not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module or None, got {type(head).__name__}")
        elif getattr(head, "transform", transform) != transform:
            raise ValueError(
                f"head regresses a {head.transform!r} transform but the transformer was built "
                f"for {transform!r}: pass the same transform to both"
            )
        if isinstance(head, nn.Linear) and head.out_features != TRANSFORMS[transform]:
            raise ValueError(
                f"a linear head for a {transform!r} transform needs "
                f"out_features={TRANSFORMS[transform]}, got {head.out_features}"
            )
        self.head = head
        self.grid = AffineGrid(align_corners)
        self.sampler = GridSampler(align_corners, padding_value)
        if isinstance(head, nn.Linear):
            self.reset_head()

    @property
    def transform(self) -> str:
        return self.theta.transform

    @property
    def align_corners(self) -> bool:
        return self.grid.align_corners

    def reset_head(self) -> None:
        """Initialise the regression layer to the identity transform (section 4 of the paper).

        A custom head is reset by its own ``reset_head`` method.
        """
        if not isinstance(self.head, nn.Linear):
            reset = getattr(self.head, "reset_head", None)
            if reset is None:
                raise TypeError(
                    f"{type(self.head).__name__} has no reset_head() method; give it one that "
                    "sets the transform the head starts from"
                )
            reset()
            return
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor(_IDENTITY[self.transform]))

    def regress(self, x: torch.Tensor) -> torch.Tensor:
        """theta (B x 2 x 3) for input ``x``, without sampling."""
        features = self.localization(x)
        if isinstance(self.head, nn.Linear):
            features = features.flatten(1)
        params = self.head(features)
        n = TRANSFORMS[self.transform]
        if params.dim() != 2 or params.shape[1] != n:
            raise ValueError(
                f"the head returned shape {tuple(params.shape)}; a {self.transform!r} transform "
                f"needs B x {n} parameters"
            )
        return self.theta(params)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        src = _source(self, x, source)
        theta = self.regress(x)
        h, w = self.output_size or src.shape[-2:]
        grid = self.grid(theta, (src.shape[0], src.shape[1], h, w))
        return self.sampler(src, grid)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


# -- two stages: where and how big, then how turned -------------------------------------------
class RotationMatrix(nn.Module):
    """(cos, sin) regressed by a head -> a rotation matrix B x 2 x 2, the pair normalised
    to unit length first, so any regression gives a proper rotation. Its own module so a
    forward hook sees the rotation the transformer applied."""

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        c, s = F.normalize(pair, dim=1, eps=1e-6).unbind(dim=1)
        return torch.stack([c, -s, s, c], dim=1).view(-1, 2, 2)


class AngleHead(nn.Module):
    """Reads a centred crop and regresses how it must be turned: a rotation (B x 2 x 2).

    A small CNN with a fully connected head, so it sees the stroke layout that tells how
    a digit is turned (a head on globally pooled features discards it): conv 5 x 5 (8),
    max-pool, ReLU, conv 5 x 5 (16), max-pool, ReLU, FC 64, ReLU, FC 2 = (cos, sin).
    Initialised to the identity (last layer: weights 0, bias (1, 0)).

    Args:
        in_channels: channels of the crop.
        window_size: (h, w) of the crop, at least 16 x 16.
        hidden: width of the fully connected layer.
    """

    def __init__(
        self, in_channels: int = 1, window_size: Sequence[int] = (28, 28), hidden: int = 64
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in window_size)
        if min(h, w) < 16:
            raise ValueError(f"the angle head needs a crop of at least 16 x 16, got {h} x {w}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_channels, h, w)).shape[1]
        self.regress = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.rotation = RotationMatrix()
        self.reset_head()

    def reset_head(self) -> None:
        """The identity rotation: (cos, sin) = (1, 0) whatever the crop."""
        last = cast(nn.Linear, self.regress[-1])
        with torch.no_grad():
            last.weight.zero_()
            cast(torch.Tensor, last.bias).copy_(torch.tensor([1.0, 0.0]))

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return self.rotation(self.regress(self.features(crop)))


class ComposeTheta(nn.Module):
    """The composed transform: ``[A_1 R | t_1]`` for a window ``[A_1 | t_1]`` (B x 2 x 3)
    and a rotation R (B x 2 x 2).

    An output point p goes first through R, then through the window: ``A_1 (R p) + t_1``,
    so the output is the window's crop turned by R about its centre, sampled from the
    input in one step.
    """

    def forward(self, window: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        return torch.cat([window[:, :, :2] @ rotation, window[:, :, 2:]], dim=2)


class TwoStageTransformer(nn.Module):
    """A spatial transformer in two stages: find and size the object, then turn it upright.

    Stage 1 (where, how big): a fully convolutional localisation network and a
    :class:`HeatmapHead` give the window ``A_1 = [[s, 0, t_x], [0, s, t_y]]`` (the
    paper's attention transform: isotropic scale and translation) and sample a centred
    crop of the object. Stage 2 (how turned): an :class:`AngleHead` reads that crop and
    regresses the rotation R. The composed theta ``[s R | t]`` (:class:`ComposeTheta`)
    samples the input once. At initialisation the window is the whole image (``scale``
    1) and R the identity, so the transformer starts as the identity.

    Args:
        localization: fully convolutional f_loc (B x C x H x W -> B x channels x h x w).
        channels: channels of its feature map.
        in_channels: image channels.
        window_size: (h, w) of the first stage's crop, which the angle head reads.
        output_size: (H', W') of the output.
        init_scale: the window's initial zoom (1: the whole image).
        align_corners, padding_value: as for :class:`SpatialTransformer`.
        consistency: weight of the rotation-consistency loss (0: none). In training mode
            the crop is also turned by a random angle D and the angle head must answer
            consistently, ``R(D-turned crop) = D^T R(crop)`` (mean squared difference of
            the matrices); :func:`attnviz.train.fit` adds it to the classification loss
            (``auxiliary_loss``). Self-supervised: no true angle is used; it makes the
            head's answers consistent across orientations, and the classifier decides
            which orientation is upright.

    Submodules (each output hookable): ``localization``, ``head`` (the heat-map head),
    ``window`` (the first-stage theta ``A_1``, B x 2 x 3), ``window_sampler`` (the crop),
    ``angle`` (with ``angle.rotation``: R, B x 2 x 2), ``theta`` (the composed theta,
    B x 2 x 3), ``grid`` and ``sampler`` (the output, B x C x H' x W').
    """

    def __init__(
        self,
        localization: nn.Module,
        channels: int = 32,
        in_channels: int = 1,
        window_size: Sequence[int] = (28, 28),
        output_size: Sequence[int] = (28, 28),
        *,
        init_scale: float = 1.0,
        align_corners: bool = False,
        padding_value: float | None = None,
        consistency: float = 0.0,
    ) -> None:
        super().__init__()
        if not consistency >= 0:
            raise ValueError(f"consistency must be a weight >= 0, got {consistency!r}")
        self.consistency = float(consistency)
        self.auxiliary_loss: torch.Tensor | None = None
        self.window_size = tuple(int(s) for s in window_size)
        self.output_size = tuple(int(s) for s in output_size)
        self.localization = localization
        self.head = HeatmapHead(channels, "attention", scale=init_scale)
        self.window = ThetaBuilder("attention")
        self.window_grid = AffineGrid(align_corners)
        self.window_sampler = GridSampler(align_corners, padding_value)
        self.angle = AngleHead(in_channels, self.window_size)
        self.theta = ComposeTheta()
        self.grid = AffineGrid(align_corners)
        self.sampler = GridSampler(align_corners, padding_value)

    transform = "affine"

    @property
    def align_corners(self) -> bool:
        return self.grid.align_corners

    def reset_head(self) -> None:
        """Both stages back to the identity."""
        self.head.reset_head()
        self.angle.reset_head()

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        src = _source(self, x, source)
        window = self.window(self.head(self.localization(x)))
        b, c = x.shape[:2]
        crop = self.window_sampler(x, self.window_grid(window, (b, c, *self.window_size)))
        rotation = self.angle(crop)
        self.auxiliary_loss = None
        if self.training and self.consistency > 0:
            self.auxiliary_loss = self.consistency * self._consistency(crop, rotation)
        theta = self.theta(window, rotation)
        grid = self.grid(theta, (src.shape[0], src.shape[1], *self.output_size))
        return self.sampler(src, grid)

    def _consistency(self, crop: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        """mean || R(D-turned crop) - D^T R(crop) ||^2 over the batch, D random turns."""
        a = (torch.rand(len(crop), device=crop.device, dtype=crop.dtype) * 2 - 1) * math.pi
        c, s = a.cos(), a.sin()
        zero = torch.zeros_like(a)
        d = torch.stack([c, -s, zero, s, c, zero], dim=1).view(-1, 2, 3)
        grid = F.affine_grid(d, list(crop.shape), align_corners=self.align_corners)
        pad = self.window_sampler.padding_value or 0.0
        turned = F.grid_sample(crop - pad, grid, align_corners=self.align_corners) + pad
        expected = d[:, :, :2].transpose(1, 2) @ rotation
        return (self.angle(turned) - expected).pow(2).sum(dim=(1, 2)).mean()

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, output_size={self.output_size}"
