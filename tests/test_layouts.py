"""Layouts put every token of a windowed kernel where the model took it from: checked by
pushing an index image through the model's own partitioning code."""

from __future__ import annotations

import pytest
import torch
import torchvision

import attnviz


def _index_image(h: int, w: int, c: int = 1) -> torch.Tensor:
    return torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).expand(1, c, h, w)


def test_torchvision_maxvit_window_and_grid_positions_follow_its_partition():
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t(weights=None).eval()
    with attnviz.capture(model, kinds="self", blocks="blocks.0.layers.0.*") as rec:
        model(torch.randn(1, 3, 224, 224))
    layers = model.blocks[0].layers[0].layers
    for r in rec.values():
        layer = layers.window_attention if "window" in r.name else layers.grid_attention
        x = _index_image(56, 56)
        tokens = layer.partition_swap(layer.partition_op(x, layer.p))  # B x G x P x C
        assert torch.equal(r.meta["query_pos"], tokens[0, :, :, 0].long()), r.name
        assert r.windows.shape[1:3] == (tokens.shape[1], layer.n_heads)
        # the dense matrix holds each group's rows at the places of its tokens
        g, t = 5, 3
        row = r.windows[0, g, 0, t]
        dense = r.matrix[0, 0, int(r.meta["query_pos"][g, t])]
        torch.testing.assert_close(dense[r.meta["key_pos"][g]], row)
        assert float(dense.sum()) == pytest.approx(1.0, abs=1e-5)
