"""Every attention family a user can download, loaded through its library's public loading
call (weights saved to a local file first: offline), explained on a shipped photo."""

from __future__ import annotations

import os
import warnings
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torchvision

from attnviz import maps, render
from attnviz.explain import comparison_figure, explain
from attnviz.photos import load_sample
from attnviz.records import LocalAttentionRecord
from attnviz.widgets import ModelPicker, PhotoExplainer, PhotoPicker
from attnviz.zoo import FAMILIES, Family, pretrained

timm = pytest.importorskip("timm")

#: family -> (a model of it, small enough for CI; the record kind its attention gives)
CASES = {
    "vision transformer": ("timm/deit_tiny_distilled_patch16_224.fb_in1k", "self"),
    "BoTNet": ("timm/botnet26t_256.c1_in1k", "self"),
    "HaloNet": ("timm/halonet26t.a1h_in1k", "self"),
    "GCNet": ("timm/gcresnet33ts.ra2_in1k", "context"),
    "ResNeSt": ("timm/resnest14d.gluon_in1k", "branch"),
    "SKNet": ("timm/skresnet18.ra_in1k", "branch"),
    "ECA": ("timm/ecaresnet26t.ra2_in1k", "channel"),
    "squeeze-and-excitation": ("mobilenet_v3_large", "channel"),
    "Swin": ("swin_t", "self"),
    "MaxViT / CoAtNet": ("timm/maxvit_tiny_tf_224.in1k", "self"),
    "BEiT / EVA / CaiT": ("timm/cait_xxs24_224.fb_dist_in1k", "self"),
    "PVT / Twins": ("timm/pvt_v2_b0.in1k", "self"),
}


def test_every_family_is_covered_and_every_model_name_exists():
    assert set(CASES) | {"CBAM"} == set(FAMILIES)
    for family, (name, _) in CASES.items():
        assert name in FAMILIES[family].models
    for fam in FAMILIES.values():
        for name in fam.models:
            if name.startswith("timm/"):
                assert timm.is_model(name[5:]) and timm.list_pretrained(name[5:]), name
            elif name != "official-cbam":
                assert torchvision.models.get_model_weights(name).DEFAULT.meta["categories"]


def _load_from_local_file(name: str, tmp_path, monkeypatch):
    """Random weights saved where the user's library loads them from, then loaded by the
    same call a user makes (pretrained(name) / pretrained(name, weights=file))."""
    torch.manual_seed(3)
    if name.startswith("timm/"):
        state = timm.create_model(name[5:]).state_dict()
        path = tmp_path / "weights.pth"
        torch.save(state, path)
        return pretrained(name, weights=path), state
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights(name).DEFAULT
    state = torchvision.models.get_model(name).state_dict()
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return pretrained(name), state


@pytest.mark.parametrize("family", list(CASES))
def test_each_family_loads_through_its_library_and_shows_its_attention_on_a_photo(
    family, tmp_path, monkeypatch
):
    name, kind = CASES[family]
    pre, state = _load_from_local_file(name, tmp_path, monkeypatch)
    assert pre.pretrained
    for k, v in pre.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed faithfulness check is a CaptureWarning
        ex = explain(pre, load_sample("chelsea"), display_side=160)
    assert all(c.ok for c in ex.recording.checks)
    kinds = {r.kind for r in ex.recording.values()}
    assert kind in kinds, (family, kinds)
    label, rgb = ex.picture()
    assert rgb.shape == ex.view.shape and rgb.dtype == np.uint8
    assert len(ex.top(5)) == 5 and ex.gradcam().shape == ex.x.shape[-2:]
    if kind == "branch":
        assert ex.branches and label == "branch choice per channel"
    if family == "HaloNet":
        assert any(isinstance(r, LocalAttentionRecord) for r in ex.recording.values())
    if family == "vision transformer":
        assert ex.recording[ex.default_block].prefix == ("cls", "dist")
        assert maps.ROLLOUT in ex.views


def test_halonet_windows_hold_every_key_a_query_sees():
    m = timm.create_model("halonet26t").eval()
    ex = explain(pretrained("timm/halonet26t", weights=None), load_sample("coffee"))
    del m
    local = [r for r in ex.recording.values() if isinstance(r, LocalAttentionRecord)]
    assert local
    for r in local:
        hq, wq = r.query_size
        for cell in [(0, 0), (hq - 1, wq - 1), (hq // 2, wq // 3)]:
            row = r.head_matrix()[0, cell[0] * wq + cell[1]].reshape(r.key_size)
            r0, c0, r1, c1 = r.window(cell)
            inside = row[r0:r1, c0:c1].sum()
            assert row.sum() > 0 and torch.isclose(inside, row.sum())  # nothing outside
            assert (r1 - r0) <= r.meta["window"] and (c1 - c0) <= r.meta["window"]


def test_a_backbone_without_classifier_shows_attention_only():
    pre = pretrained("timm/vit_small_patch16_224.dino", weights=None)
    assert not pre.classifier
    ex = explain(pre, load_sample("chelsea"))
    assert ex.top() == [] and ex.probs is None
    with pytest.raises(ValueError, match="no classifier"):
        ex.gradcam()
    assert ex.attention()[0].startswith("class-token")


# -- the photo explainer with a model picker -----------------------------------------------------
SMALL = {
    "vision transformer": Family(
        "vision transformer",
        "self-attention",
        "cls",
        ("timm/deit_tiny_distilled_patch16_224", "timm/vit_tiny_patch16_224"),
    ),
    "SKNet": Family("SKNet", "branches", "choice", ("timm/skresnet18",)),
}


def test_switching_family_model_and_head_changes_the_pictures():
    picker = ModelPicker(SMALL, weights=None)
    app = PhotoExplainer(picker, picker=PhotoPicker(value="chelsea", preview_size=64))
    s = app.current()
    assert s["model"] == "timm/deit_tiny_distilled_patch16_224" and not s["pretrained"]
    assert "Random weights" in app.banner
    r = app.ex.recording[s["block"]]
    torch.testing.assert_close(s["map"], r.token_attention("cls")[0])
    before = app.pictures()["se"]
    app.select(block=s["block"], head=2)
    torch.testing.assert_close(app.current()["map"], r.token_attention("cls", head=2)[0])
    assert app.pictures()["se"] != before
    app.select(block=maps.ROLLOUT)
    assert app.controls["head"].disabled and app.current()["label"].startswith("attention rollout")
    picker.select("vision transformer", "timm/vit_tiny_patch16_224")
    assert app.current()["model"] == "timm/vit_tiny_patch16_224"
    shown = app.pictures()["se"]
    picker.select("SKNet")
    s = app.current()
    assert s["model"] == "timm/skresnet18" and s["label"] == "branch choice per channel"
    assert s["map"] is None and app.pictures()["se"] != shown
    with pytest.raises(ValueError, match="no family"):
        picker.select("nope")
    app.close()


def test_weights_that_cannot_be_had_fall_back_to_random_with_the_reason():
    def offline(name, weights):
        if weights is not None:
            raise OSError("no network")
        return pretrained(name, weights=None)

    picker = ModelPicker(SMALL, family="SKNet", loader=offline)
    assert picker.pre is not None and not picker.pre.pretrained
    assert "Random weights" in picker.status and "no network" in picker.status


def _where(big: np.ndarray, small: np.ndarray) -> list[tuple[int, int]]:
    """(row, column) of every place the picture ``small`` appears in ``big``, pixel for pixel."""
    h, w = small.shape[:2]
    corner = np.all(big[: big.shape[0] - h + 1, : big.shape[1] - w + 1] == small[0, 0], axis=2)
    return [
        (int(y), int(x))
        for y, x in zip(*np.nonzero(corner))
        if np.array_equal(big[y : y + h, x : x + w], small)
    ]


def test_the_comparison_figure_has_one_row_per_family():
    rows = [
        (fam, explain(pretrained(name, weights=None), load_sample("chelsea"), display_side=96))
        for fam, name in [("ViT", "timm/vit_tiny_patch16_224"), ("SKNet", "timm/skresnet18")]
    ]
    fig = comparison_figure(rows, side=96)
    assert fig.width >= 3 * 96 and fig.height >= 2 * (96 + 30)
    # each row: the network's input, the attention it applied, Grad-CAM of its prediction,
    # side by side in that order, each found once in the figure, pixel for pixel
    pixels = np.asarray(fig.convert("RGB"))
    tops = []
    for _, ex in rows:
        attention = ex.picture()[1]
        cam = render.overlay(ex.view, ex.gradcam())
        panels = [render.fit_height(p, 96) for p in (ex.view, attention, cam)]
        assert not np.array_equal(panels[0], panels[1]) and not np.array_equal(panels[0], panels[2])
        found = [_where(pixels, p) for p in panels]
        assert [len(f) for f in found] == [1, 1, 1], found
        (y0, x0), (y1, x1), (y2, x2) = (f[0] for f in found)
        assert y0 == y1 == y2 and x0 < x1 < x2
        tops.append(y0)
    assert tops[0] + 96 < tops[1]  # one row per family, in the order given
    # the two families' attention panels differ (a branch chart vs a class-token map)
    assert not np.array_equal(rows[0][1].picture()[1], rows[1][1].picture()[1])


def test_every_head_of_a_vit_block_over_the_photo():
    pre = pretrained("timm/vit_tiny_patch16_224", weights=None)
    inputs = {}
    hooks = [
        m.register_forward_hook(lambda m, args, out, n=n: inputs.__setitem__(n, args[0]))
        for n, m in pre.model.named_modules()
        if n.endswith(".attn")
    ]
    try:
        ex = explain(pre, load_sample("chelsea"), display_side=64)
    finally:
        for h in hooks:
            h.remove()
    grid = ex.head_grid(columns=2)  # 3 heads: 2 rows of 2 cells, one blank
    assert grid.width > 2 * 64 and grid.height > 2 * 64
    # each head's matrix is what that head computes from its q and k
    block = ex.default_block
    attn, r = pre.model.get_submodule(block), ex.recording[block]
    x = inputs[block]
    b, n, _ = x.shape
    with torch.no_grad():
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        expected = torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)
    assert r.heads == 3 and r.matrix.shape == expected.shape
    torch.testing.assert_close(r.matrix, expected, atol=1e-5, rtol=0)
    # and cell h of the grid is head h's class-token row over the photo
    pixels = np.asarray(grid.convert("RGB"))
    cells = []
    for h in range(3):
        _, m = ex.attention(block, h)
        torch.testing.assert_close(m, expected[0, h, 0, 1:].reshape(14, 14), atol=1e-5, rtol=0)
        found = _where(pixels, render.overlay(ex.view, m))
        assert len(found) == 1, (h, found)
        cells.append(found[0])
    (y0, x0), (y1, x1), (y2, x2) = cells
    assert y0 == y1 < y2 and x0 < x1 and x2 == x0  # heads 0, 1 on the first row, 2 below
    with pytest.raises(ValueError, match="not a self-attention block"):
        ex.head_grid(maps.ROLLOUT)
