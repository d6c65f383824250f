"""Non-local block: self-attention over all positions of a feature map.

Wang, Girshick, Gupta and He, "Non-local Neural Networks", CVPR 2018. For an input
x in R^{C x H x W} with positions i, j (N = H W of them):

1. generic non-local operation (eq. 1): y_i = 1 / C(x) sum_j f(x_i, x_j) g(x_j), with
   g(x_j) = W_g x_j a 1 x 1 convolution (eq. 2 and after);
2. embedded Gaussian (eq. 3): f(x_i, x_j) = exp(theta(x_i)^T phi(x_j)), theta = W_theta x,
   phi = W_phi x, C(x) = sum_j f(x_i, x_j); so y = softmax(theta^T phi) g, a softmax over
   the keys j for each query i (Sec. 3.2 notes this is the self-attention of Vaswani et
   al. for a given i, without their 1 / sqrt(d) scaling);
3. dot product (eq. 4): f(x_i, x_j) = theta(x_i)^T phi(x_j), C(x) = N ("to simplify
   gradient computation"); rows then do not sum to one and may be negative;
4. non-local block (eq. 6): z_i = W_z y_i + x_i, a residual connection, so the block can
   be inserted into a pretrained network.

Implementation details of Sec. 3.3 and 4.1 followed here: theta, phi and g have half of
x's channels (the bottleneck); W_z is a 1 x 1 convolution followed by batch-norm whose
scale is initialised to zero, so a new block is the identity; optional subsampling puts a
2 x 2 max pooling after phi and g, so the keys (and values) live on an (H/2, W/2) grid and
the pairwise computation shrinks four times.

The attention matrix A (B x N x N_keys) is the output of the ``attend`` submodule, the
values g(x_j) (B x N_keys x D) the output of ``values``: a forward hook sees exactly what
the block applied, y = A g.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NonLocal"]

MODES = ("embedded_gaussian", "dot_product")


class _DivideByCount(nn.Module):
    """f / N for the dot-product form (eq. 4), N the number of keys summed over."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f / f.shape[-1]


class _Positions(nn.Module):
    """B x D x H x W -> B x (H W) x D: one row per position, in row-major order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


def _check(channels: int, inner: int | None, mode: str, subsample: bool) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if inner is None:
        inner = max(channels // 2, 1)
    if isinstance(inner, bool) or not isinstance(inner, int) or inner < 1:
        raise ValueError(f"inner must be a positive int (channels of theta, phi, g), got {inner!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(subsample, bool):
        raise TypeError(f"subsample must be True or False, got {subsample!r}")
    return inner


class NonLocal(nn.Module):
    """The non-local block of eq. 6: z = x + BN(W_z (A g(x))), A = softmax(theta^T phi).

    Args:
        channels: C, the channels of x (and of z).
        inner: D, the channels of theta, phi and g; ``None``: C // 2 (the paper's bottleneck).
        mode: ``"embedded_gaussian"`` (eq. 3; rows of A sum to one) or ``"dot_product"``
            (eq. 4; A = theta^T phi / N_keys).
        subsample: 2 x 2 max pooling after phi and g (Sec. 3.3): keys on an (H/2, W/2) grid.

    Submodules:
        theta, phi, g: the 1 x 1 convolutions W_theta, W_phi, W_g (C -> D).
        pool: the 2 x 2 max pooling of phi and g (``nn.Identity`` without subsampling).
        attend: normalises theta^T phi into A (B x N x N_keys): softmax over the keys, or
            division by N_keys; its output is the attention matrix.
        values: arranges g(x) as B x N_keys x D; its output is what A averages.
        w_z, bn: W_z (D -> C, 1 x 1) and the batch-norm after it, scale initialised to zero.

    Attributes:
        query_size: (H, W) of the last input, the grid of the queries (rows of A).
        key_size: (H_k, W_k) of the keys (columns of A), (H // 2, W // 2) when subsampling.
    """

    def __init__(
        self,
        channels: int,
        inner: int | None = None,
        mode: str = "embedded_gaussian",
        subsample: bool = False,
    ) -> None:
        super().__init__()
        inner = _check(channels, inner, mode, subsample)
        self.channels, self.inner, self.mode, self.subsample = channels, inner, mode, subsample
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.pool = nn.MaxPool2d(2) if subsample else nn.Identity()
        self.attend = nn.Softmax(dim=-1) if mode == "embedded_gaussian" else _DivideByCount()
        self.values = _Positions()
        self.w_z = nn.Conv2d(inner, channels, 1, bias=False)  # BN's shift is the bias
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)  # Sec. 4.1: the block starts as the identity
        self.query_size: tuple[int, int] | None = None
        self.key_size: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # B x N x D, theta(x_i)
        k = self.pool(self.phi(x))  # B x D x Hk x Wk, phi(x_j)
        self.query_size, self.key_size = (h, w), (k.shape[-2], k.shape[-1])
        a = self.attend(q @ k.flatten(2))  # B x N x Nk, f(x_i, x_j) / C(x)
        v = self.values(self.pool(self.g(x)))  # B x Nk x D, g(x_j)
        y = (a @ v).transpose(1, 2).reshape(b, self.inner, h, w)  # eq. 1
        return x + self.bn(self.w_z(y))  # eq. 6

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, inner={self.inner}, mode={self.mode!r}, "
            f"subsample={self.subsample}"
        )
