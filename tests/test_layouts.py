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
        assert torch.equal(r.geometry.query_pos, tokens[0, :, :, 0].long()), r.name
        assert r.windows.shape[1:3] == (tokens.shape[1], layer.n_heads)
        # the dense matrix holds each group's rows at the places of its tokens
        g, t = 5, 3
        row = r.windows[0, g, 0, t]
        dense = r.matrix[0, 0, int(r.geometry.query_pos[g, t])]
        torch.testing.assert_close(dense[r.geometry.key_pos[g]], row)
        assert float(dense.sum()) == pytest.approx(1.0, abs=1e-5)


timm = pytest.importorskip("timm")


def _window_inputs(block: torch.nn.Module, attn: torch.nn.Module, x: torch.Tensor, *args):
    """The tokens ``attn`` receives when ``block`` runs on ``x`` (attention replaced by
    zeros for this call, so only the block's own partitioning acts on the index)."""
    seen = []

    def record(_module, inputs, _output):
        seen.append(inputs[0].detach().clone())

    handle = attn.register_forward_hook(record)
    try:
        with torch.no_grad():
            block(x, *args)
    finally:
        handle.remove()
    return seen[0]


def _captured(model: torch.nn.Module, size: tuple[int, int], name: str):
    with torch.no_grad(), attnviz.capture(model, blocks=name) as rec:
        model(torch.randn(1, 3, *size))
    return rec[name]


def _neutral(module: torch.nn.Module, *names: str) -> None:
    for n in names:
        setattr(module, n, torch.nn.Identity())


def test_tinyvit_windows_follow_its_padding_and_partition():
    torch.manual_seed(1)
    model = timm.create_model("tiny_vit_5m_224").eval()  # at 160: 20 x 20, padded to 28
    name = "stages.1.blocks.0.attn"
    r = _captured(model, (160, 160), name)
    block = model.stages[1].blocks[0]
    h, w = r.query_size
    idx = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w, 1).expand(1, h, w, 8) + 1
    idx = idx.repeat(1, 1, 1, block.attn.norm.normalized_shape[0] // 8)
    tokens = _window_inputs(block, block.attn, idx)[..., 0]  # windows x 49, 0 where padded
    assert torch.equal(r.geometry.query_pos, (tokens - 1).long().clamp(min=-1))
    assert (r.geometry.query_pos < 0).any()  # padding happened, and is marked


def test_twins_local_windows_follow_its_partition():
    torch.manual_seed(2)
    model = timm.create_model("twins_svt_small", img_size=96).eval()  # 24 x 24 at stage 0
    name = "blocks.0.0.attn"
    r = _captured(model, (96, 96), name)
    block = model.blocks[0][0]
    _neutral(block, "norm1")
    h, w = r.query_size
    c = block.attn.dim
    idx = (torch.arange(h * w, dtype=torch.float32) + 1).reshape(1, h * w, 1).expand(1, h * w, c)
    seen = []
    real = type(block.attn).forward

    def spy(self, x, size):
        seen.append(x.detach().clone())
        return real(self, x, size)

    block.attn.forward = spy.__get__(block.attn)
    with torch.no_grad():
        block(idx, (h, w))
    ws = block.attn.ws
    pad = (0, 0, 0, (-w) % ws, 0, (-h) % ws)
    padded = torch.nn.functional.pad(seen[0].reshape(1, h, w, c), pad)
    hp, wp = padded.shape[1:3]
    wins = padded.reshape(1, hp // ws, ws, wp // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
    assert torch.equal(r.geometry.query_pos, (wins[..., 0] - 1).long().clamp(min=-1))


def test_nest_blocks_follow_blockify():
    torch.manual_seed(3)
    model = timm.create_model("nest_tiny_jx").eval()
    name = "levels.1.transformer_encoder.0.attn"
    r = _captured(model, (224, 224), name)
    from timm.models.nest import blockify

    h, w = r.query_size
    idx = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w, 1)
    tokens = blockify(idx, model.levels[1].block_size)[0, ..., 0]  # T x N
    assert torch.equal(r.geometry.query_pos, tokens.long())
    heads = model.levels[1].transformer_encoder[0].attn.num_heads
    assert r.windows.shape[1:3] == (tokens.shape[0], heads)


def test_davit_windows_follow_its_padding_and_partition():
    torch.manual_seed(4)
    model = timm.create_model("davit_tiny").eval()
    name = "stages.1.blocks.0.0.attn"
    r = _captured(model, (160, 160), name)  # 20 x 20 at stage 1: padded to 21
    block = model.stages[1].blocks[0][0]
    _neutral(block, "cpe1", "norm1")
    h, w = r.query_size
    c = block.attn.qkv.in_features
    idx = (torch.arange(h * w, dtype=torch.float32) + 1).reshape(1, 1, h, w).expand(1, c, h, w)
    tokens = _window_inputs(block, block.attn, idx)[..., 0]
    assert torch.equal(r.geometry.query_pos, (tokens - 1).long().clamp(min=-1))
    assert (r.geometry.query_pos < 0).any()


def test_sam_windows_follow_its_padding_and_partition():
    torch.manual_seed(5)
    # a 20 x 20 patch map in 14 x 14 windows: padded to 28, four windows
    model = timm.create_model(
        "samvit_base_patch16_224",
        img_size=320,
        depth=2,
        global_attn_indexes=(),
        embed_dim=64,
        num_heads=2,
    )
    model.eval()
    r = _captured(model, (320, 320), "blocks.0.attn")
    from timm.models.vision_transformer_sam import window_partition

    h, w = r.query_size
    idx = (torch.arange(h * w, dtype=torch.float32) + 1).reshape(1, h, w, 1)
    wins, _ = window_partition(idx, model.blocks[0].window_size)
    placed = (wins.reshape(wins.shape[0], -1) - 1).long().clamp(min=-1)
    assert torch.equal(r.geometry.query_pos, placed)
    assert r.windows.shape[1:3] == (4, 2) and (r.geometry.query_pos < 0).any()


def test_rollout_stops_at_patch_merging_and_at_class_attention_with_the_reason():
    torch.manual_seed(6)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=112, depths=(1, 1), num_heads=(2, 4), embed_dim=32
    ).eval()
    with torch.no_grad(), attnviz.capture(swin) as rec:
        swin(torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError, match=r"\(196, 196\), \(784, 784\).*merges patches"):
        attnviz.maps.attention_rollout(rec)
    one_stage = attnviz.maps.attention_rollout(rec.select(blocks="layers.0.*"))
    torch.testing.assert_close(one_stage.sum(-1), torch.ones(1, 784))
    cait = timm.create_model("cait_xxs24_224", img_size=64, depth=1, depth_token_only=2).eval()
    with torch.no_grad(), attnviz.capture(cait, blocks="blocks_token_only.*") as rec:
        cait(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="square matrices"):
        attnviz.maps.rollout_map(rec)
