"""QueryExplorer: the map shown is the captured row of the query's cell; moves need no forward."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import attnviz
from attnviz import render
from attnviz.models import small_resnet
from attnviz.widgets import QueryExplorer
from attnviz.widgets import query as qw

N, SIZE = 3, 32
BLOCKS = ["layer2.non_local", "layer3.non_local"]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return small_resnet(attention="nonlocal", nonlocal_stages=(2, 3), width=8, num_classes=3)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(N, 3, SIZE, SIZE)


@pytest.fixture
def app(model, images):
    explorer = QueryExplorer(model, images)
    yield explorer
    explorer.close()


@pytest.fixture
def forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    yield calls
    handle.remove()


def _record(model, image, block):
    with torch.no_grad(), attnviz.capture(model, kinds="self") as rec:
        model(image[None])
    return rec[block]


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_blocks_are_the_self_attention_records(app):
    options = app.controls["block"].options
    assert [value for _label, value in options] == BLOCKS == list(app.records())
    assert "16x16 -> 16x16" in options[0][0]


def test_the_map_shown_is_query_map_of_the_chosen_pixel(model, images, app):
    app.index = 1
    app.block = "layer3.non_local"
    app.query = (20, 7)
    s = app.current()
    r = _record(model, images[1], "layer3.non_local")
    assert s["cell"] == (7 * 8 // SIZE, 20 * 8 // SIZE) == r.query_cell((20, 7), (SIZE, SIZE))
    torch.testing.assert_close(s["map"], r.query_map((20, 7), (SIZE, SIZE))[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(s["key_map"].sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    panel = _decode(app.picture())
    assert list(app.pictures()) == ["map"]
    k = app.scale
    assert panel.shape == (SIZE * k, SIZE * k, 3)
    assert tuple(panel[int(7.5 * k), int(20.5 * k)]) == qw.CROSSHAIR_COLOR  # its centre
    box = np.argwhere((panel == qw.CELL_COLOR).all(-1))  # the query cell's box: (1, 5) of 8 x 8
    top, left = box.min(0)
    bottom, right = box.max(0)
    cell = SIZE // 8 * k
    np.testing.assert_allclose(
        [top, left, bottom, right], [cell, 5 * cell, 2 * cell, 6 * cell], atol=2
    )


def test_the_toggle_shows_the_attention_received(model, images, app):
    app.received = True
    s = app.current()
    r = _record(model, images[0], app.block)
    expected = F.interpolate(r.received()[None], size=(SIZE, SIZE), mode="bilinear")[0, 0]
    torch.testing.assert_close(s["map"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(s["key_map"], r.received()[0], atol=1e-6, rtol=0)


def test_moves_re_render_without_a_forward_and_images_take_one(app, forwards):
    pngs = [app.picture()]
    app.query = (3, 29)
    pngs.append(app.picture())
    app.block = BLOCKS[1]
    pngs.append(app.picture())
    app.received = True
    pngs.append(app.picture())
    app.controls["opacity"].value = 0.2
    pngs.append(app.picture())
    assert not forwards and len(set(pngs)) == len(pngs)
    app.index = 2
    assert len(forwards) == 1 and app.current()["index"] == 2 and app.block == BLOCKS[1]


def test_leaves_the_model_as_it_was(model, images):
    model.train()
    app = QueryExplorer(model, images[:1], scale=2)
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert app.picture() and app.scale == 2
    panel, s = _decode(app.picture()), app.current()
    assert panel.shape == (SIZE * 2, SIZE * 2, 3)
    # away from the query's box and crosshair (at the centre): the record's row (float16,
    # as the page holds it), each key a block of pixels, coloured and blended by the rule
    image = render.to_uint8_rgb(images[0])
    m = s["key_map"].numpy().astype(np.float16).astype(np.float64)
    index = np.minimum(255, np.floor((m - m.min()) / (m.max() - m.min()) * 256)).astype(int)
    colour = render.heat._colormap_lut("inferno")[index]  # Hk x Wk x 3
    hk, wk = m.shape
    cells = colour.repeat(SIZE // hk, 0).repeat(SIZE // wk, 1).astype(int)
    a = round(255 * 0.6)
    expected = (cells * a + image.astype(int) * (255 - a) + 127) // 255
    expected = render.upscale(expected.astype(np.uint8), 2)
    np.testing.assert_array_equal(panel[:24, :24], expected[:24, :24])
    assert not np.array_equal(panel[:24, :24], render.upscale(image, 2)[:24, :24])
    app.close()
    app.close()


def test_clear_errors(model, images):
    app = QueryExplorer(model, images[:2])
    with pytest.raises(ValueError, match="query must lie in the 32 x 32 image"):
        app.query = (32, 0)
    with pytest.raises(ValueError, match="block must be one of"):
        app.block = "layer4"
    with pytest.raises(ValueError, match="index must be in"):
        app.index = 5
    app.close()
    with pytest.raises(ValueError, match="no attention module of kind"):
        QueryExplorer(small_resnet(attention="se", width=8), images)
    with pytest.raises(ValueError, match="images"):
        QueryExplorer(model, images[0])


# -- vision transformers and local attention --------------------------------------------------
def test_a_vit_shows_heads_the_class_token_and_the_rollout():
    timm = pytest.importorskip("timm")
    from attnviz.maps import rollout_map

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224").eval()
    images = torch.rand(1, 3, 224, 224)
    app = QueryExplorer(vit, images)
    r = app.record()
    assert [v for _, v in app.controls["show"].options] == ["query", "received", "cls", "rollout"]
    app.query, app.head = (40, 100), 2  # cell (6, 2) of the 14 x 14 patch grid
    s = app.current()
    assert s["cell"] == (6, 2) and s["head"] == 2
    expected = r.matrix[0, 2, 1 + 6 * 14 + 2, 1:].reshape(14, 14)  # the patch's row, patches only
    torch.testing.assert_close(s["key_map"], expected)
    app.show = "cls"
    torch.testing.assert_close(app.current()["key_map"], r.matrix[0, 2, 0, 1:].reshape(14, 14))
    app.show = "rollout"
    torch.testing.assert_close(app.current()["key_map"], rollout_map(app.records())[0])
    with pytest.raises(ValueError, match="show must be one of"):
        app.show = "nope"
    app.close()


def test_halonet_draws_the_window_a_query_sees():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("halonet26t").eval()
    app = QueryExplorer(net, torch.rand(1, 3, 256, 256))
    local = [n for n, r in app.records().items() if r.meta.get("window")]
    app.block = local[0]
    app.query = (5, 5)
    s = app.current()
    r0, c0, r1, c1 = s["window"]
    outside = s["key_map"].clone()
    outside[r0:r1, c0:c1] = 0
    assert s["key_map"].sum() > 0 and outside.abs().max() == 0  # all of its attention inside
    panel, (hk, wk), k = _decode(app.picture()), s["key_size"], app.scale
    drawn = np.argwhere((panel == qw.WINDOW_COLOR).all(-1))  # the window's box, in pixels
    top, left = drawn.min(0)
    bottom, right = drawn.max(0)
    expected = [r0 * 256 / hk * k, c0 * 256 / wk * k, r1 * 256 / hk * k, c1 * 256 / wk * k]
    np.testing.assert_allclose([top, left, bottom, right], expected, atol=2)
    app.close()
