"""Rows of a scaled-dot-product attention matrix from its factors, exactly and on demand.

``scaled_dot_product_attention(q, k, v, mask, scale)`` applies
``A = softmax(q k^T * scale + mask)`` (the kernel's documented definition; a boolean mask
keeps the True entries, ``is_causal`` the lower triangle). A is N x M per head, but q and
k are N x d and M x d: a record that keeps q and k holds O(N d) numbers instead of
O(N M), and any row of A is one softmax over M logits. :func:`attention_rows` computes
the rows asked for, the same way for one row as for all of them, so a row computed
alone equals the row of the whole matrix to float32 rounding.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch

__all__ = ["Rows", "attention_rows", "matrix_bytes"]

#: which query rows: all (None), a slice, a list of ints or an index tensor
Rows = Union[None, slice, int, list, torch.Tensor]


def _index(rows: Rows, n: int, device: torch.device) -> torch.Tensor | slice:
    if rows is None:
        return slice(None)
    if isinstance(rows, slice):
        return rows
    if isinstance(rows, int):
        rows = [rows]
    t = torch.as_tensor(rows, dtype=torch.long, device=device).reshape(-1)
    if t.numel() and (int(t.min()) < -n or int(t.max()) >= n):
        raise IndexError(f"query rows {t.tolist()[:8]} out of range for {n} queries")
    return t


def _mask_rows(mask: torch.Tensor, index: torch.Tensor | slice, n: int) -> torch.Tensor:
    """The mask's rows for the chosen queries (a mask that broadcasts over queries, size 1
    on that axis, is kept whole)."""
    if mask.dim() < 2 or mask.shape[-2] == 1:
        return mask
    if mask.shape[-2] != n:
        raise ValueError(f"a mask of shape {tuple(mask.shape)} does not fit {n} queries")
    return mask[..., index, :]


def attention_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    rows: Rows = None,
) -> torch.Tensor:
    """Rows of ``softmax(q k^T * scale + mask)``, computed in float32 at least.

    Args:
        q: (..., N, d) queries; k: (..., M, d) keys, as the kernel received them.
        mask: an additive float mask or a boolean keep-mask broadcastable to (..., N, M).
        causal: keep only keys at or before each query's position.
        scale: the logits' factor, ``1 / sqrt(d)`` by default.
        rows: which queries (default all).

    Returns:
        (..., R, M): one softmax row per chosen query.
    """
    n = q.shape[-2]
    index = _index(rows, n, q.device)
    acc = torch.promote_types(q.dtype, torch.float32)
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    qs = q[..., index, :]
    logits = (qs.to(acc) @ k.to(acc).transpose(-2, -1)) * s
    if causal:
        where = torch.arange(n, device=q.device)[index]
        keep = where[:, None] >= torch.arange(k.shape[-2], device=q.device)[None, :]
        logits = logits.masked_fill(~keep, float("-inf"))
    if mask is not None:
        m = _mask_rows(mask, index, n)
        if m.dtype == torch.bool:
            logits = logits.masked_fill(~m, float("-inf"))
        else:
            logits = logits + m.to(acc)
    return logits.softmax(dim=-1)


def matrix_bytes(shape: Any, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a tensor of ``shape`` in ``dtype``."""
    return int(math.prod(int(s) for s in shape)) * torch.empty((), dtype=dtype).element_size()
