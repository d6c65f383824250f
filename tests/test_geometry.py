"""A self-attention record's token geometry is a typed, frozen ``record.geometry``
(attnviz.records.Geometry), set by the capture from the probe's layout: for a vision
transformer's class token and grid, for Swin's windows and for tokens no layout places.
``record.meta`` holds only facts that are no geometry; its old geometry keys still read,
with a FutureWarning, and a probe that still states them in its Emission.meta has them
folded into the geometry."""

from __future__ import annotations

import dataclasses
import pickle
import warnings

import pytest
import torch
from torch import nn

import attnviz
from attnviz.probes import SelfAttentionProbe
from attnviz.probes.layouts import window_positions
from attnviz.records import (
    FactoredAttentionRecord,
    Geometry,
    SelfAttentionRecord,
    WindowAttentionRecord,
)
from attnviz.records.geometry import LEGACY_KEYS

timm = pytest.importorskip("timm")


def _size(value: object) -> bool:
    return type(value) is tuple and len(value) == 2 and all(type(s) is int for s in value)


def _no_geometry_in_meta(r: SelfAttentionRecord) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # listing meta reads no old key
        assert not set(r.meta) & set(LEGACY_KEYS), dict(r.meta)
        assert not {k for k, _ in r.meta.items()} & set(LEGACY_KEYS)


@pytest.fixture(scope="module")
def vit_records() -> dict[str, SelfAttentionRecord]:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1).eval()
    out = {}
    for attention in ("factors", "full"):
        with torch.no_grad(), attnviz.capture(vit, attention=attention) as rec:
            vit(torch.randn(2, 3, 64, 64))
        r = rec["blocks.0.attn"]
        assert isinstance(r, SelfAttentionRecord)
        out[attention] = r
    return out


@pytest.fixture(scope="module")
def swin_records() -> dict[str, SelfAttentionRecord]:
    torch.manual_seed(1)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=112, depths=(2, 1), num_heads=(2, 4), embed_dim=32
    ).eval()
    with torch.no_grad(), attnviz.capture(swin) as rec:
        swin(torch.randn(1, 3, 112, 112))
    return {n: r for n, r in rec.items() if isinstance(r, SelfAttentionRecord)}


class ChannelMix(nn.Module):
    """Attention among channels: its tokens are no places on the image (as XCiT's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2)  # B x C x HW
        a = (t @ t.transpose(1, 2) / t.shape[-1]).softmax(-1)  # B x C x C
        return (a @ t).reshape_as(x)


def _unplaced_record() -> SelfAttentionRecord:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 5, 1), ChannelMix()).eval()
    with torch.no_grad(), attnviz.capture(model, verify="raise") as rec:
        model(torch.randn(2, 3, 4, 4))
    r = rec["1"]
    assert isinstance(r, SelfAttentionRecord)
    return r


def test_a_vit_record_has_its_class_token_and_patch_grid_as_a_typed_geometry(vit_records):
    for attention, r in vit_records.items():
        made = FactoredAttentionRecord if attention == "factors" else SelfAttentionRecord
        assert type(r) is made
        g = r.geometry
        assert type(g) is Geometry, attention
        assert _size(g.query_size) and _size(g.key_size) and g.query_size == g.key_size == (4, 4)
        assert type(g.prefix) is tuple and g.prefix == ("cls",)
        assert g.query_pos is None and g.key_pos is None and not g.windowed
        assert g.unplaced is None and g.unnamed is False
        assert type(g.source) is str and "VisionTransformer" in g.source
        # the record's grid methods read it
        assert r.prefix == ("cls",) and r.query_size == r.key_size == (4, 4)
        assert r.token_attention("cls").shape == (2, 4, 4)
        _no_geometry_in_meta(r)
        with pytest.raises(dataclasses.FrozenInstanceError):
            g.query_size = (2, 8)  # type: ignore[misc]
    assert vit_records["factors"].geometry == vit_records["full"].geometry


def test_a_swin_record_places_its_windows_tokens_with_typed_positions(swin_records):
    r = swin_records["layers.0.blocks.0.attn"]
    assert isinstance(r, WindowAttentionRecord)
    g = r.geometry
    assert type(g) is Geometry and g.windowed
    assert g.query_size == g.key_size == (28, 28) and _size(g.query_size)
    assert g.prefix == () and g.unplaced is None and g.unnamed is False
    for pos in (g.query_pos, g.key_pos):
        assert isinstance(pos, torch.Tensor) and pos.dtype == torch.int64
        assert tuple(pos.shape) == (16, 49)  # 4 x 4 windows of 7 x 7 tokens
    assert g.query_pos is not None
    expected = window_positions((28, 28), (7, 7), (0, 0), pad_first=False)
    assert torch.equal(g.query_pos, expected) and torch.equal(g.key_pos, expected)
    assert "windows (7, 7), shift (0, 0)" in g.source
    shifted = swin_records["layers.0.blocks.1.attn"].geometry
    assert "shift (3, 3)" in shifted.source and not torch.equal(shifted.query_pos, expected)
    assert shifted != g and g == dataclasses.replace(g)  # compared by value, tensors too
    assert "query_pos=<tensor 16 x 49>" in repr(g)
    _no_geometry_in_meta(r)
    assert r.key_row((50, 50), (112, 112)).shape == (1, 28, 28)


def test_an_unplaced_record_says_why_in_its_geometry_and_its_grid_methods():
    r = _unplaced_record()
    g = r.geometry
    assert type(g) is Geometry
    reason = "attnviz knows no layout for ChannelMix that places its tokens on the image"
    assert type(g.unplaced) is str and g.unplaced == reason
    assert g.query_size is None and g.key_size is None and g.query_pos is None
    assert g.prefix == () and g.unnamed is False
    assert r.matrix.shape == (2, 1, 5, 5)  # recorded exactly all the same
    for ask in (lambda: r.query_size, r.received, lambda: r.key_row((1, 1), (4, 4))):
        with pytest.raises(ValueError, match=reason):
            ask()
    _no_geometry_in_meta(r)


def test_the_old_meta_keys_read_the_geometry_with_a_future_warning(vit_records, swin_records):
    swin = swin_records["layers.0.blocks.1.attn"]
    with pytest.warns(FutureWarning, match=r"meta\['query_pos'\] is geometry.query_pos.*0\.3"):
        assert torch.equal(swin.meta["query_pos"], swin.geometry.query_pos)
    with pytest.warns(FutureWarning, match=r"meta\['layout'\] is geometry.source"):
        assert swin.meta["layout"] == swin.geometry.source
    with pytest.warns(FutureWarning, match=r"meta\['key_size'\] is geometry.key_size"):
        assert swin.meta.get("key_size") == (28, 28)
    vit = vit_records["full"]
    with pytest.warns(FutureWarning, match=r"meta\['prefix'\] is geometry.prefix"):
        assert vit.meta["prefix"] == ("cls",)
    with pytest.warns(FutureWarning):
        assert "query_size" in vit.meta
    unplaced = _unplaced_record()
    with pytest.warns(FutureWarning, match=r"meta\['tokens_unplaced'\] is geometry.unplaced"):
        assert unplaced.meta.get("tokens_unplaced") is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what was never there warns of nothing
        assert vit.meta.get("tokens_unplaced") is None and "query_pos" not in vit.meta
        with pytest.raises(KeyError):
            vit.meta["tokens_unnamed"]
        assert vit_records["factors"].meta["kernel"] == "scaled_dot_product_attention"
        assert unplaced.meta["kernel"] == "softmax, then matrix @ values"
    # a copy keeps the facts and reads the same geometry
    factors = vit_records["factors"]
    again = pickle.loads(pickle.dumps(factors))
    assert again.geometry == factors.geometry and dict(again.meta) == dict(factors.meta)
    with pytest.warns(FutureWarning):
        assert again.meta["prefix"] == ("cls",)


class Dense(nn.Module):
    """Self-attention over a map's positions, as a user writes it."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.q, self.k = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), x.flatten(2)
        a = torch.softmax(q.transpose(1, 2) @ k, -1)  # B x HW x HW
        return (a @ v.transpose(1, 2)).transpose(1, 2).reshape_as(x)


class OldStyleProbe(SelfAttentionProbe):
    """A user's probe written before Geometry: it states its grids in Emission.meta."""

    def end(self, args, kwargs, output):
        em = super().end(args, kwargs, output)
        em.geometry = None
        em.meta.update(query_size=[2, 8], key_size=(2, 8), layout="mine", note="kept")
        return em


def test_a_probe_stating_geometry_in_meta_has_it_folded_into_the_geometry():
    attnviz.register_attention_type(
        Dense, "self", probe=lambda name, m: OldStyleProbe(name, m, function="softmax")
    )
    try:
        model = nn.Sequential(Dense()).eval()
        with pytest.warns(FutureWarning, match=r"Emission.meta.*meta\['query_size'\]"):
            with torch.no_grad(), attnviz.capture(model, verify="raise") as rec:
                model(torch.randn(2, 4, 4, 4))
    finally:
        attnviz.unregister_attention_type(Dense)
    r = rec["0"]
    assert r.geometry == Geometry((2, 8), (2, 8), source="mine")
    assert r.query_size == (2, 8) and r.received().shape == (2, 2, 8)  # not the input's 4 x 4
    assert dict(r.meta) == {"note": "kept"}


def test_geometry_checks_its_fields():
    assert Geometry([3, 4], None).query_size == (3, 4)
    with pytest.raises(TypeError, match="query_size must be"):
        Geometry(query_size=(1, 2, 3))
    with pytest.raises(TypeError, match="prefix must be a tuple"):
        Geometry(prefix="cls")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="query_pos must be"):
        Geometry(query_pos=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="unplaced must be the reason"):
        Geometry(unplaced=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no token geometry"):
        attnviz.ChannelRecord("se", "SE")._describe({}, Geometry())
