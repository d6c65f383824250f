"""A small vision transformer that trains on a 2-core CPU: patch tokens, a class token,
and optionally register tokens (Darcet et al., "Vision Transformers Need Registers",
ICLR 2024).

The layout is timm's ``VisionTransformer`` (pre-norm blocks, ``cls_token``, ``reg_token``,
``patch_embed.patch_size``, ``num_prefix_tokens``), so :func:`attnviz.token_layout` names
its tokens ``cls``, ``reg1`` ... from its attributes. Each block computes its attention
explicitly, ``A = softmax(q k^T / sqrt(d))`` then ``A v``, and passes ``A`` through
``attn_drop`` on the way: that module's input is the very matrix the block multiplied
the values by, which the gradient-weighted explanations (:mod:`attnviz.attribution`)
read with its gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_positive_int

__all__ = ["Attention", "Block", "ConvStem", "PatchEmbed", "SmallViT", "small_vit"]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches, each projected to ``dim`` (a strided conv)."""

    def __init__(self, patch_size: int, dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B x N x dim, row-major grid


class ConvStem(nn.Module):
    """Patch tokens from a convolutional stem (Xiao et al., "Early Convolutions Help
    Transformers See Better", NeurIPS 2021): log2(patch) stride-2 3 x 3 convolutions
    (batch norm, ReLU), then a 1 x 1 projection to ``dim``. Token (i, j) still covers
    input patch (i, j) at the patch stride; the convolutions let it see a little beyond
    its patch, and let a small transformer learn from thousands of images, not millions.
    """

    def __init__(self, patch_size: int, dim: int, in_channels: int = 3) -> None:
        super().__init__()
        steps = patch_size.bit_length() - 1
        if patch_size < 2 or 1 << steps != patch_size:
            raise ValueError(f"a conv stem needs a power-of-two patch_size, got {patch_size}")
        self.patch_size = (patch_size, patch_size)
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(steps):
            out = max(16, dim >> (steps - 1 - i))
            layers += [nn.Conv2d(c, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        layers.append(nn.Conv2d(c, dim, 1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with the matrix formed explicitly (timm's unfused path)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.num_heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attn = self.attn_drop(attn)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """A ViT for small images: ``[cls, reg1 .. regR, patches] + position`` through
    ``depth`` blocks; the class token's final state is classified.

    Args:
        image_size: side of the square input.
        patch_size: side of a patch (divides ``image_size``).
        dim, depth, heads, mlp_ratio: the transformer's width, blocks, heads, MLP width.
        registers: register tokens after the class token (0: none). They take part in
            attention like any token and are read by nothing (Darcet et al. 2024).
        stem: ``"patch"`` (a linear projection of each patch, ViT's) or ``"conv"``
            (:class:`ConvStem`).
        num_classes: outputs.
        in_channels: input channels.
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        *,
        dim: int = 96,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        registers: int = 0,
        stem: str = "patch",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        for value, name in (
            (image_size, "image_size"),
            (patch_size, "patch_size"),
            (dim, "dim"),
            (depth, "depth"),
            (heads, "heads"),
            (num_classes, "num_classes"),
        ):
            check_positive_int(value, name)
        if image_size % patch_size:
            raise ValueError(
                f"patch_size {patch_size} must divide image_size {image_size}; pick a divisor"
            )
        if isinstance(registers, bool) or not isinstance(registers, int) or registers < 0:
            raise ValueError(f"registers must be an int >= 0, got {registers!r}")
        if stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.image_size = image_size
        embed = PatchEmbed if stem == "patch" else ConvStem
        self.patch_embed: nn.Module = embed(patch_size, dim, in_channels)
        patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        self.num_prefix_tokens = 1 + registers
        # registers get no position (as in the paper and timm's no_embed_class layout)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for p in (self.cls_token, self.pos_embed, self.reg_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"SmallViT takes {self.image_size} x {self.image_size} images, got "
                f"{tuple(x.shape[-2:])}; resize the input or build the model for its size"
            )
        t = self.patch_embed(x)
        cls = self.cls_token.expand(len(t), -1, -1)
        t = torch.cat([cls, t], dim=1) + self.pos_embed
        if self.reg_token is not None:
            reg = self.reg_token.expand(len(t), -1, -1)
            t = torch.cat([t[:, :1], reg, t[:, 1:]], dim=1)
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0])


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def small_vit(**kwargs: object) -> SmallViT:
    """:class:`SmallViT` with keyword arguments (the constructor recipes name)."""
    return SmallViT(**kwargs)  # type: ignore[arg-type]
