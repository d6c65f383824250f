"""Self-attention over tokens: vision transformers (torchvision's ViT, timm's ViT family).

A vision transformer cuts the image into patches, one token each, and puts a few tokens
that are no patch in front of them: a class token (``cls``), a distillation token (DeiT,
``dist``), register tokens (``reg1``, ``reg2``, ... ; Darcet et al., 2024). Every block's
attention is a B x heads x N x N matrix over all N tokens. The record keeps the whole
matrix, and names the leading tokens from the model's own attributes (never guessed from
the count): see :func:`token_layout`.

Where the matrix is read:

- ``torch.nn.MultiheadAttention`` (torchvision's ViT; its blocks call it with
  ``need_weights=False``): during a capture the call is made with ``need_weights=True,
  average_attn_weights=False``, so the module computes the attention explicitly and hands
  over the very matrix it multiplied the values by (the caller still gets ``None`` for
  the weights when it asked for none). Checked: ``out_proj(matrix @ V)`` equals the
  module's output, V from the module's own value projection.
- timm's ``Attention`` with fused attention (``F.scaled_dot_product_attention``, timm's
  default): the fused kernel never forms the matrix, so the probe computes it from the
  very q, k, scale and mask the block passed to the kernel, ``softmax(q k^T * scale +
  mask)``, the kernel's definition. Checked: ``matrix @ v`` equals the kernel's output.
- timm's ``Attention`` without fusion (``fused_attn = False``): the softmax in its
  forward, checked like every other self-attention (``matrix @ v``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..maps.attention import attention_rows
from ..records import FactoredAttentionRecord, Geometry, SelfAttentionRecord
from .attention import SelfAttentionProbe
from .base import Emission, Probe, spots, sums_to_one

__all__ = [
    "MultiheadAttentionProbe",
    "TokenAttentionProbe",
    "TokenLayout",
    "token_layout",
]


@dataclass
class TokenLayout:
    """How a vision transformer lays out its tokens.

    Attributes:
        prefix: names of the tokens before the patches, in order (``("cls",)``,
            ``("cls", "dist")``, ``("cls", "reg1", ..., "reg4")``, or ``()``).
        patch: the patch size (ph, pw) in input pixels.
        source: what the layout was read from, for messages.
        image_size: (H, W) of the model's input in the current forward pass (set by the
            capture), from which the patch grid follows.
    """

    prefix: tuple[str, ...]
    patch: tuple[int, int]
    source: str
    image_size: tuple[int, int] | None = None

    def grid(self, tokens: int) -> tuple[int, int] | None:
        """The patch grid (h, w) for ``tokens`` tokens, or None if it cannot be told."""
        n = tokens - len(self.prefix)
        if self.image_size is not None:
            h, w = self.image_size[0] // self.patch[0], self.image_size[1] // self.patch[1]
            if h * w == n:
                return h, w
        side = math.isqrt(max(n, 0))
        return (side, side) if side * side == n and n > 0 else None


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


def token_layout(model: nn.Module) -> TokenLayout | None:
    """The token layout of a vision transformer, read from its attributes; None otherwise.

    - torchvision ``VisionTransformer``: ``class_token`` -> ``("cls",)``, ``patch_size``;
    - timm ``VisionTransformer`` and its subclasses (DeiT, DINO, DINOv2, ...):
      ``cls_token`` -> ``"cls"``, ``dist_token`` -> ``"dist"`` (after ``cls``, as
      ``VisionTransformerDistilled`` concatenates them), ``reg_token`` ->
      ``"reg1" .. "regR"`` (after ``cls``), ``patch_embed.patch_size``; the count is
      checked against the model's ``num_prefix_tokens``;
    - any model with a ``token_layout`` attribute holding a :class:`TokenLayout` (how to
      teach attnviz another transformer).
    """
    own = getattr(model, "token_layout", None)
    if isinstance(own, TokenLayout):
        return own
    hf = _hugging_face_layout(model)
    if hf is not None:
        return hf
    name = type(model).__name__
    if isinstance(getattr(model, "class_token", None), torch.Tensor) and hasattr(
        model, "patch_size"
    ):  # torchvision
        return TokenLayout(("cls",), _pair(model.patch_size), f"{name}.class_token")
    # TNT keeps its patches in ``pixel_embed`` (its outer tokens: [cls, patches])
    embed = getattr(model, "patch_embed", None) or getattr(model, "pixel_embed", None)
    if embed is None or not hasattr(model, "num_prefix_tokens"):
        return None
    prefix: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        prefix.append("cls")
    if getattr(model, "dist_token", None) is not None:
        prefix.append("dist")
    reg = getattr(model, "reg_token", None)
    if reg is not None:
        prefix += [f"reg{i + 1}" for i in range(int(cast(torch.Tensor, reg).shape[1]))]
    if len(prefix) != int(cast(int, model.num_prefix_tokens)):
        return None  # tokens this function cannot name: no layout rather than a guess
    patch = _pair(getattr(embed, "patch_size", 16))
    return TokenLayout(tuple(prefix), patch, f"{name} (cls_token, dist_token, reg_token)")


#: Hugging Face embeddings' attributes that put a token before the patches, in the order
#: their ``forward`` concatenates them (ViT/BEiT/DINOv2 ``cls_token``, CLIP
#: ``class_embedding``, DeiT ``distillation_token``, DINOv2 ``register_tokens``)
_HF_PREFIX = (
    ("cls_token", "cls"),
    ("class_embedding", "cls"),
    ("distillation_token", "dist"),
    ("register_tokens", "reg"),
)


def _hugging_face_layout(model: nn.Module) -> TokenLayout | None:
    """The layout of a Hugging Face ``transformers`` vision encoder: the patch size from
    its config, the leading tokens from its embeddings module's parameters."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    patch = getattr(config, "patch_size", None)
    vision = getattr(config, "vision_config", None)
    if patch is None and vision is not None:
        patch = getattr(vision, "patch_size", None)
    if patch is None:
        return None
    embeddings = next(
        (
            m
            for m in model.modules()
            if type(m).__name__.endswith("Embeddings")
            and any(hasattr(m, a) for a in ("patch_embeddings", "patch_embedding"))
        ),
        None,
    )
    if embeddings is None:
        return None
    prefix: list[str] = []
    for attr, label in _HF_PREFIX:
        t = getattr(embeddings, attr, None)
        if not isinstance(t, torch.Tensor):
            continue
        if label == "reg":
            prefix += [f"reg{i + 1}" for i in range(int(t.shape[-2]))]
        elif label not in prefix:
            prefix.append(label)
    name = type(model).__name__
    return TokenLayout(
        tuple(prefix),
        _pair(patch),
        f"{name} (config.patch_size, {type(embeddings).__name__}'s tokens)",
    )


class _TokenMixin:
    """Token layout and grids for probes of vision-transformer attention."""

    name: str
    layout: TokenLayout | None = None

    images: int | None = None

    def attach(self, root: nn.Module) -> list[Any]:
        """Read the model's token layout, and note its input size (and batch) in every
        forward."""
        self.layout = token_layout(root)
        layout = self.layout

        def note(_module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                self.images = int(x.shape[0])
                if layout is not None:
                    layout.image_size = (int(x.shape[-2]), int(x.shape[-1]))

        return [root.register_forward_pre_hook(note)]

    def per_image(self, em: Emission) -> Emission:
        """Sequences of one image folded into the batch (MobileViT v1 runs its transformer
        on B x P sequences, one per pixel offset of its patches, image-major) become
        heads of that image: matrix B x (P x heads) x N x N."""
        a, b = em.fields.get("matrix", em.fields.get("q")), self.images
        if a is None or b is None or a.shape[0] == b or a.shape[0] % b:
            return em
        fold = a.shape[0] // b
        for key in ("matrix", "values", "q", "k"):
            t = em.fields.get(key)
            if t is not None:
                em.fields[key] = t.reshape(b, fold * t.shape[1], *t.shape[2:])
        em.meta["heads_are"] = f"{fold} sequences per image x {a.shape[1]} heads"
        return em

    def token_geometry(self, n: int) -> Geometry:
        """The geometry of ``n`` tokens attending to each other: the model's named tokens
        then its patch grid, else a square grid, else unnamed leading tokens."""
        layout = self.layout
        if layout is None:
            side = math.isqrt(n)
            if side * side == n:
                return Geometry((side, side), (side, side), source="a square grid of tokens")
            return Geometry(unnamed=True)
        grid = layout.grid(n)
        return Geometry(grid, grid, prefix=layout.prefix, source=layout.source)

    def key_geometry(self, k: int) -> Geometry:
        """The geometry of cross-attention over ``k`` keys (SigLIP's pooling head: one
        learned query over the patches): the keys' grid where the layout has it."""
        keys = self.token_geometry(k)
        if keys.key_size is not None and not keys.prefix:
            return Geometry(key_size=keys.key_size, source=keys.source)
        return Geometry()


class MultiheadAttentionProbe(_TokenMixin, Probe):
    """``torch.nn.MultiheadAttention``: the weights it applied, requested from the module.

    The capture calls :meth:`arguments` before the forward (to ask for per-head weights)
    and :meth:`result` after it (to hand the caller what it asked for); nothing is tapped
    or watched.
    """

    kind = "self"
    record_type = SelfAttentionRecord

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__(name, module)
        self._mha = cast(nn.MultiheadAttention, module)
        self._asked: bool | None = None
        self._average = True
        self._factors = False

    def where(self) -> str:
        return "the attention weights it returns"

    def _plain(self, args: tuple, kwargs: dict) -> bool:
        """A call whose matrix is ``softmax(q k^T / sqrt(d))`` with q, k from the input
        projection (no masks, no causality, no extra keys, inference): its factors say it
        all, and the module runs as its caller called it (its own fast path, the weights
        it was asked for)."""
        m = self._mha

        def arg(i: int, name: str) -> Any:
            return args[i] if len(args) > i else kwargs.get(name)

        return (
            self.factored
            and not m.training
            and m.bias_k is None
            and not m.add_zero_attn
            and arg(3, "key_padding_mask") is None
            and arg(5, "attn_mask") is None
            and not arg(7, "is_causal")
        )

    def arguments(self, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._factors = self._plain(args, kwargs)
        if self._factors:
            self._asked = None
            return None  # called as the caller called it
        listed, kwargs = list(args), dict(kwargs)
        # forward(query, key, value, key_padding_mask, need_weights, attn_mask,
        #         average_attn_weights, is_causal)
        if len(listed) > 4:
            self._asked = bool(listed[4])
            listed[4] = True
        else:
            self._asked = bool(kwargs.get("need_weights", True))
            kwargs["need_weights"] = True
        if len(listed) > 6:
            self._average = bool(listed[6])
            listed[6] = False
        else:
            self._average = bool(kwargs.get("average_attn_weights", True))
            kwargs["average_attn_weights"] = False
        return tuple(listed), kwargs

    def result(self, output: Any) -> Any:
        """What the caller asked for: no weights, or the weights averaged over heads."""
        asked, self._asked = self._asked, None
        if not (isinstance(output, tuple) and len(output) == 2 and asked is not None):
            return output
        out, w = output
        if not asked:
            return out, None
        if self._average and isinstance(w, torch.Tensor):
            return out, w.mean(dim=-3)  # what MultiheadAttention averages: the heads
        return output

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        m = self._mha
        if not (isinstance(output, tuple) and len(output) == 2):
            return self.missing()
        if self._factors:
            return self._factored(args, kwargs, output[0])
        out, a = output
        value = args[2] if len(args) > 2 else kwargs.get("value")
        if not (isinstance(a, torch.Tensor) and isinstance(value, torch.Tensor)):
            return self.missing()
        if m.bias_k is not None or m.add_zero_attn:
            return Emission(
                problem=f"{self.name}: add_bias_kv / add_zero_attn add keys that are no "
                "token; attnviz does not record such attention"
            )
        if value.dim() == 2:  # one unbatched sequence
            value, out, a = value[None], out[None], a[None] if a.dim() == 3 else a
        elif not m.batch_first:
            value, out = value.transpose(0, 1), out.transpose(0, 1)
        if a.dim() != 4:
            return self.missing()
        heads, q, k = a.shape[1:]
        e = m.embed_dim
        if m._qkv_same_embed_dim:
            w_v = cast(torch.Tensor, m.in_proj_weight)[2 * e :]
        else:
            w_v = cast(torch.Tensor, m.v_proj_weight)
        b_v = None if m.in_proj_bias is None else m.in_proj_bias[2 * e :]
        # self-attention over tokens: the layout's grid; cross-attention (SigLIP's pooling
        # head: one learned query over the patches): the keys' grid where the layout has it
        geometry = self.token_geometry(q) if q == k else self.key_geometry(k)
        meta = {
            "kernel": "nn.MultiheadAttention, asked for its per-head weights",
            "kernel_shape": tuple(int(s) for s in a.shape),
        }
        em = Emission(fields={"matrix": a}, meta=meta, geometry=geometry)
        rows, imgs = spots(q, 16), slice(0, 2)

        def product() -> tuple[torch.Tensor, torch.Tensor]:
            v = nn.functional.linear(value[imgs], w_v, b_v)
            v = v.reshape(v.shape[0], k, heads, -1).transpose(1, 2)
            mixed = (a[imgs][:, :, rows] @ v).transpose(1, 2).reshape(v.shape[0], -1, e)
            return out[imgs][:, rows], m.out_proj(mixed)

        em.compare("out_proj(matrix @ values) == module's output", product)
        em.check("rows sum to 1", lambda: sums_to_one(a[:, :, rows], -1))
        return em

    def _factored(self, args: tuple, kwargs: dict, out: torch.Tensor) -> Emission:
        """q, k and v from the module's own input projection, kept as factors; checked:
        ``out_proj(rows @ v)`` equals the module's output on sampled rows."""
        m = self._mha
        given = [
            args[i] if len(args) > i else kwargs.get(n)
            for i, n in enumerate(("query", "key", "value"))
        ]
        inputs = [t for t in given if isinstance(t, torch.Tensor)]
        if len(inputs) != 3:
            return self.missing()
        if inputs[0].dim() == 2:  # one unbatched sequence
            inputs, out = [t[None] for t in inputs], out[None]
        elif not m.batch_first:
            inputs, out = [t.transpose(0, 1) for t in inputs], out.transpose(0, 1)
        e, heads = m.embed_dim, m.num_heads
        if m._qkv_same_embed_dim:
            weights = cast(torch.Tensor, m.in_proj_weight).split(e)
        else:
            weights = cast(tuple, (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight))
        biases = (None,) * 3 if m.in_proj_bias is None else m.in_proj_bias.split(e)
        q, k, v = (
            nn.functional.linear(t, w, bias)
            .reshape(t.shape[0], t.shape[1], heads, -1)
            .transpose(1, 2)
            for t, w, bias in zip(inputs, weights, biases)
        )
        n, keys = q.shape[2], k.shape[2]
        geometry = self.token_geometry(n) if n == keys else self.key_geometry(keys)
        fields, meta = factored_fields(
            q, k, v, None, scale=None, causal=False, how="nn.MultiheadAttention, kept as factors"
        )
        em = Emission(
            fields=fields, meta=meta, geometry=geometry, record_type=FactoredAttentionRecord
        )
        rows, imgs = list(range(n))[spots(n, 16)], slice(0, 2)

        @functools.cache  # both checks read the same rows: computed once
        def sampled() -> torch.Tensor:
            return attention_matrix(q[imgs], k[imgs], rows=rows)

        def product() -> tuple[torch.Tensor, torch.Tensor]:
            mixed = (sampled().to(v.dtype) @ v[imgs]).transpose(1, 2)
            return out[imgs][:, rows], m.out_proj(mixed.reshape(mixed.shape[0], -1, e))

        em.compare("out_proj(matrix @ values) == module's output", product)
        em.check("rows sum to 1", lambda: sums_to_one(sampled(), -1))
        return em


class TokenAttentionProbe(_TokenMixin, SelfAttentionProbe):
    """timm's ``Attention``: fused (``scaled_dot_product_attention``) or a plain softmax."""

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__(name, module, function="softmax")
        self.watch = frozenset({"softmax", "matmul", "sdpa"})

    def where(self) -> str:
        return "its scaled_dot_product_attention or softmax"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        calls = self.pieces.get("sdpa", [])
        if not calls:
            em = super().end(args, kwargs, output)
            if em.problem is None:
                a = em.fields["matrix"]
                em.geometry = self.token_geometry(a.shape[-2])
            return self.per_image(em)
        if len(calls) != 1:
            return self.missing()
        (cargs, ckw, out) = calls[0]
        q, k, v = (cargs[i] if len(cargs) > i else ckw.get(n) for i, n in enumerate("qkv"))
        mask = cargs[3] if len(cargs) > 3 else ckw.get("attn_mask")
        causal = bool(cargs[5] if len(cargs) > 5 else ckw.get("is_causal", False))
        dropout = float(cargs[4] if len(cargs) > 4 else ckw.get("dropout_p", 0.0))
        if ckw.get("enable_gqa") or dropout > 0:
            return Emission(
                problem=f"{self.name}: attention with dropout (training mode) or grouped "
                "query heads is not recorded; capture in eval mode"
            )
        scale = ckw.get("scale")
        n = q.shape[-2]
        rows = list(range(n))[spots(n, 16)]
        geometry = self.token_geometry(n)
        if self.factored:  # the kernel's factors; rows computed when asked
            fields, meta = factored_fields(
                q, k, v, mask, scale=scale, causal=causal, how="scaled_dot_product_attention"
            )
            em = Emission(
                fields=fields, meta=meta, geometry=geometry, record_type=FactoredAttentionRecord
            )

            def chosen() -> torch.Tensor:
                return attention_matrix(q, k, mask, causal, scale, rows=rows)
        else:
            a = attention_matrix(q, k, mask, causal, scale)
            em = Emission(
                fields={"matrix": a, "values": v},
                geometry=geometry,
                record_type=SelfAttentionRecord,
            )

            def chosen() -> torch.Tensor:
                return a[:, :, rows]

        sampled = functools.cache(chosen)  # both checks read the same rows: computed once

        em.compare(
            "matrix @ values == the fused kernel's output",
            lambda: (out[:, :, rows], (sampled().to(v.dtype) @ v)),
        )
        em.check("rows sum to 1", lambda: sums_to_one(sampled(), -1))
        return self.per_image(em)


def factored_fields(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float | None,
    causal: bool,
    how: str,
    images: int | None = None,
    heads: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fields and metadata of a :class:`~attnviz.records.FactoredAttentionRecord`: the
    kernel's q, k and values (lead... x N x d, as it received them), laid out ``images`` x
    ``heads`` (default: q's first two dimensions), its scale and causality, and its mask:
    as passed where it broadcasts against the record's images x heads x N x M (a mask
    shared by the batch, batch 1, is kept once: ``meta["shared_mask"]``), else expanded
    to it."""
    b, h = (q.shape[0], q.shape[1]) if images is None or heads is None else (images, heads)
    if k.shape[:-2] != q.shape[:-2]:
        k = k.expand(*q.shape[:-2], *k.shape[-2:])
    shape = (*q.shape[:-1], int(k.shape[-2]))

    def lay(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, h, *t.shape[-2:])

    fields = {"q": lay(q), "k": lay(k), "values": lay(v)}
    meta: dict[str, Any] = {"scale": scale, "causal": causal, "kernel": how, "kernel_shape": shape}
    if mask is not None:
        m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)) if mask.dim() < 4 else mask
        if len(shape) == 4 and shape[:2] == (b, h) and m.dim() == 4:
            fields["mask"], meta["shared_mask"] = m, m.shape[0] == 1
        else:
            fields["mask"] = mask.expand(shape).reshape(b, h, *shape[-2:])
            meta["shared_mask"] = False
    return fields, meta


#: ``softmax(q k^T * scale + mask)``: the matrix ``scaled_dot_product_attention`` applies
#: (its documented definition), in float32 at least, the query ``rows`` asked for (default
#: all): :func:`attnviz.maps.attention.attention_rows`, under the name the probes use
attention_matrix = attention_rows
