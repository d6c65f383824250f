"""Attention records as maps on their feature grid: one picture per image, pure maths."""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "ROLLOUT",
    "attention_rollout",
    "attention_view",
    "attention_views",
    "rollout_map",
    "weighted_activation",
]

#: the name :func:`attention_views` gives the rollout of a vision transformer
ROLLOUT = "rollout"


def weighted_activation(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Where the channels a block emphasises fire: sum_c s_c * u_c (B x H x W).

    For an SE block (Hu et al., eq. 4) this is the channel sum of its output, the
    spatial view of the excitation. ``features`` is the block's input U (B x C x H x W,
    ``record.features`` of ``capture(..., features=True)``), ``weights`` its s (B x C).
    """
    if features.dim() != 4 or weights.shape != features.shape[:2]:
        raise ValueError(
            f"features must be B x C x H x W and weights B x C, got {tuple(features.shape)} "
            f"and {tuple(weights.shape)}"
        )
    return torch.einsum("bchw,bc->bhw", features.float(), weights.float())


def attention_view(record: Any) -> tuple[str, torch.Tensor]:
    """One picture per image of a record's attention on its feature grid: (label, B x h x w).

    - channel: the weighted activation ``sum_c s_c u_c`` (:func:`weighted_activation`; needs
      ``capture(..., features=True)``), derived from the weights, not a map the module
      applied;
    - spatial: the map itself; elementwise: the gate's mean over channels; axial: the mean
      over channels of ``height x width``;
    - context: the pooling map (where the context is gathered from);
    - self: the attention each key position receives, averaged over queries and heads;
      in a vision transformer (a record with a class token), where the class token looks,
      averaged over heads (the DINO paper's picture).

    Raises:
        ValueError: a kind with no picture on the image grid (branch, transform), or a
            channel record without features.
    """
    view = getattr(record, "view", None)
    if view is None:
        raise ValueError(f"{record!r} is no attnviz record")
    return view()


def attention_views(recording: Any) -> dict[str, tuple[str, torch.Tensor]]:
    """:func:`attention_view` of every record that has one: name -> (label, B x h x w).

    A vision transformer's recording also gets :data:`ROLLOUT` (last): the class token's
    attention rolled out through every block (:func:`rollout_map`).
    """
    out = {}
    for name, record in recording.items():
        try:
            out[name] = attention_view(record)
        except ValueError:
            continue
    tokens = _token_records(recording)
    if tokens and "cls" in tokens[0].prefix and ROLLOUT not in out:
        out[ROLLOUT] = (f"attention rollout ({len(tokens)} blocks)", rollout_map(tokens))
    return out


def _self_records(records: Any) -> list[Any]:
    """The self-attention records of a recording (or a list of records), in order."""
    if hasattr(records, "values"):
        records = records.values()
    return [r for r in records if getattr(r, "kind", None) == "self"]


def _token_records(recording: Any) -> list[Any]:
    """The self-attention records over one shared token sequence (a vision transformer)."""
    # square matrices over named tokens: class attention (one query) does not roll out
    found = [r for r in _self_records(recording) if r.prefix and r.tokens == r.keys]
    if not found:
        return []
    n = found[0].tokens
    return [r for r in found if r.tokens == n and r.prefix == found[0].prefix]


def _rollout_blocks(records: Any, residual: float) -> list[Any]:
    """The self-attention records a rollout composes, checked: a residual in [0, 1], and
    every block a square matrix over the same tokens (counted, not formed)."""
    if not 0.0 <= float(residual) <= 1.0:
        raise ValueError(f"residual must lie in [0, 1], got {residual!r}")
    blocks = _self_records(records)
    if not blocks:
        raise ValueError("attention rollout needs self-attention records (a ViT's blocks)")
    sizes = {(r.tokens, r.keys) for r in blocks}
    if len(sizes) != 1:
        raise ValueError(
            "attention rollout needs every block over the same tokens; got matrices of "
            f"{sorted(sizes)}. A hierarchical model (Swin, PVT, MaxViT, ...) merges patches "
            "between stages, so no token of one stage is a token of the next and rollout "
            "is not defined across stages: pass one stage's blocks, e.g. "
            "rec.select(blocks='layers.0.*')"
        )
    if any(q != k for q, k in sizes):
        raise ValueError(
            "attention rollout needs square matrices (every token a query and a key); "
            "class attention (one query) or spatial-reduction attention (keys on a coarser "
            "grid) does not compose"
        )
    return blocks


def attention_rollout(records: Any, *, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, ACL 2020) through a stack of blocks: B x N x N.

    Each block's matrix, averaged over heads, is mixed with the identity for the residual
    connection, ``A' = residual * I + (1 - residual) * A`` (rows still sum to one), and the
    blocks are multiplied in the order they ran: ``R = A'_L ... A'_2 A'_1``. Row t of R is
    how much token t of the last block draws, through every path, on each input token.

    Args:
        records: self-attention records in forward order, all over the same N tokens (a
            :class:`~attnviz.records.Recording`, or a list); others are skipped.
        residual: weight of the identity (0.5 in the paper).

    Raises:
        ValueError: no self-attention records, records over different token counts, or
            ``residual`` outside [0, 1].
    """
    mats = [r.matrix for r in _rollout_blocks(records, residual)]
    n = mats[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    out = None
    for m in mats:
        a = residual * eye + (1 - residual) * m.to(torch.float64).mean(dim=1)
        a = a / a.sum(dim=-1, keepdim=True)
        out = a if out is None else a @ out
    assert out is not None
    return out.float()


def rollout_map(records: Any, token: str = "cls", *, residual: float = 0.5) -> torch.Tensor:
    """The rollout row of a named token over the patches, on the patch grid: B x h x w.

    The row ``e_t^T A'_L ... A'_1`` of :func:`attention_rollout`, computed as a row vector
    times one block's matrix at a time, from the last block to the first, each matrix
    read in chunks of query rows (``record.query_rows``): a factored record never forms
    its matrix, so this costs one pass over the blocks' rows and holds one chunk at a
    time, at any number of tokens.

    Args:
        records: a vision transformer's self-attention records (see
            :func:`attention_rollout`); the token names and grid come from the last one.
        token: a prefix token of the model (``"cls"``, ``"dist"``, ...).
    """
    records = _rollout_blocks(records, residual)
    last = records[-1]
    if token not in last.prefix:
        raise ValueError(f"no token {token!r}; the model's leading tokens are {list(last.prefix)}")
    n_tokens = last.tokens
    t, p = last.prefix.index(token), len(last.prefix)
    x = None
    for r in reversed(records):
        b = r.batch_size
        if x is None:
            x = torch.zeros(b, n_tokens, dtype=torch.float64)
            x[:, t] = 1.0
        x = _times_block(x, r, residual)
    assert x is not None
    return x[:, p:].float().reshape(-1, *last.key_size)


def _times_block(x: torch.Tensor, record: Any, residual: float, chunk: int = 256) -> torch.Tensor:
    """``x A'`` for one block, ``A' = rownorm(residual I + (1 - residual) mean_h A)``, with
    A read ``chunk`` query rows at a time."""
    n = x.shape[1]
    out = None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        a = record.query_rows(slice(start, stop)).to(torch.float64).mean(dim=1)  # B x c x N
        if out is None:  # where the record computes: the CPU, or its GPU
            x = x.to(a.device)
            out = torch.zeros_like(x)
        a = (1 - residual) * a
        a[:, torch.arange(stop - start), torch.arange(start, stop)] += residual
        a = a / a.sum(dim=-1, keepdim=True)
        out += torch.einsum("bc,bcn->bn", x[:, start:stop], a)
    assert out is not None
    return out
