"""Attention records as maps on their feature grid: one picture per image, pure maths."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["attention_view", "attention_views", "weighted_activation"]


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
    - self: the attention each key position receives, averaged over queries and heads.

    Raises:
        ValueError: a kind with no picture on the image grid (branch, transform), or a
            channel record without features.
    """
    kind = record.kind
    if kind == "channel":
        if "features" not in record._parts:
            raise ValueError(
                f"{record.name}: a channel record has a picture only as the weighted "
                "activation, which needs capture(..., features=True)"
            )
        return "SE-weighted activation", weighted_activation(record.features, record.weights)
    if kind == "spatial":
        return "spatial map", record.map.float()
    if kind == "elementwise":
        return "gate (mean over channels)", record.gate.float().mean(1)
    if kind == "axial":
        return "axial gate (mean over channels)", record.gate().float().mean(1)
    if kind == "context":
        return "context pooling map", record.map.float()
    if kind == "self":
        return "attention received (mean over queries)", record.received()
    raise ValueError(f"{record.name}: {kind} attention has no picture on the image grid")


def attention_views(recording: Any) -> dict[str, tuple[str, torch.Tensor]]:
    """:func:`attention_view` of every record that has one: name -> (label, B x h x w)."""
    out = {}
    for name, record in recording.items():
        try:
            out[name] = attention_view(record)
        except ValueError:
            continue
    return out
