"""Attention at any size: fused kernels kept as their factors (q, k, mask, scale), rows
computed exactly on demand, equal to the whole matrices a capture with
``attention="full"`` keeps, and never materialised unless asked for."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnviz
from attnviz import maps, records
from attnviz.records import FactoredAttentionRecord
from attnviz.testing import randomise

timm = pytest.importorskip("timm")


class MaskedAttention(nn.Module):
    """A user's fused attention with a per-image boolean mask and, optionally, causality."""

    def __init__(self, c: int = 16, heads: int = 4, causal: bool = False) -> None:
        super().__init__()
        self.qkv, self.heads, self.causal = nn.Linear(c, 3 * c), heads, causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        keep = torch.ones(b, 1, h * w, h * w, dtype=torch.bool)
        keep[0, :, :, -3:] = False  # image 0 cannot look at its last three positions
        if self.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).mean()
        return F.scaled_dot_product_attention(q, k, v, keep).transpose(1, 2).mean()


def _timm(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    randomise(model)
    return model


def _hf_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    model = transformers.ViTModel._from_config(cfg, attn_implementation="sdpa").eval()
    randomise(model)
    return model


def _vit() -> nn.Module:
    return _timm("vit_small_patch16_224", img_size=64, depth=3)


def _eva() -> nn.Module:
    return _timm("eva02_tiny_patch14_224", img_size=56, depth=2)


def _torchvision_vit() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=32).eval()
    model.encoder.layers = model.encoder.layers[:2]
    randomise(model)
    return model


CASES = {
    "torchvision ViT (nn.MultiheadAttention, need_weights=False)": (
        _torchvision_vit,
        (2, 3, 32, 32),
    ),
    "timm ViT, fused (registered probe)": (_vit, (2, 3, 64, 64)),
    "EVA-02, RoPE (found by its kernel)": (_eva, (2, 3, 56, 56)),
    "BEiT, relative-position bias as the mask": (
        lambda: _timm("beit_base_patch16_224", img_size=64, depth=2),
        (2, 3, 64, 64),
    ),
    "Hugging Face ViT, sdpa": (_hf_vit, (2, 3, 32, 32)),
    "a user's module, boolean mask": (lambda: nn.Sequential(MaskedAttention()), (2, 16, 3, 4)),
    "a user's module, causal": (lambda: nn.Sequential(MaskedAttention(causal=True)), (2, 16, 3, 4)),
}


def _both(build, shape):
    model = build()
    x = torch.randn(shape)
    kw = {"pixel_values": x} if hasattr(model, "config") else {}
    out = {}
    for mode in ("factors", "full"):
        with torch.no_grad(), attnviz.capture(model, attention=mode, verify="raise") as rec:
            model(**kw) if kw else model(x)
        out[mode] = rec
    return out["factors"], out["full"]


@pytest.mark.parametrize("case", list(CASES))
def test_factors_equal_the_whole_matrix_in_every_view(case):
    factored, full = _both(*CASES[case])
    assert list(factored) == list(full) and len(factored)
    for name in full:
        f, g = factored[name], full[name]
        assert isinstance(f, FactoredAttentionRecord)
        assert not isinstance(g, FactoredAttentionRecord)
        n = g.tokens
        close = {"rtol": 0, "atol": 1e-6}
        torch.testing.assert_close(f.matrix, g.matrix, **close)
        rows = [0, n // 2, n - 1]
        torch.testing.assert_close(f.query_rows(rows), g.query_rows(rows), **close)
        torch.testing.assert_close(f.key_column(n // 3), g.key_column(n // 3), **close)
        torch.testing.assert_close(f.top_keys([1], 3)[0], g.top_keys([1], 3)[0], **close)
        for head in (None, 1):
            torch.testing.assert_close(f.head_matrix(head), g.head_matrix(head), **close)
        try:
            _ = g.query_size
        except ValueError:
            continue  # unplaced: the views below need a grid
        for head in (None, 0):
            torch.testing.assert_close(f.received(head=head), g.received(head=head), **close)
            q = (f.query_size[1] - 1, 0)
            torch.testing.assert_close(
                f.key_row(q, f.query_size, head=head),
                g.key_row(q, g.query_size, head=head),
                **close,
            )
            if "cls" in f.prefix:
                got, want = (r.token_attention("cls", head=head) for r in (f, g))
                torch.testing.assert_close(got, want, **close)
    if any("cls" in r.prefix for r in full.values()):
        roll = maps.attention_rollout(full)[:, 0, len(full[name].prefix) :]
        torch.testing.assert_close(maps.rollout_map(factored).flatten(1), roll, **close)


def test_factored_records_hold_q_and_k_not_the_matrix():
    model = _timm("vit_small_patch16_224", img_size=64, depth=2)
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(torch.randn(2, 3, 64, 64))
    r = rec["blocks.0.attn"]
    assert set(r._parts) == {"q", "k", "values"}
    assert r.q.shape == r.k.shape == (2, 6, 17, 64) and r.meta["scale"] is None
    assert "factors of a (2, 6, 17, 17) matrix" in repr(r)
    held = sum(t.numel() * t.element_size() for f in ("q", "k", "values") for t in r._parts[f])
    assert r.nbytes == held and rec.nbytes == sum(x.nbytes for x in rec.values())


def test_a_whole_matrix_too_large_is_refused_with_its_size_and_the_alternatives(monkeypatch):
    model = _timm("vit_small_patch16_224", img_size=64, depth=1)
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(torch.randn(2, 3, 64, 64))
    r = rec["blocks.0.attn"]
    monkeypatch.setattr(records, "MATRIX_LIMIT", 1000)
    with pytest.raises(MemoryError, match=r"\(2, 6, 17, 17\) would take 0 MiB.*query_rows"):
        _ = r.matrix
    assert r.token_attention("cls").shape == (2, 4, 4)  # rows still work
    assert maps.rollout_map(rec).shape == (2, 4, 4)


def test_attention_modes_are_checked():
    with pytest.raises(ValueError, match="attention must be one of.*'factors'"):
        attnviz.capture(nn.Sequential(MaskedAttention()), attention="rows")


def test_float16_factors_give_rows_close_to_the_float32_matrix():
    model = _timm("vit_small_patch16_224", img_size=64, depth=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), attnviz.capture(model, dtype=torch.float16) as half:
        model(x)
    with torch.no_grad(), attnviz.capture(model, attention="full") as full:
        model(x)
    assert half["blocks.0.attn"].q.dtype == torch.float16
    got, want = (r["blocks.0.attn"].token_attention("cls") for r in (half, full))
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_the_query_explorer_never_forms_a_matrix(monkeypatch):
    from attnviz.widgets import QueryExplorer

    model = _timm("vit_small_patch16_224", img_size=96, depth=2)

    def refuse(self):
        raise AssertionError("a whole matrix was formed")

    monkeypatch.setattr(FactoredAttentionRecord, "matrix", property(refuse))
    app = QueryExplorer(model, torch.rand(1, 3, 96, 96))
    for show in ("query", "received", "cls", "rollout"):
        app.show = show
        app.query = (10, 80)
    app.close()


_MEMORY = """
import json, resource, sys, time, torch, timm, attnviz
torch.manual_seed(0)
m = timm.create_model("vit_base_patch14_dinov2").eval()
x = torch.randn(2, 3, 518, 518)
with torch.no_grad():
    m(x)  # warm: allocator and kernels
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with attnviz.capture(m) as rec:
        m(x)
    s = time.perf_counter() - t
held = rec.nbytes
qk = sum((r.q.numel() + r.k.numel()) * r.q.element_size() for r in rec.values())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"held": held, "qk": qk, "grew": (peak - base) * 1024, "seconds": s,
                  "records": len(rec)}))
"""


@pytest.mark.slow
def test_dinov2_at_518_fits_in_a_small_multiple_of_its_q_and_k():
    """ViT-B/14 at 518 x 518 (1,370 tokens), batch 2, in a fresh process: the records hold
    at most 2 (q + k) bytes (q, k and the values: 1.5 (q + k)), and the peak memory of
    the captured forward over a plain one grows by at most 600 MiB (the whole matrices
    were 2,062 MiB)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY], capture_output=True, text=True, timeout=600, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["records"] == 12
    assert got["held"] <= 2 * got["qk"], got
    assert got["held"] < 300 * 2**20 and got["grew"] < 600 * 2**20, got
    assert math.isfinite(got["seconds"]) and time.time()


class ClsTokens(nn.Module):
    """A class token and 24 x 24 patches through nn.MultiheadAttention (taught its layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.token_layout = attnviz.TokenLayout(("cls",), (1, 1), "test")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


def _mha_by_hand(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head from the module's own input projection."""
    heads = mha.num_heads
    (wq, wk, _), (bq, bk, _) = mha.in_proj_weight.split(8), mha.in_proj_bias.split(8)
    q, k = (
        (x @ w.T + b).reshape(len(x), -1, heads, 8 // heads).transpose(1, 2)
        for w, b in ((wq, bq), (wk, bk))
    )
    return (q @ k.transpose(-2, -1) / math.sqrt(8 // heads)).softmax(-1)


def _masked_by_hand(m: MaskedAttention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head with MaskedAttention's boolean keep-mask."""
    b, _, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)
    q, k, _ = m.qkv(t).reshape(b, h * w, 3, m.heads, -1).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    logits[0, :, :, -3:] = float("-inf")  # image 0 cannot look at its last three positions
    return logits.softmax(-1)


@pytest.mark.parametrize("mode", ["factors", "full"])
def test_received_over_several_chunks_is_the_column_mean_of_the_whole_matrix(mode):
    """Past one chunk of query rows (FactoredAttentionRecord.chunk, 256) the attention each
    key receives is still the mean over every patch query of its column: 600 tokens
    (no prefix, chunks 256 + 256 + 88) and 1 + 576 (a class token: chunks start at row 1)."""
    torch.manual_seed(8)
    assert FactoredAttentionRecord.chunk < 577 and 576 % FactoredAttentionRecord.chunk
    masked = nn.Sequential(MaskedAttention()).eval()
    x = torch.randn(2, 16, 24, 25)
    tokens = ClsTokens().eval()
    t = torch.randn(2, 577, 8)
    cases = [(masked, x, _masked_by_hand(masked[0], x), 0, "0"), (tokens, t, None, 1, "attn")]
    for model, inp, a, p, name in cases:
        with torch.no_grad():
            if a is None:
                a = _mha_by_hand(model.attn, inp)
            with attnviz.capture(model, attention=mode, verify="raise") as rec:
                model(inp)
        r = rec[name]
        assert isinstance(r, FactoredAttentionRecord) == (mode == "factors")
        assert r.tokens == a.shape[-1] > 2 * FactoredAttentionRecord.chunk
        patches = a[:, :, p:, p:]  # patch queries x patch keys
        grid = r.key_size
        close = {"rtol": 0, "atol": 1e-8}  # a row missed per chunk moves a mean by ~1e-5
        want = patches.mean(dim=(1, 2)).reshape(2, *grid)  # heads, then queries
        torch.testing.assert_close(r.received(), want, **close)
        one = patches[:, 1].mean(1).reshape(2, *grid)
        torch.testing.assert_close(r.received(head=1), one, **close)
        last = a.shape[-1] - 1
        torch.testing.assert_close(r.key_column(last), a[..., last], rtol=0, atol=1e-6)
