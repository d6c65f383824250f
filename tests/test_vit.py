"""Vision transformers: the attention matrix of every block and head, exact and named.

torchvision's ViT (nn.MultiheadAttention) and timm's ViT family (fused
scaled_dot_product_attention or a plain softmax); every equation is rebuilt here from the
module's own weights, outside the capture.
"""

from __future__ import annotations

import os
import warnings
from urllib.parse import urlparse

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import attnviz
from attnviz import maps
from attnviz.cam import gradcam, token_reshape
from attnviz.probes import tokens as token_probes
from attnviz.zoo import VIT_NETWORKS, pretrained

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def tv_vit():
    torch.manual_seed(0)
    return torchvision.models.vit_b_16().eval()


def _timm(name: str, fused: bool) -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(name).eval()
    for block in m.blocks:
        block.attn.fused_attn = fused
    return m


def _strict():
    """Capture warnings (a failed faithfulness check) become errors."""
    return warnings.catch_warnings()


# -- torchvision: nn.MultiheadAttention ---------------------------------------------------------
def test_torchvision_vit_every_block_and_head_reproduces_the_plain_forward(tv_vit):
    x = torch.randn(2, 3, 224, 224)
    blocks = [m for m in tv_vit.encoder.layers]
    inputs, outputs = {}, {}

    def keep(i):
        def hook(mod, args, out):
            inputs[i], outputs[i] = args[0], out[0]

        return hook

    with torch.no_grad():
        handles = [b.self_attention.register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
        plain = tv_vit(x)  # no capture: torch's own (fast) path, need_weights=False
        for h in handles:
            h.remove()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with attnviz.capture(tv_vit) as rec:
                captured = tv_vit(x)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=0)  # the caller sees no change
    assert len(rec) == 12 and all(c.ok for c in rec.checks)
    for i, block in enumerate(blocks):
        mha = block.self_attention
        r = rec[f"encoder.layers.encoder_layer_{i}.self_attention"]
        a = r.matrix
        assert a.shape == (2, 12, 197, 197) and r.prefix == ("cls",) and r.key_size == (14, 14)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 12, 197), atol=1e-5, rtol=0)
        # out_proj(A V) with V from the module's own value projection
        e = mha.embed_dim
        v = F.linear(inputs[i], mha.in_proj_weight[2 * e :], mha.in_proj_bias[2 * e :])
        v = v.reshape(2, 197, 12, 64).transpose(1, 2)
        rebuilt = mha.out_proj((a @ v).transpose(1, 2).reshape(2, 197, e))
        err = (rebuilt - outputs[i]).abs().max() / outputs[i].abs().max()
        assert err < 1e-5, (i, float(err))


def test_a_caller_asking_for_no_weights_still_gets_none(tv_vit):
    mha = tv_vit.encoder.layers[0].self_attention
    x = torch.randn(1, 197, 768)
    with torch.no_grad(), attnviz.capture(tv_vit) as rec:
        _, w = mha(x, x, x, need_weights=False)
        _, w2 = mha(x, x, x, None, True)  # positional need_weights: averaged, as asked
        _, w3 = mha(x[0], x[0], x[0], average_attn_weights=False)  # unbatched, per head
    assert w is None and w2.shape == (1, 197, 197) and w3.shape == (12, 197, 197)
    r = rec["encoder.layers.encoder_layer_0.self_attention"]
    assert r.calls == 3 and all(c.ok for c in rec.checks)
    torch.testing.assert_close(w2[0], r.matrix[1].mean(0))
    torch.testing.assert_close(w3, r.matrix[2])


# -- timm: fused and plain -----------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit_matrix_times_values_reproduces_the_block(fused):
    m = _timm("vit_tiny_patch16_224", fused)
    x = torch.randn(2, 3, 224, 224)
    outs, ins = {}, {}

    def keep(i):
        def hook(_mod, args, out):
            ins[i], outs[i] = args[0], out

        return hook

    hooks = [b.attn.register_forward_hook(keep(i)) for i, b in enumerate(m.blocks)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        with attnviz.capture(m) as rec:
            m(x)
    for h in hooks:
        h.remove()
    assert len(rec) == 12 and all(c.ok for c in rec.checks)
    for i, block in enumerate(m.blocks):
        r = rec[f"blocks.{i}.attn"]
        a, v = r.matrix, r.values
        assert a.shape == (2, 3, 197, 197) and v.shape == (2, 3, 197, 64)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 197), atol=1e-5, rtol=0)
        # the block's output, rebuilt: proj(A V), heads side by side
        rebuilt = block.attn.proj((a @ v).transpose(1, 2).reshape(2, 197, -1))
        err = (rebuilt - outs[i]).abs().max() / outs[i].abs().max()
        assert err < 1e-5, (i, float(err))
        # and v is the block's own value projection of its input
        qkv = block.attn.qkv(ins[i]).reshape(2, 197, 3, 3, 64).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(v, qkv[2], atol=1e-6, rtol=0)


def test_fused_and_plain_attention_give_the_same_matrix():
    x = torch.randn(1, 3, 224, 224)
    recs = []
    for fused in (True, False):
        m = _timm("deit_tiny_distilled_patch16_224", fused)
        with torch.no_grad(), attnviz.capture(m) as rec:
            m(x)
        recs.append(rec)
    for name in recs[0]:
        torch.testing.assert_close(recs[0][name].matrix, recs[1][name].matrix, atol=1e-6, rtol=0)


def _block_inputs(modules: dict[str, nn.Module]):
    """Forward hooks keeping each named module's first input; returns (inputs, handles)."""
    inputs = {}
    handles = [
        m.register_forward_hook(lambda _m, args, _out, n=n: inputs.__setitem__(n, args[0]))
        for n, m in modules.items()
    ]
    return inputs, handles


@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit_each_head_matrix_is_softmax_of_its_own_q_and_k(fused):
    m = _timm("vit_tiny_patch16_224", fused)
    inputs, handles = _block_inputs({f"blocks.{i}.attn": b.attn for i, b in enumerate(m.blocks)})
    with torch.no_grad(), attnviz.capture(m) as rec:
        m(torch.randn(2, 3, 224, 224))
    for h in handles:
        h.remove()
    for i in (0, 5, 11):
        name, attn = f"blocks.{i}.attn", m.blocks[i].attn
        x = inputs[name]
        with torch.no_grad():
            qkv = attn.qkv(x).reshape(2, 197, 3, 3, 64).permute(2, 0, 3, 1, 4)
        a = rec[name].matrix
        for head in range(3):  # head by head: softmax(q_h k_h^T / sqrt(64)), by hand
            q, k = qkv[0][:, head], qkv[1][:, head]
            expected = torch.softmax(q @ k.transpose(1, 2) / 8.0, dim=-1)
            torch.testing.assert_close(a[:, head], expected, atol=1e-5, rtol=0)
        assert not torch.allclose(a[:, 0], a[:, 1], atol=1e-3)  # the heads differ


def test_torchvision_vit_each_head_matrix_is_softmax_of_its_own_q_and_k(tv_vit):
    layers = tv_vit.encoder.layers
    inputs, handles = _block_inputs({str(i): b.self_attention for i, b in enumerate(layers)})
    with torch.no_grad(), attnviz.capture(tv_vit, blocks="*encoder_layer_1?.*") as rec:
        tv_vit(torch.randn(1, 3, 224, 224))
    for h in handles:
        h.remove()
    assert list(rec) == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in (10, 11)]
    for i in (10, 11):
        mha = layers[i].self_attention
        x = inputs[str(i)]
        e = mha.embed_dim
        q = F.linear(x, mha.in_proj_weight[:e], mha.in_proj_bias[:e])
        k = F.linear(x, mha.in_proj_weight[e : 2 * e], mha.in_proj_bias[e : 2 * e])
        a = rec[f"encoder.layers.encoder_layer_{i}.self_attention"].matrix
        for head in range(12):
            cols = slice(64 * head, 64 * (head + 1))
            expected = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / 8.0, dim=-1)
            torch.testing.assert_close(a[:, head], expected, atol=1e-5, rtol=0)


def test_a_wrong_fused_matrix_fails_its_check(monkeypatch):
    """The check can fail: a matrix computed with the wrong scale disagrees with the kernel."""
    real = token_probes.attention_matrix
    monkeypatch.setattr(
        token_probes,
        "attention_matrix",
        lambda q, k, mask, causal, scale, rows=None: real(q, k, mask, causal, 0.5, rows),
    )
    m = _timm("vit_tiny_patch16_224", True)
    with pytest.raises(attnviz.FaithfulnessError, match="fused kernel"):
        with torch.no_grad(), attnviz.capture(m, verify="raise"):
            m(torch.randn(1, 3, 224, 224))


# -- token names ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, prefix",
    [
        ("vit_tiny_patch16_224", ("cls",)),
        ("deit_tiny_distilled_patch16_224", ("cls", "dist")),
        ("vit_betwixt_patch16_reg4_gap_256", ("reg1", "reg2", "reg3", "reg4")),
    ],
)
def test_leading_tokens_are_named_from_the_model(name, prefix):
    m = timm.create_model(name).eval()
    size = m.default_cfg["input_size"][-1]
    with torch.no_grad(), attnviz.capture(m, blocks="blocks.0.attn") as rec:
        m(torch.randn(1, 3, size, size))
    r = rec["blocks.0.attn"]
    grid = size // 16
    assert r.prefix == prefix and r.key_size == (grid, grid)
    assert r.tokens == len(prefix) + grid * grid
    for i, token in enumerate(prefix):  # the token's row over the patches
        torch.testing.assert_close(
            r.token_attention(token, head=1)[0].flatten(), r.matrix[0, 1, i, len(prefix) :]
        )
    with pytest.raises(ValueError, match="leading tokens are"):
        r.token_attention("nope")
    # the grid methods read patch-to-patch attention
    assert r.head_matrix().shape == (1, grid * grid, grid * grid)


def test_a_non_square_input_gets_its_grid_from_the_input_size():
    m = timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True).eval()
    with torch.no_grad(), attnviz.capture(m, blocks="blocks.11.attn") as rec:
        m(torch.randn(1, 3, 160, 256))
    assert rec["blocks.11.attn"].key_size == (10, 16)


def test_a_model_of_unknown_layout_says_how_to_teach_it():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    m = Tokens().eval()
    with torch.no_grad(), attnviz.capture(m) as rec:
        m(torch.randn(1, 10, 8))  # 10 tokens: no grid, and nobody named them
    with pytest.raises(ValueError, match="token_layout"):
        _ = rec["attn"].key_size
    m.token_layout = attnviz.TokenLayout(("cls",), (1, 1), "test")
    with torch.no_grad(), attnviz.capture(m) as rec:
        m(torch.randn(1, 10, 8))
    assert rec["attn"].prefix == ("cls",) and rec["attn"].key_size == (3, 3)


# -- views: class token, rollout ------------------------------------------------------------------
def test_rollout_is_the_product_of_residual_mixed_blocks():
    m = _timm("vit_tiny_patch16_224", True)
    with torch.no_grad(), attnviz.capture(m) as rec:
        m(torch.randn(1, 3, 224, 224))
    expected = torch.eye(197, dtype=torch.float64)
    for r in rec.values():
        a = 0.5 * r.matrix[0].double().mean(0) + 0.5 * torch.eye(197, dtype=torch.float64)
        expected = (a / a.sum(-1, keepdim=True)) @ expected
    rolled = maps.attention_rollout(rec)
    torch.testing.assert_close(rolled[0].double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.attention_rollout(rec, residual=1.0)[0], torch.eye(197))
    views = maps.attention_views(rec)
    assert list(views)[-1] == maps.ROLLOUT
    torch.testing.assert_close(views[maps.ROLLOUT][1][0].flatten(), rolled[0, 0, 1:])
    label, cls_map = views["blocks.11.attn"]
    assert label.startswith("class-token")
    torch.testing.assert_close(cls_map, rec["blocks.11.attn"].token_attention("cls"))
    with pytest.raises(ValueError, match="residual"):
        maps.attention_rollout(rec, residual=1.5)


def test_gradcam_of_a_vit_uses_the_patch_grid(tv_vit):
    x = torch.randn(1, 3, 224, 224)
    cam = gradcam(tv_vit, x, targets=[3])
    assert cam.shape == (1, 224, 224) and 0 <= cam.min() and cam.max() <= 1
    reshape = token_reshape(tv_vit, (224, 224))
    out = reshape(torch.arange(2 * 197 * 5, dtype=torch.float32).reshape(2, 197, 5))
    assert out.shape == (2, 5, 14, 14)
    assert out[0, 0, 0, 0] == 5  # token 1 (the first patch), channel 0: the class token dropped


# -- loading through torchvision's weights API -----------------------------------------------------
def test_torchvision_vit_loads_cached_weights_through_the_weights_api(
    tmp_path, monkeypatch, tv_vit
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("vit_b_16").DEFAULT
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    path.parent.mkdir(parents=True)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in tv_vit.state_dict().items()}
    torch.save(state, path)
    pre = pretrained("vit_b_16")
    assert pre.pretrained and pre.weights is weights and "vit_b_16" in VIT_NETWORKS
    assert torch.equal(pre.model.conv_proj.weight, state["conv_proj.weight"])
    assert pre.class_names[0] == "tench"


def test_sequence_first_and_cross_attention_are_recorded_exactly():
    """nn.MultiheadAttention outside a ViT: batch_first=False, and queries attending to a
    different sequence (L != S); out_proj(A V) rebuilt from the module's own weights."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=False).eval()
    q, kv = torch.randn(5, 2, 16), torch.randn(9, 2, 16)  # L = 5, S = 9, batch 2
    with torch.no_grad():
        plain, _ = mha(q, kv, kv, need_weights=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with attnviz.capture(mha) as rec:
                out, w = mha(q, kv, kv, need_weights=False)
        r = rec[""]
        a = r.matrix
        assert w is None and a.shape == (2, 4, 5, 9) and all(c.ok for c in rec.checks)
        v = F.linear(kv.transpose(0, 1), mha.in_proj_weight[32:], mha.in_proj_bias[32:])
        v = v.reshape(2, 9, 4, 4).transpose(1, 2)
        rebuilt = mha.out_proj((a @ v).transpose(1, 2).reshape(2, 5, 16)).transpose(0, 1)
    torch.testing.assert_close(rebuilt, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=0)
