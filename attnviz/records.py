"""Typed records of what attention modules applied, and the recording that holds them.

A :class:`Record` is filled by :func:`attnviz.capture` (one per attention module, in the
order the modules ran); each kind has its own class, named for the question it answers:

=============== ===================== ==================================================
kind            record                the attention, as applied
=============== ===================== ==================================================
``channel``     :class:`ChannelRecord`     ``weights`` B x C: one weight per channel
``spatial``     :class:`SpatialRecord`     ``map`` B x H x W: one weight per position
``elementwise`` :class:`ElementwiseRecord` ``gate`` B x C x H x W: per channel and position
``axial``       :class:`AxialRecord`       ``height`` B x C x H and ``width`` B x C x W,
                                           applied as their product
``branch``      :class:`BranchRecord`      ``weights`` B x K x C: a choice among K paths
``context``     :class:`ContextRecord`     ``map`` B x H x W pooling weights, then a
                                           channel ``scale`` and/or additive ``shift``
``transform``   :class:`TransformRecord`   ``theta`` B x 2 x 3 and the sampled ``output``
``self``        :class:`SelfAttentionRecord` ``matrix`` B x heads x Q x K: where each
                                           query position looks
=============== ===================== ==================================================

Self-attention comes in three layouts with one interface (``matrix``, ``values``,
``query_map``, ``received``): dense (non-local, BoTNet), local windows
(:class:`LocalAttentionRecord`, HaloNet) and separable row/column attention
(:class:`BilinearAttentionRecord`, BAT).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._compat import renamed_kwargs
from .maps import upsample
from .maps.attention import Rows, attention_rows, matrix_bytes
from .maps.views import weighted_activation

__all__ = [
    "KINDS",
    "AxialRecord",
    "BilinearAttentionRecord",
    "BranchRecord",
    "ChannelRecord",
    "Check",
    "ContextRecord",
    "ElementwiseRecord",
    "FactoredAttentionRecord",
    "LocalAttentionRecord",
    "Record",
    "Recording",
    "SelfAttentionRecord",
    "SpatialRecord",
    "TransformRecord",
    "TwoStageTransformRecord",
    "WindowAttentionRecord",
]

#: the largest whole matrix a factored record computes when asked (bytes; set to change)
MATRIX_LIMIT = 2 * 2**30

#: the kinds of attention a record can hold
KINDS = ("channel", "spatial", "elementwise", "axial", "branch", "context", "transform", "self")


class Record:
    """What one attention module applied, over every forward pass of a capture.

    Attributes:
        name: the module's qualified name in the model.
        module_type: the class name of the module.
        kind: one of :data:`KINDS`.
        meta: what the module states about its attention (grids, heads, windows).
    """

    kind: ClassVar[str] = ""
    _main: ClassVar[str] = ""

    def __init__(self, name: str, module_type: str) -> None:
        self.name = name
        self.module_type = module_type
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._cache: dict[str, torch.Tensor] = {}
        self.meta: dict[str, Any] = {}

    def _append(self, field: str, tensor: torch.Tensor) -> None:
        self._parts.setdefault(field, []).append(tensor)
        self._cache.clear()

    def _has(self, field: str) -> bool:
        return bool(self._parts.get(field))

    def _get(self, field: str) -> torch.Tensor:
        if field not in self._cache:
            parts = self._parts.get(field)
            if not parts:
                raise AttributeError(f"{self.name}: no {field!r} was recorded")
            shapes = {tuple(p.shape[1:]) for p in parts}
            if len(shapes) > 1:
                raise ValueError(
                    f"{self.name}: forward passes inside one capture gave {field} of different "
                    f"shapes {sorted(shapes)}; use one capture per input size"
                )
            self._cache[field] = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._cache[field]

    @property
    def data(self) -> torch.Tensor:
        """The attention tensor itself (weights, map, gate, theta or matrix)."""
        return self._get(self._main)

    @property
    def features(self) -> torch.Tensor:
        """What the attention was applied to, recorded only by ``capture(..., features=True)``.

        For channel, spatial, elementwise and axial attention the module's input
        (B x C x H x W): the output is ``features`` times the attention. For branch
        attention the K paths (B x K x C x H x W); for context attention and self-attention
        the module's input.
        """
        if "features" not in self._parts:
            raise AttributeError(
                f"{self.name}: no features recorded; use capture(..., features=True)"
            )
        return self._get("features")

    @property
    def nbytes(self) -> int:
        """Bytes the record holds (every field of every call)."""
        return sum(t.numel() * t.element_size() for ts in self._parts.values() for t in ts)

    @property
    def batch_size(self) -> int:
        """Images recorded: the sum of the batch sizes of every recorded call."""
        return sum(p.shape[0] for p in self._parts.get(self._main, []))

    @property
    def calls(self) -> int:
        """How many times the module ran (and was recorded) during the capture.

        Compare with ``Recording.forwards``: a module called twice per forward pass records
        twice the rows of the images it saw; :meth:`per_call` splits them.
        """
        return len(self._parts.get(self._main, []))

    def per_call(self, field: str | None = None) -> list[torch.Tensor]:
        """One tensor per recorded call (of ``field``, default the attention itself)."""
        field = field or self._main
        if not self._parts.get(field):
            raise AttributeError(f"{self.name}: no {field!r} was recorded")
        return list(self._parts[field])

    def view(self) -> tuple[str, torch.Tensor]:
        """One picture per image of this attention on its feature grid: (label, B x h x w).

        Each kind says what its picture is (see the subclasses); this is the one place
        :func:`attnviz.maps.attention_view` and the explorers ask.

        Raises:
            ValueError: a kind (or a record) with no picture on the image grid.
        """
        raise ValueError(f"{self.name}: {self.kind} attention has no picture on the image grid")

    def __repr__(self) -> str:
        parts = self._parts.get(self._main) or []
        if parts:
            shape = f"shape=({self.batch_size}, {', '.join(map(str, parts[0].shape[1:]))})"
            shape += f", calls={len(parts)}"
        else:
            shape = "nothing recorded"
        return f"{type(self).__name__}(name={self.name!r}, type={self.module_type}, {shape})"


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


class SelfAttentionRecord(Record):
    """Self-attention: ``matrix`` B x heads x Q x K, one row per query, summing to one.

    Row q of ``matrix[b, h]`` is where query position q looks in head h: one weight per key
    position. Positions are row-major on their grids, ``query_size`` (Hq, Wq) and
    ``key_size`` (Hk, Wk). ``values`` (B x heads x K x D) is what the matrix averages:
    ``matrix @ values`` is what the module computed from them.

    Vision transformers: ``matrix`` is over all N tokens, the :attr:`prefix` tokens first
    (named: ``"cls"``, ``"dist"``, ``"reg1"``, ...), then the patches row-major on the
    patch grid. The grid methods (``head_matrix``, ``key_row``, ``query_map``,
    ``received``) use the patch-to-patch part; :meth:`token_attention` gives where a
    named token looks.
    """

    kind = "self"
    _main = "matrix"

    @property
    def matrix(self) -> torch.Tensor:
        return self._get("matrix")

    @property
    def values(self) -> torch.Tensor:
        """What the matrix averages (B x heads x K x D)."""
        return self._get("values")

    @property
    def heads(self) -> int:
        return int(self._parts[self._main][0].shape[1]) if self._has(self._main) else 0

    @property
    def query_size(self) -> tuple[int, int]:
        """(Hq, Wq): the grid of the queries, the rows of ``matrix``."""
        return self._grid("query_size", 2)

    @property
    def key_size(self) -> tuple[int, int]:
        """(Hk, Wk): the grid of the keys, the columns of ``matrix``."""
        return self._grid("key_size", 3)

    @property
    def prefix(self) -> tuple[str, ...]:
        """Names of the tokens before the patches (vision transformers), else ``()``."""
        return tuple(self.meta.get("prefix", ()))

    @property
    def tokens(self) -> int:
        """Rows of ``matrix``: every token (prefix and patches) or position."""
        return int(self._parts[self._main][0].shape[2]) if self._has(self._main) else 0

    @property
    def keys(self) -> int:
        """Columns of ``matrix``: every key token (prefix and patches) or position."""
        if self._main == "matrix":
            return int(self._parts["matrix"][0].shape[-1]) if self._has("matrix") else 0
        return int(self.matrix.shape[-1])

    def _positions(self, dim: int) -> int:
        return int(self.matrix.shape[dim]) - len(self.prefix)

    def _grid(self, key: str, dim: int) -> tuple[int, int]:
        if self.meta.get("tokens_unplaced"):
            raise ValueError(
                f"{self.name}: its matrix ({self.meta.get('kernel', 'attention')}, shape "
                f"{self.meta.get('kernel_shape')}) is recorded exactly, but attnviz knows no "
                f"layout for {self.module_type} that places its tokens on the image; the "
                "matrix itself is in record.matrix (images x (groups x heads) x Q x K)"
            )
        if self.meta.get("tokens_unnamed"):
            raise ValueError(
                f"{self.name}: {self._positions(dim)} tokens that are no square grid, and "
                "attnviz cannot name the model's leading tokens; set model.token_layout = "
                "attnviz.TokenLayout(prefix=('cls',), patch=(16, 16), source='mine')"
            )
        n = self._positions(dim)
        size = self.meta.get(key)
        if n == 0:
            raise ValueError(
                f"{self.name}: its {'queries' if dim == 2 else 'keys'} are named tokens only "
                f"({', '.join(self.prefix)}; class attention), with no grid: use "
                "token_attention()"
            )
        if size is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"{self.name}: {n} positions are no square grid and the module did not "
                    f"state its {key}; set self.{key} = (H, W) in its forward"
                )
            size = (side, side)
        if size[0] * size[1] != n:
            raise ValueError(f"{self.name}: {key} {size} does not fit {n} positions")
        return tuple(size)

    def head_matrix(self, head: int | None = None) -> torch.Tensor:
        """B x Q x K float32: one head's matrix, or the mean over heads (``head=None``)."""
        m = self.matrix
        p = len(self.prefix)
        if p:
            m = m[:, :, p:, p:]
        return self._heads(m, head)

    def _heads(self, t: torch.Tensor, head: int | None) -> torch.Tensor:
        """``t`` (B x heads x ...) in float32: one head's, or the mean over heads (None)."""
        if head is None:
            return t.float().mean(dim=1)
        self._check_head(head)
        return t[:, head].float()

    def _check_head(self, head: Any) -> None:
        n = self.heads
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n:
            raise ValueError(f"head must be an int in [0, {n}) or None, got {head!r}")

    def token_attention(self, token: str = "cls", *, head: int | None = None) -> torch.Tensor:
        """Where a named token looks, over the patches: B x Hk x Wk float32.

        The token's row of the matrix restricted to the patch keys (it does not sum to
        one: the rest went to the prefix tokens), for one head or the mean over heads.
        The class token's attention of the last block is the picture of the DINO paper
        (Caron et al., 2021).

        Raises:
            ValueError: a token the model does not have (the message lists its tokens).
        """
        if token not in self.prefix:
            raise ValueError(
                f"{self.name}: no token {token!r}; its leading tokens are {list(self.prefix)}"
                + ("" if self.prefix else " (none: every row is a patch or position)")
            )
        t, p = self.prefix.index(token), len(self.prefix)
        m = self.matrix[:, :, t, p:]
        return self._heads(m, head).reshape(-1, *self.key_size)

    def query_cell(self, query_xy: Sequence[float], image_size: Sequence[int]) -> tuple[int, int]:
        """The query cell (i, j) under image pixel (x, y): (floor(y Hq / H), floor(x Wq / W)).

        Raises:
            ValueError: a bad ``image_size``, or (x, y) outside the image.
        """
        h, w = _image_size(image_size)
        x, y = (float(v) for v in query_xy)
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"query_xy must lie in the {w} x {h} image, got ({x:g}, {y:g})")
        hq, wq = self.query_size
        return min(math.floor(y * hq / h), hq - 1), min(math.floor(x * wq / w), wq - 1)

    def key_row(
        self, query_xy: Sequence[float], image_size: Sequence[int], *, head: int | None = None
    ) -> torch.Tensor:
        """Where the query under image pixel (x, y) looks, on the key grid: B x Hk x Wk."""
        i, j = self.query_cell(query_xy, image_size)
        row = self.head_matrix(head)[:, i * self.query_size[1] + j]
        return row.reshape(-1, *self.key_size)

    def query_map(
        self, query_xy: Sequence[float], image_size: Sequence[int], *, head: int | None = None
    ) -> torch.Tensor:
        """Where the query under image pixel (x, y) looks, as a map over the image.

        The row of the query cell (:meth:`query_cell`), laid out on the key grid and
        upsampled stride-aligned (:func:`attnviz.maps.upsample`) to ``image_size``.

        Args:
            query_xy: (x, y) in pixels of the image, 0 <= x < W, 0 <= y < H.
            image_size: (H, W) of the image.
            head: one head's attention, or ``None`` for the mean over heads.

        Returns:
            (B, H, W) float32 tensor.
        """
        row = self.key_row(query_xy, image_size, head=head)
        return upsample(row, _image_size(image_size))

    def received(self, *, head: int | None = None) -> torch.Tensor:
        """Attention each key receives, averaged over all queries: (B, Hk, Wk) float32."""
        self.query_size  # noqa: B018 (raises for class attention: no query on the grid)
        return self.head_matrix(head).mean(dim=1).reshape(-1, *self.key_size)

    def query_rows(self, rows: Rows = None) -> torch.Tensor:
        """Rows of the matrix (every token, prefix included): B x heads x R x K float32."""
        m = self.matrix
        return m[:, :, slice(None) if rows is None else rows].float()

    def key_column(self, key: int) -> torch.Tensor:
        """Column ``key`` of the matrix: how much every query takes from that key (every
        token, prefix included), B x heads x Q float32."""
        return self.matrix[..., key].float()

    def top_keys(self, rows: Rows, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` largest weights of the chosen query rows and their key indices (every
        token, prefix included): (values, indices), each B x heads x R x k."""
        return self.query_rows(rows).topk(k, dim=-1)

    def view(self) -> tuple[str, torch.Tensor]:
        """Where the class token looks, averaged over heads (a vision transformer: the DINO
        paper's picture), else the attention each key position receives, averaged over
        queries and heads."""
        if "cls" in self.prefix and self.key_size:
            return "class-token attention (mean over heads)", self.token_attention("cls")
        return "attention received (mean over queries)", self.received()


class FactoredAttentionRecord(SelfAttentionRecord):
    """Self-attention kept as the factors its kernel formed the matrix from.

    A fused ``scaled_dot_product_attention`` applies ``softmax(q k^T * scale + mask)``;
    this record keeps ``q`` (B x heads x N x d) and ``k`` (B x heads x M x d) as the
    kernel received them (RoPE already applied), ``values``, the additive ``mask`` if
    there was one (``record.mask``, as passed: a relative-position bias is shared by the
    batch) and the scale, and computes exactly the rows it is asked for
    (:meth:`query_rows`): O(N d) numbers held instead of O(N M), so capture works at
    thousands of tokens. The grid methods (:meth:`token_attention`, :meth:`key_row`,
    :meth:`query_map`, :meth:`received`) compute rows in chunks and never hold the
    matrix; ``matrix`` computes all of it on request, refusing beyond
    :data:`MATRIX_LIMIT` bytes with the size and the alternatives.
    """

    _main = "q"
    #: query rows per chunk when streaming (received, rollout)
    chunk = 256

    @property
    def q(self) -> torch.Tensor:
        return self._get("q")

    @property
    def k(self) -> torch.Tensor:
        return self._get("k")

    @property
    def mask(self) -> torch.Tensor | None:
        """The kernel's additive (or boolean) mask, broadcastable to B x heads x N x M; a
        mask shared by the batch (``meta["shared_mask"]``) is kept once."""
        if not self._has("mask"):
            return None
        return self._parts["mask"][0] if self.meta.get("shared_mask") else self._get("mask")

    @property
    def data(self) -> torch.Tensor:
        return self.matrix

    @property
    def tokens(self) -> int:
        return int(self._parts["q"][0].shape[2]) if self._has("q") else 0

    @property
    def keys(self) -> int:
        return int(self._parts["k"][0].shape[2]) if self._has("k") else 0

    def _positions(self, dim: int) -> int:
        return (self.tokens if dim == 2 else self.keys) - len(self.prefix)

    def query_rows(self, rows: Rows = None) -> torch.Tensor:
        """Rows of the matrix, computed from q and k: B x heads x R x K float32."""
        m = self.meta
        return attention_rows(
            self.q, self.k, self.mask, m.get("causal", False), m.get("scale"), rows
        )

    @property
    def matrix(self) -> torch.Tensor:
        """The whole matrix (B x heads x N x M), computed now; refused beyond
        :data:`MATRIX_LIMIT` bytes."""
        if "matrix" not in self._cache:
            shape = (self.batch_size, self.heads, self.tokens, self.keys)
            size = matrix_bytes(shape)
            if size > MATRIX_LIMIT:
                raise MemoryError(
                    f"{self.name}: the whole matrix {shape} would take {size / 2**20:,.0f} MiB "
                    f"(attnviz.records.MATRIX_LIMIT is {MATRIX_LIMIT / 2**20:,.0f} MiB): ask for "
                    "rows instead (record.query_rows(...), token_attention, key_row, received, "
                    "maps.rollout_map stream them), or raise MATRIX_LIMIT"
                )
            self._cache["matrix"] = self.query_rows()
        return self._cache["matrix"]

    def key_column(self, key: int) -> torch.Tensor:
        """Column ``key``, streamed in chunks of :attr:`chunk` rows: B x heads x N."""
        parts = [
            self.query_rows(slice(s, min(s + self.chunk, self.tokens)))[..., key]
            for s in range(0, self.tokens, self.chunk)
        ]
        return torch.cat(parts, dim=-1)

    def token_attention(self, token: str = "cls", *, head: int | None = None) -> torch.Tensor:
        if token not in self.prefix:
            super().token_attention(token)  # raises, listing the tokens
        t, p = self.prefix.index(token), len(self.prefix)
        row = self._heads(self.query_rows([t])[:, :, 0, p:], head)
        return row.reshape(-1, *self.key_size)

    def key_row(
        self, query_xy: Sequence[float], image_size: Sequence[int], *, head: int | None = None
    ) -> torch.Tensor:
        i, j = self.query_cell(query_xy, image_size)
        p = len(self.prefix)
        row = self._heads(self.query_rows([p + i * self.query_size[1] + j])[:, :, 0, p:], head)
        return row.reshape(-1, *self.key_size)

    def received(self, *, head: int | None = None) -> torch.Tensor:
        """Attention each key receives, averaged over all queries, streamed in chunks of
        :attr:`chunk` rows: B x Hk x Wk."""
        self.query_size  # noqa: B018 (raises for class attention: no query on the grid)
        p, n = len(self.prefix), self.tokens
        total = None
        for start in range(p, n, self.chunk):
            part = self.query_rows(slice(start, min(start + self.chunk, n)))[..., p:].sum(2)
            total = part if total is None else total + part
        assert total is not None
        return self._heads(total / (n - p), head).reshape(-1, *self.key_size)

    def __repr__(self) -> str:
        if not self._has("q"):
            return super().__repr__()
        shape = (self.batch_size, self.heads, self.tokens, self.keys)
        return (
            f"{type(self).__name__}(name={self.name!r}, type={self.module_type}, "
            f"factors of a {shape} matrix, calls={self.calls})"
        )


class LocalAttentionRecord(SelfAttentionRecord):
    """Self-attention within local windows (HaloNet): each block of queries sees a window.

    The module splits the query grid into ``blocks`` (nh x nw) of ``block`` x ``block``
    queries; each block attends to the keys of a ``window`` x ``window`` neighbourhood (the
    block and a ``halo`` around it, zero-padded at the border, where padded keys still take
    part in the softmax). ``windows`` (B x heads x nh*nw x block^2 x window^2) is the
    matrix as the module computed and applied it. ``matrix`` lays it out over the whole key
    grid (B x heads x Q x H*W), exact values, zero outside each window; rows lose the mass
    that fell on padding, which :meth:`padding_mass` returns.
    """

    _main = "windows"

    @property
    def windows(self) -> torch.Tensor:
        return self._get("windows")

    @property
    def matrix(self) -> torch.Tensor:
        if "matrix" not in self._cache:
            self._cache["matrix"] = self._dense()[0]
        return self._cache["matrix"]

    def padding_mass(self) -> torch.Tensor:
        """B x heads x Q: the weight each query put on padded keys outside the image."""
        return self._dense()[1]

    def window(self, cell: Sequence[int]) -> tuple[int, int, int, int]:
        """The keys the query cell (i, j) can see, on the key grid: (row0, col0, row1, col1),
        end-exclusive, clipped to the grid (its block and the halo around it)."""
        m = self.meta
        (hk, wk), (hq, wq), (nh, nw) = m["key_size"], m["query_size"], m["blocks"]
        halo, win = m["halo"], m["window"]
        i, j = (int(v) for v in cell)
        if not (0 <= i < hq and 0 <= j < wq):
            raise ValueError(f"cell must lie in the {hq} x {wq} query grid, got ({i}, {j})")
        r0 = (i // (hq // nh)) * (hk // nh) - halo
        c0 = (j // (wq // nw)) * (wk // nw) - halo
        return max(r0, 0), max(c0, 0), min(r0 + win, hk), min(c0 + win, wk)

    def _positions(self, dim: int) -> int:
        m = self.meta
        if dim == 2:
            return m["query_size"][0] * m["query_size"][1]
        return m["key_size"][0] * m["key_size"][1]

    def _dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows
        m = self.meta
        b, h, _, q, _ = w.shape
        halo, win = m["halo"], m["window"]
        (hk, wk), (hq, wq), (nh, nw) = m["key_size"], m["query_size"], m["blocks"]
        qb = math.isqrt(q)  # queries per block side
        kv_block = hk // nh  # key pixels per block side (the block before query striding)
        dense = w.new_zeros(b, h, hq, wq, hk + 2 * halo, wk + 2 * halo)
        wins = w.reshape(b, h, nh, nw, qb, qb, win, win)
        for bi in range(nh):
            for bj in range(nw):
                r0, c0 = bi * kv_block, bj * kv_block
                dense[
                    :,
                    :,
                    bi * qb : (bi + 1) * qb,
                    bj * qb : (bj + 1) * qb,
                    r0 : r0 + win,
                    c0 : c0 + win,
                ] = wins[:, :, bi, bj]
        inside = dense[..., halo : halo + hk, halo : halo + wk]
        lost = dense.sum((-1, -2)) - inside.sum((-1, -2))
        return inside.reshape(b, h, hq * wq, hk * wk), lost.reshape(b, h, hq * wq)


class WindowAttentionRecord(SelfAttentionRecord):
    """Self-attention in groups of tokens placed anywhere on the map (Swin's shifted
    windows, MaxViT's blocks and dilated grids).

    ``windows`` (B x G x heads x Q x K) is the matrix as the module computed and applied
    it, one Q x K matrix per group (window) and head. ``meta["query_pos"]`` and
    ``meta["key_pos"]`` (G x Q, G x K) give each token's flat index on the query and key
    grids (row-major on ``query_size`` / ``key_size``), -1 for a token with no place on the
    map (zero padding: it takes part as a key, and its weight is :meth:`padding_mass`).
    ``matrix`` lays the groups out over the whole map (B x heads x HqWq x HkWk, zero
    outside each query's group; memory grows with the square of the map, so rows
    (:meth:`key_row`) and :meth:`received` are computed from the groups directly).
    """

    _main = "windows"

    @property
    def windows(self) -> torch.Tensor:
        return self._get("windows")

    @property
    def heads(self) -> int:
        return int(self._parts["windows"][0].shape[2]) if self._has("windows") else 0

    @property
    def tokens(self) -> int:
        return self._cells("query_size")

    @property
    def keys(self) -> int:
        return self._cells("key_size")

    def _cells(self, key: str) -> int:
        h, w = self.meta[key]
        return int(h * w)

    def _positions(self, dim: int) -> int:
        return self._cells("query_size" if dim == 2 else "key_size")

    def _scatter(self, rows: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """Lay rows (B x G x heads x R x K, one set of R rows per group, its keys at
        ``kpos``, G x K) on the key grid, summed over the groups: B x heads x R x HkWk."""
        b, g, h, r, k = rows.shape
        kpos = kpos.to(rows.device)
        valid = kpos >= 0
        out = rows.new_zeros(b, h, r, self._cells("key_size"))
        src = rows.permute(0, 2, 3, 1, 4)[..., valid]  # B x heads x R x (valid keys)
        idx = kpos.expand(g, k)[valid]
        return out.index_add_(-1, idx, src) if g else out

    @property
    def matrix(self) -> torch.Tensor:
        if "matrix" not in self._cache:
            w = self.windows.float()
            b, g, h, q, k = w.shape
            qpos = self.meta["query_pos"].to(w.device)
            kpos = self.meta["key_pos"].to(w.device)
            nq, nk = self._cells("query_size"), self._cells("key_size")
            dense = w.new_zeros(b, h, nq, nk)
            keep = (qpos[:, :, None] >= 0) & (kpos[:, None, :] >= 0)  # G x Q x K
            rows = qpos[:, :, None].expand(g, q, k)[keep]
            cols = kpos[:, None, :].expand(g, q, k)[keep]
            vals = w.permute(0, 2, 1, 3, 4)[:, :, keep]  # B x heads x (kept)
            flat = dense.view(b, h, nq * nk)
            flat.index_add_(-1, rows * nk + cols, vals)
            self._cache["matrix"] = dense
        return self._cache["matrix"]

    def padding_mass(self) -> torch.Tensor:
        """B x heads x (HqWq): the weight each query cell put on padded keys (no place)."""
        w = self.windows.float()
        kpos = self.meta["key_pos"].to(w.device)
        lost = (w * (kpos < 0)[None, :, None, None, :]).sum(-1)  # B x G x heads x Q
        return self._by_query(lost)

    def _by_query(self, per_token: torch.Tensor) -> torch.Tensor:
        """B x G x heads x Q values laid on the query grid: B x heads x HqWq."""
        b, _, h, _ = per_token.shape
        qpos = self.meta["query_pos"].to(per_token.device)
        keep = qpos >= 0
        out = per_token.new_zeros(b, h, self._cells("query_size"))
        return out.index_add_(-1, qpos[keep], per_token.permute(0, 2, 1, 3)[:, :, keep])

    def _query(self, cell: int) -> tuple[int, int]:
        qpos = self.meta["query_pos"]
        hit = (qpos == cell).nonzero()
        if not len(hit):
            raise ValueError(f"{self.name}: query cell {cell} is in no group")
        return int(hit[0, 0]), int(hit[0, 1])

    def key_row(
        self, query_xy: Sequence[float], image_size: Sequence[int], *, head: int | None = None
    ) -> torch.Tensor:
        """Where the query under image pixel (x, y) looks, on the key grid: B x Hk x Wk,
        from its own group's row (zero outside the keys it saw)."""
        i, j = self.query_cell(query_xy, image_size)
        g, t = self._query(i * self.query_size[1] + j)
        rows = self.windows[:, g : g + 1, :, t : t + 1].float()
        laid = self._scatter(rows, self.meta["key_pos"][g : g + 1])[:, :, 0]
        return self._heads(laid, head).reshape(-1, *self.key_size)

    def received(self, *, head: int | None = None) -> torch.Tensor:
        """Attention each key cell receives, averaged over all query cells: B x Hk x Wk."""
        w = self.windows.float()
        qpos = self.meta["query_pos"].to(w.device)
        summed = (w * (qpos >= 0)[None, :, None, :, None]).sum(3, keepdim=True)
        got = self._scatter(summed, self.meta["key_pos"])[:, :, 0] / self._cells("query_size")
        return self._heads(got, head).reshape(-1, *self.key_size)


class BilinearAttentionRecord(SelfAttentionRecord):
    """Bilinear (separable) attention (BAT): rows mix along H, columns along W.

    The module computes ``y = P x Q`` per channel group: ``rows`` P (B x G x H x H, each row
    sums to one) mixes positions along the height, ``cols`` Q (B x G x W x W, each column
    sums to one) along the width. Output (i, j) therefore takes input (k, l) with weight
    ``P[i, k] * Q[l, j]``; ``matrix`` (B x G x HW x HW) holds these products, one "head"
    per channel group, so every row sums to one.
    """

    _main = "rows"

    @property
    def rows(self) -> torch.Tensor:
        return self._get("rows")

    @property
    def cols(self) -> torch.Tensor:
        return self._get("cols")

    @property
    def matrix(self) -> torch.Tensor:
        if "matrix" not in self._cache:
            p, q = self.rows, self.cols
            b, g, h, _ = p.shape
            w = q.shape[-1]
            # M[(i, j), (k, l)] = P[i, k] * Q[l, j]
            dense = p[:, :, :, None, :, None] * q.transpose(-1, -2)[:, :, None, :, None, :]
            self._cache["matrix"] = dense.reshape(b, g, h * w, h * w)
        return self._cache["matrix"]

    def _positions(self, dim: int) -> int:
        return int(self.rows.shape[-1] * self.cols.shape[-1])

    def key_row(
        self, query_xy: Sequence[float], image_size: Sequence[int], *, head: int | None = None
    ) -> torch.Tensor:
        """Where the query under (x, y) looks: ``P[i, :]`` outer ``Q[:, j]``, B x H x W.

        Computed from the two factors, without the dense matrix.
        """
        i, j = self.query_cell(query_xy, image_size)
        outer = self.rows[:, :, i, :, None].float() * self.cols[:, :, None, :, j].float()
        return self._heads(outer, head)

    def received(self, *, head: int | None = None) -> torch.Tensor:
        """Mean attention each key receives: (mean_i P[i, k]) (mean_j Q[l, j]), B x H x W."""
        outer = self.rows.float().mean(2)[..., :, None] * self.cols.float().mean(-1)[..., None, :]
        return self._heads(outer, head)


def _image_size(size: Sequence[int]) -> tuple[int, int]:
    out = tuple(int(s) for s in size)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"image_size must be (H, W) of positive ints, got {size!r}")
    return out


@dataclass
class Check:
    """The faithfulness check of one record: how far the module's output was from its
    input combined with the recorded attention, over every recorded call.

    Attributes:
        name: the record's name.
        what: the relation checked, e.g. ``"output == input * weights"``.
        error: the largest relative error seen (max |actual - expected| / max |expected|
            over the checked entries), or ``None`` before the capture ended.
        tolerance: the error above which the check fails (set by the dtype).
        calls: how many calls were checked.
    """

    name: str
    what: str
    error: float | None
    tolerance: float
    calls: int

    @property
    def ok(self) -> bool:
        return self.error is not None and self.error <= self.tolerance


class Recording(Mapping[str, Record]):
    """The records of one capture, keyed by qualified module name, in forward order.

    Attributes:
        checks: every faithfulness check run, as :class:`Check` objects (filled when the
            capture ends).
        refused: modules recognised but not recorded, with the reason.
        unrecorded: modules that ran an attention kernel (scaled-dot-product attention, or
            a softmax result multiplied with values) that could not be recorded, with the
            reason; the capture also names them in a :class:`~attnviz.CaptureWarning`.
        forwards: forward passes of the captured model recorded (calls of its root module).
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self.checks: list[Check] = []
        self.refused: dict[str, str] = {}
        self.unrecorded: dict[str, str] = {}
        self.forwards = 0

    def __getitem__(self, name: str) -> Record:
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(
                f"no record named {name!r}; recorded: {list(self._records) or 'nothing yet'}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    @property
    def nbytes(self) -> int:
        """Bytes every record holds together (what ``attention=`` and ``dtype=`` change)."""
        return sum(r.nbytes for r in self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    @renamed_kwargs(name="blocks")
    def select(
        self, kind: str | None = None, blocks: str | Sequence[str] | None = None
    ) -> list[Record]:
        """Records of one kind and/or whose name matches a glob pattern (or one of several),
        in forward order.

        Raises:
            ValueError: unknown kind, or nothing matches (the message lists the names).
        """
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        patterns = [blocks] if isinstance(blocks, str) else blocks
        out = [
            r
            for n, r in self._records.items()
            if (kind is None or r.kind == kind)
            and (patterns is None or any(fnmatch.fnmatchcase(n, p) for p in patterns))
        ]
        if not out:
            raise ValueError(
                f"no record matches kind={kind!r}, blocks={blocks!r}; recorded: "
                f"{[(n, r.kind) for n, r in self._records.items()]}"
            )
        return out

    def __repr__(self) -> str:
        lines = [f"  {r!r}" for r in self._records.values()]
        lines += [f"  refused {n}: {why}" for n, why in self.refused.items()]
        lines += [f"  NOT RECORDED {n}: {why}" for n, why in self.unrecorded.items()]
        return "Recording(\n" + "\n".join(lines) + "\n)" if lines else "Recording()"
