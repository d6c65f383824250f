"""Attention found by what a module computes (attnviz.probes.kernels): modules no registry
names, written the ways people write attention, recorded exactly and checked; kernels
that cannot be read are named, never dropped silently."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnviz
from attnviz.probes import kernels


class SdpaAttention(nn.Module):
    """A user's multi-head attention over an NCHW map, through the fused kernel."""

    def __init__(
        self,
        c: int = 8,
        heads: int = 2,
        *,
        dropout: float = 0.0,
        mask: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.heads, self.dropout, self.scale = heads, dropout, scale
        self.bias = nn.Parameter(torch.randn(heads, 1, 1)) if mask else None

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def mask(self, n: int) -> torch.Tensor | None:
        if self.bias is None:
            return None
        d = torch.arange(n, dtype=torch.float32)
        return -(d[:, None] - d[None, :]).abs() / n * self.bias  # heads x n x n, float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_heads(x)
        kwargs = {} if self.scale is None else {"scale": self.scale}
        out = F.scaled_dot_product_attention(q, k, v, self.mask(h * w), self.dropout, **kwargs)
        return self.proj(out.transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).view(b, c, h, w)


class ExplicitAttention(SdpaAttention):
    """The same attention written out, in one of the forms found in the zoo."""

    def __init__(self, form: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_heads(x)
        a = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        if self.form == "a@v":
            out = a @ v
        elif self.form == "v@a^T":  # timm's Attention2d, LeViT's conv mode
            out = (v.transpose(-2, -1) @ a.transpose(-2, -1)).transpose(-2, -1)
        elif self.form == "einsum":  # torchvision's MaxViT
            out = torch.einsum("b h i j, b h j d -> b h i d", a, v)
        elif self.form == "mixed heads":  # CaiT's talking heads: mixed after the softmax
            a = torch.einsum("bhij,gh->bgij", a, torch.eye(self.heads).flip(0) * 0.5 + 0.25)
            out = a @ v
        else:  # an einsum that sums the matrix away: no product with the values
            out = v * torch.einsum("bhij->bhi", a)[..., None]
        return self.proj(out.transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).view(b, c, h, w)


class Net(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.stem(x))


def _expected(net: Net, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale + mask) from the module's own weights, per head."""
    m = net.attn
    q, k, _ = m.qkv_heads(net.stem(x))
    scale = m.scale if m.scale is not None else 1 / math.sqrt(q.shape[-1])
    logits = q @ k.transpose(-2, -1) * scale
    mask = m.mask(q.shape[-2])
    return (logits + (0 if mask is None else mask)).softmax(-1)


def _capture(net: nn.Module, x: torch.Tensor, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", attnviz.CaptureWarning)
        with attnviz.capture(net, **kwargs) as rec:
            net(x)
    return rec


@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("mask", [False, True])
def test_a_fused_kernel_in_a_users_module_is_recorded_exactly(mask, scale):
    torch.manual_seed(0)
    net = Net(SdpaAttention(mask=mask, scale=scale)).eval()
    x = torch.randn(2, 3, 4, 5)
    rec = _capture(net, x)
    r = rec["attn"]
    assert r.kind == "self" and r.meta["kernel"] == "scaled_dot_product_attention"
    torch.testing.assert_close(r.matrix, _expected(net, x), rtol=1e-5, atol=1e-6)
    assert r.query_size == (4, 5) and r.key_size == (4, 5)  # the module input's own grid
    assert all(c.ok for c in rec.checks) and rec.checks


@pytest.mark.parametrize("form", ["a@v", "v@a^T", "einsum"])
def test_explicit_attention_in_every_form_is_recorded_exactly(form):
    torch.manual_seed(1)
    net = Net(ExplicitAttention(form)).eval()
    x = torch.randn(2, 3, 4, 4)
    rec = _capture(net, x)
    r = rec["attn"]
    torch.testing.assert_close(r.matrix, _expected(net, x), rtol=1e-5, atol=1e-6)
    assert {c.what for c in rec.checks} == {
        "matrix @ values == the module's own product",
        *(["rows sum to 1"] if form != "v@a^T" else []),  # the softmax itself, over keys
    }
    assert all(c.ok for c in rec.checks)


def test_the_matrix_applied_after_the_softmax_is_the_one_recorded():
    torch.manual_seed(2)
    net = Net(ExplicitAttention("mixed heads")).eval()
    x = torch.randn(1, 3, 4, 4)
    rec = _capture(net, x)
    a = _expected(net, x)
    mixed = torch.einsum("bhij,gh->bgij", a, torch.eye(2).flip(0) * 0.5 + 0.25)
    torch.testing.assert_close(rec["attn"].matrix, mixed, rtol=1e-5, atol=1e-6)


def test_recording_the_softmax_instead_of_the_mixed_matrix_is_caught(monkeypatch):
    """A planted mistake in the explicit path: the softmax recorded, not the operand the
    module multiplied its values by."""
    torch.manual_seed(2)
    net = Net(ExplicitAttention("mixed heads")).eval()
    real = kernels.Tracker._product

    def softmax_instead(self, frame, left, right, out, hits):
        real(self, frame, left, right, out, hits)
        call = frame.calls[-1]
        sm = next(t for t, _, pure in frame.tainted.values() if pure and t.shape == left.shape)
        call.matrix = sm

    monkeypatch.setattr(kernels.Tracker, "_product", softmax_instead)
    with pytest.warns(attnviz.CaptureWarning, match=r"attn: matrix @ values == the module's own"):
        with attnviz.capture(net):
            net(torch.randn(1, 3, 4, 4))


def test_a_kernel_rebuilt_without_its_mask_is_caught(monkeypatch):
    torch.manual_seed(3)
    net = Net(SdpaAttention(mask=True)).eval()
    real = kernels.attention_matrix

    def unmasked(q, k, _mask, causal, scale, rows=None):
        return real(q, k, None, causal, scale, rows)

    monkeypatch.setattr(kernels, "attention_matrix", unmasked)
    with pytest.raises(attnviz.FaithfulnessError, match="attn: matrix @ values"):
        with attnviz.capture(net, verify="raise"):
            net(torch.randn(1, 3, 4, 4))


def test_a_kernel_that_cannot_be_read_is_named_never_dropped():
    net = Net(SdpaAttention(dropout=0.5))
    with pytest.warns(attnviz.CaptureWarning, match=r"NOT recorded.*attn: .*dropout"):
        with attnviz.capture(net) as rec:
            net(torch.randn(1, 3, 4, 4))
    assert "dropout" in rec.unrecorded["attn"] and "attn" not in rec
    assert "NOT RECORDED attn" in repr(rec)
    odd = Net(ExplicitAttention("other"))
    with pytest.warns(attnviz.CaptureWarning, match=r"NOT recorded.*attn: an einsum"):
        with attnviz.capture(odd) as rec:
            odd(torch.randn(1, 3, 4, 4))
    assert list(rec.unrecorded) == ["attn"]


class PoolMixer(nn.Module):
    """PoolFormer's token mixer: no attention at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1) - x


def test_a_model_without_attention_is_told_so():
    net = Net(PoolMixer())
    with pytest.raises(ValueError, match="Net applied no attention in this forward pass"):
        with attnviz.capture(net):
            net(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="built of torch.nn's own layers only"):
        attnviz.capture(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))


def test_kinds_and_blocks_select_found_attention_too():
    torch.manual_seed(4)
    net = Net(SdpaAttention())
    with pytest.raises(ValueError, match="no attention module of kind"):
        with attnviz.capture(net, kinds="channel"):
            pass
    rec = _capture(net, torch.randn(1, 3, 4, 4), kinds="self", blocks="attn")
    assert list(rec) == ["attn"]
    with pytest.raises(ValueError, match="matches no attention module"):
        attnviz.capture(net, blocks="layer9*")


def test_hooks_and_the_torch_function_mode_are_gone_after_a_raise():
    net = Net(SdpaAttention())
    before = [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules()]

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with attnviz.capture(net):
            net(torch.randn(1, 3, 4, 4))
            raise Boom
    assert [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules()] == before
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_separable_attention_of_mobilevit_v2_is_recorded_as_context_scores():
    timm = pytest.importorskip("timm")
    torch.manual_seed(5)
    model = timm.create_model("mobilevitv2_050", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    rec = _capture(model, x)
    ctx = rec.select(kind="context")
    assert ctx and all(c.ok for c in rec.checks)
    r = ctx[0]
    p = r.meta["offsets"]
    ph, pw = r.meta["patch"]
    # each pixel offset's scores are a distribution over the patches
    by_offset = r.map.reshape(2, -1, ph, r.map.shape[-1] // pw, pw).sum((1, 3))
    torch.testing.assert_close(by_offset, torch.ones(2, ph, pw))
    assert p == ph * pw and r.view()[1].shape == r.map.shape


def test_the_function_mode_is_off_inside_registered_modules():
    """Registered modules are read by their probes: the kernel tracker steps aside while they
    run (every op under a torch function mode costs time), and so it does in the residual
    blocks around them, whose own code calls no softmax (attnviz.probes.scan)."""
    from torch.overrides import _get_current_function_mode_stack

    from attnviz.models import small_resnet
    from attnviz.probes.kernels import Tracker

    model = small_resnet(10, attention="cbam", width=8).eval()
    seen = {}

    def spy(name):
        def hook(module, args):
            seen[name] = any(isinstance(m, Tracker) for m in _get_current_function_mode_stack())

        return hook

    model.layer2[0].attention.spatial_gate.register_forward_pre_hook(spy("inside CBAM"))
    model.layer2[0].conv2.register_forward_pre_hook(spy("in the block"))
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(torch.rand(2, 3, 32, 32))
    assert seen == {"inside CBAM": False, "in the block": False}
    assert not _get_current_function_mode_stack()  # nothing left behind
    assert len(rec.select(kind="spatial")) == 4


@pytest.mark.parametrize("mode", ["full", "factors"])
def test_the_matrix_honours_an_sdpa_scale_in_both_capture_modes(mode):
    """``scaled_dot_product_attention(..., scale=0.37)`` applies softmax(q k^T * 0.37), not
    the default 1 / sqrt(d) (here 0.5): the whole matrix and the factors alike."""
    torch.manual_seed(6)
    net = Net(SdpaAttention(heads=2, scale=0.37)).eval()  # d = 4: the default would be 0.5
    x = torch.randn(2, 3, 4, 5)
    q, k, _ = net.attn.qkv_heads(net.stem(x))
    expected = (q @ k.transpose(-2, -1) * 0.37).softmax(-1)
    unscaled = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    assert (expected - unscaled).abs().max() > 1e-3  # the scale shows in the matrix
    rec = _capture(net, x, attention=mode)
    r = rec["attn"]
    assert isinstance(r, attnviz.records.FactoredAttentionRecord) == (mode == "factors")
    torch.testing.assert_close(r.matrix, expected, rtol=1e-5, atol=1e-6)
    assert rec.checks and all(c.ok for c in rec.checks)


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention through the fused kernel: 4 query heads share 2 key/value
    heads (``enable_gqa=True``); query head h reads key/value head h // 2."""

    def __init__(self, c: int = 8, heads: int = 4, kv_heads: int = 2, d: int = 4) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.d = heads, kv_heads, d
        self.q, self.kv = nn.Linear(c, heads * d), nn.Linear(c, 2 * kv_heads * d)
        self.proj = nn.Linear(heads * d, c)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, _, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q = self.q(t).reshape(b, h * w, self.heads, self.d).transpose(1, 2)
        kv = self.kv(t).reshape(b, h * w, 2, self.kv_heads, self.d).permute(2, 0, 3, 1, 4)
        return q, kv[0], kv[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_heads(x)
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, -1))
        return out.transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("mode", ["full", "factors"])
def test_grouped_query_heads_read_their_own_key_value_head(mode):
    """With ``enable_gqa``, query head h attends with key head h // (heads / kv_heads)
    (torch's repeat_interleave), not h % kv_heads: heads 1 and 2 tell the two apart."""
    torch.manual_seed(7)
    net = Net(GroupedQueryAttention()).eval()
    x = torch.randn(2, 3, 3, 4)
    q, k, _ = net.attn.qkv_heads(net.stem(x))
    assert q.shape[1] == 4 and k.shape[1] == 2
    expected = torch.stack(
        [(q[:, h] @ k[:, h // 2].transpose(-2, -1) / 2.0).softmax(-1) for h in range(4)], 1
    )  # scale 1 / sqrt(d) = 1 / 2
    assert (expected[:, 1] - expected[:, 2]).abs().max() > 1e-3  # the two kv heads differ
    rec = _capture(net, x, attention=mode)
    r = rec["attn"]
    assert r.heads == 4
    torch.testing.assert_close(r.matrix, expected, rtol=1e-5, atol=1e-6)
    assert rec.checks and all(c.ok for c in rec.checks)


def test_a_probe_keeps_its_record_class_whatever_its_calls_emit():
    """A kernel kept as its factors and one kept whole give their own record classes, and
    the probe's class is never reassigned by a call (each emission carries its own)."""
    from attnviz.probes.kernels import KernelProbe

    net = Net(SdpaAttention(heads=2, scale=0.37)).eval()
    x = torch.randn(2, 3, 4, 5)
    kinds = {}
    for mode in ("factors", "full", "factors"):
        cap = attnviz.capture(net, attention=mode)
        with cap as rec, torch.no_grad():
            net(x)
        kinds.setdefault(mode, set()).add(type(rec["attn"]))
        probes = list(cap._kernel_probes.values())
        assert probes and all("record_type" not in vars(p) for p in probes)
    assert kinds == {
        "factors": {attnviz.records.FactoredAttentionRecord},
        "full": {attnviz.records.SelfAttentionRecord},
    }
    assert KernelProbe.record_type is attnviz.records.SelfAttentionRecord
