"""Scores of self-attention: does attention from the object stay on the object?"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import renamed_kwargs
from ..capture import capture
from ..running import model_device
from ._common import one_record

__all__ = ["attention_on_object"]


@renamed_kwargs(name="block")
def attention_on_object(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    block: str | None = None,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """For queries on the object, the share of their attention that lands on the object.

    The object mask is averaged onto the self-attention block's query and key grids.
    Queries are the cells at least half covered by the object; for each, the attention
    mass on the object is sum_k A[q, k] * cover[k] (cover: the object's share of key
    cell k). Compare with ``area``, the object's share of the key grid: the share a
    query would give the object by attending uniformly.

    Args:
        model: a model with one self-attention block (or pick one with ``block``).
        images: N x C x H x W network inputs.
        masks: N x H x W object masks (bool or [0, 1]).

    Returns:
        ``{"on_object": N, "area": N}``; images with no query on the object give NaN.
    """
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"masks must be N x H x W like images {tuple(images.shape)}, got {tuple(masks.shape)}"
        )
    device = model_device(model)
    on, area = [], []
    for i in range(0, len(images), batch_size):
        with torch.no_grad(), capture(model, kinds="self", blocks=block) as rec:
            model(images[i : i + batch_size].to(device))
        (r,) = one_record(rec.select(kind="self"))
        m = masks[i : i + batch_size].float()[:, None]
        q_cover = F.adaptive_avg_pool2d(m, r.query_size).flatten(1)  # B x Q
        k_cover = F.adaptive_avg_pool2d(m, r.key_size).flatten(1)  # B x K
        mass = torch.einsum("bqk,bk->bq", r.head_matrix(), k_cover)
        queries = q_cover >= 0.5
        share = (mass * queries).sum(1) / queries.sum(1)  # NaN where no query is on the object
        on.append(share)
        area.append(k_cover.mean(1))
    return {"on_object": torch.cat(on), "area": torch.cat(area)}
