"""Self-attention records, one interface (``matrix``, ``values``, ``query_map``,
``received``) in five layouts: dense (:class:`SelfAttentionRecord`: non-local, BoTNet,
vision transformers), kept as the fused kernel's factors (:class:`FactoredAttentionRecord`),
local windows (:class:`LocalAttentionRecord`: HaloNet), groups of tokens placed anywhere on
the map (:class:`WindowAttentionRecord`: Swin, MaxViT) and separable row/column attention
(:class:`BilinearAttentionRecord`: BAT). Where each record's tokens lie on the image is its
``geometry`` (:class:`~attnviz.records.geometry.Geometry`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..maps import upsample
from ..maps.attention import Rows, attention_rows, matrix_bytes
from .base import Record
from .geometry import LEGACY_KEYS, Geometry, GeometryMeta, warn_legacy, with_legacy

__all__ = [
    "BilinearAttentionRecord",
    "FactoredAttentionRecord",
    "LocalAttentionRecord",
    "SelfAttentionRecord",
    "WindowAttentionRecord",
]


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

    Attributes:
        geometry: where the tokens lie on the image (:class:`~attnviz.records.Geometry`:
            grids, named tokens, places of windowed tokens, or why they are not placed),
            set by the capture from the module's layout.
        meta: facts that are no geometry (the kernel that was read and its shape, a
            factored kernel's scale, ...).
    """

    kind = "self"
    _main = "matrix"

    def __init__(self, name: str, module_type: str) -> None:
        super().__init__(name, module_type)
        self.geometry = Geometry()
        self.meta: dict[str, Any] = GeometryMeta(self)

    def _describe(self, meta: Mapping[str, Any], geometry: Geometry | None = None) -> None:
        old = {k: v for k, v in meta.items() if k in LEGACY_KEYS}
        if old:  # a probe written before Geometry: its keys are folded in
            warn_legacy(f"{self.name} (its probe's Emission.meta)", old, 2)
            geometry = with_legacy(geometry if geometry is not None else self.geometry, old)
        if geometry is not None:
            self.geometry = geometry
        for k, v in meta.items():
            if k not in old:
                dict.__setitem__(self.meta, k, v)

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
        return self._grid(2)

    @property
    def key_size(self) -> tuple[int, int]:
        """(Hk, Wk): the grid of the keys, the columns of ``matrix``."""
        return self._grid(3)

    @property
    def prefix(self) -> tuple[str, ...]:
        """Names of the tokens before the patches (vision transformers), else ``()``."""
        return self.geometry.prefix

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

    def _grid(self, dim: int) -> tuple[int, int]:
        """The query (``dim`` 2, the matrix's rows) or key (3, its columns) grid."""
        g = self.geometry
        if g.unplaced is not None:
            raise ValueError(
                f"{self.name}: its matrix ({self.meta.get('kernel', 'attention')}, shape "
                f"{self.meta.get('kernel_shape')}) is recorded exactly, but {g.unplaced}; the "
                "matrix itself is in record.matrix (images x (groups x heads) x Q x K)"
            )
        if g.unnamed:
            raise ValueError(
                f"{self.name}: {self._positions(dim)} tokens that are no square grid, and "
                "attnviz cannot name the model's leading tokens; set model.token_layout = "
                "attnviz.TokenLayout(prefix=('cls',), patch=(16, 16), source='mine')"
            )
        n = self._positions(dim)
        size, key = (g.query_size, "query_size") if dim == 2 else (g.key_size, "key_size")
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
        return size

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
        from . import MATRIX_LIMIT  # the package's, read when asked: users set it there

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
        (hq, wq), (hk, wk) = self._grids()
        (nh, nw), halo, win = m["blocks"], m["halo"], m["window"]
        i, j = (int(v) for v in cell)
        if not (0 <= i < hq and 0 <= j < wq):
            raise ValueError(f"cell must lie in the {hq} x {wq} query grid, got ({i}, {j})")
        r0 = (i // (hq // nh)) * (hk // nh) - halo
        c0 = (j // (wq // nw)) * (wk // nw) - halo
        return max(r0, 0), max(c0, 0), min(r0 + win, hk), min(c0 + win, wk)

    def _grids(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(Hq, Wq), (Hk, Wk) as the probe stated them."""
        g = self.geometry
        if g.query_size is None or g.key_size is None:
            raise ValueError(f"{self.name}: its query and key grids were not recorded")
        return g.query_size, g.key_size

    def _positions(self, dim: int) -> int:
        h, w = self._grids()[0 if dim == 2 else 1]
        return h * w

    def _dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows
        m = self.meta
        b, h, _, q, _ = w.shape
        halo, win = m["halo"], m["window"]
        (hq, wq), (hk, wk) = self._grids()
        nh, nw = m["blocks"]
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
    it, one Q x K matrix per group (window) and head. ``geometry.query_pos`` and
    ``geometry.key_pos`` (G x Q, G x K) give each token's flat index on the query and key
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
        """Cells of the query grid (HqWq)."""
        return self._positions(2)

    @property
    def keys(self) -> int:
        """Cells of the key grid (HkWk)."""
        return self._positions(3)

    def _positions(self, dim: int) -> int:
        g = self.geometry
        size = g.query_size if dim == 2 else g.key_size
        if size is None:
            what = "query_size" if dim == 2 else "key_size"
            raise ValueError(f"{self.name}: its {what} was not recorded")
        return size[0] * size[1]

    @property
    def _qpos(self) -> torch.Tensor:
        """G x Q: where each group's queries lie (``geometry.query_pos``)."""
        if self.geometry.query_pos is None:
            raise ValueError(f"{self.name}: the places of its queries were not recorded")
        return self.geometry.query_pos

    @property
    def _kpos(self) -> torch.Tensor:
        """G x K: where each group's keys lie (``geometry.key_pos``)."""
        if self.geometry.key_pos is None:
            raise ValueError(f"{self.name}: the places of its keys were not recorded")
        return self.geometry.key_pos

    def _scatter(self, rows: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """Lay rows (B x G x heads x R x K, one set of R rows per group, its keys at
        ``kpos``, G x K) on the key grid, summed over the groups: B x heads x R x HkWk."""
        b, g, h, r, k = rows.shape
        kpos = kpos.to(rows.device)
        valid = kpos >= 0
        out = rows.new_zeros(b, h, r, self.keys)
        src = rows.permute(0, 2, 3, 1, 4)[..., valid]  # B x heads x R x (valid keys)
        idx = kpos.expand(g, k)[valid]
        return out.index_add_(-1, idx, src) if g else out

    @property
    def matrix(self) -> torch.Tensor:
        if "matrix" not in self._cache:
            w = self.windows.float()
            b, g, h, q, k = w.shape
            qpos = self._qpos.to(w.device)
            kpos = self._kpos.to(w.device)
            nq, nk = self.tokens, self.keys
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
        kpos = self._kpos.to(w.device)
        lost = (w * (kpos < 0)[None, :, None, None, :]).sum(-1)  # B x G x heads x Q
        return self._by_query(lost)

    def _by_query(self, per_token: torch.Tensor) -> torch.Tensor:
        """B x G x heads x Q values laid on the query grid: B x heads x HqWq."""
        b, _, h, _ = per_token.shape
        qpos = self._qpos.to(per_token.device)
        keep = qpos >= 0
        out = per_token.new_zeros(b, h, self.tokens)
        return out.index_add_(-1, qpos[keep], per_token.permute(0, 2, 1, 3)[:, :, keep])

    def _query(self, cell: int) -> tuple[int, int]:
        qpos = self._qpos
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
        laid = self._scatter(rows, self._kpos[g : g + 1])[:, :, 0]
        return self._heads(laid, head).reshape(-1, *self.key_size)

    def received(self, *, head: int | None = None) -> torch.Tensor:
        """Attention each key cell receives, averaged over all query cells: B x Hk x Wk."""
        w = self.windows.float()
        qpos = self._qpos.to(w.device)
        summed = (w * (qpos >= 0)[None, :, None, :, None]).sum(3, keepdim=True)
        got = self._scatter(summed, self._kpos)[:, :, 0] / self.tokens
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
