"""SpatialExplorer: the shown Ms is the captured record, Grad-CAM is lazy and cached."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import attnviz
from attnviz import cam, render
from attnviz.models import small_resnet
from attnviz.widgets import SpatialExplorer
from attnviz.widgets import spatial as sp

N, SIZE = 4, 32
BLOCKS = [f"layer{k}.0.attention.spatial_gate" for k in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return small_resnet(10, attention="cbam", width=8)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(N, 3, SIZE, SIZE)


@pytest.fixture
def cams(monkeypatch):
    """Every Grad-CAM the app computes, as (image index rows, targets)."""
    calls = []

    def counting(model, x, layer, targets, **kwargs):
        calls.append(list(targets))
        return cam.gradcam(model, x, layer, targets, **kwargs)

    monkeypatch.setattr(sp, "gradcam", counting)
    return calls


@pytest.fixture
def app(model, images, cams):
    explorer = SpatialExplorer(model, images, labels=[3, 1, 4, 1], overview_count=3)
    yield explorer
    explorer.close()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _captured(model, images):
    with torch.no_grad(), attnviz.capture(model, kinds=("spatial", "channel")) as rec:
        out = model(images)
    return rec, out


def test_blocks_are_the_cbam_spatial_records(app):
    options = app.controls["block"].options
    assert [value for _label, value in options] == BLOCKS
    assert [label for label, _value in options] == [b[:8] for b in BLOCKS]
    assert app.block == BLOCKS[-1]


def test_shown_map_and_gate_are_the_captured_records(model, images, app):
    rec, out = _captured(model, images)
    app.index = 2
    for block in (BLOCKS[0], BLOCKS[2]):
        app.block = block
        s = app.current()
        torch.testing.assert_close(s["map"], rec[block].map[2], atol=1e-6, rtol=0)
        gate = block.replace("spatial_gate", "channel_gate")
        assert s["channel_block"] == gate
        torch.testing.assert_close(s["channel_weights"], rec[gate].weights[2], atol=1e-6, rtol=0)
        image = render.upscale(images[2], app.scale)
        expected = render.overlay(image, s["map"], alpha=0.5, cmap="jet")
        pictures = app.pictures()
        np.testing.assert_array_equal(_decode(pictures["cbam"]), expected)
        bars = render.bar_chart(s["channel_weights"].double().numpy(), 0.0, 1.0)[0]
        np.testing.assert_array_equal(_decode(pictures["gate"]), bars)  # Mc's bars
        expected = render.overlay(image, s["gradcam"], alpha=0.5, cmap="jet", vmin=0, vmax=1)
        np.testing.assert_array_equal(_decode(pictures["cam"]), expected)
    probs = out[2].softmax(0)
    assert s["prediction"] == int(probs.argmax())
    assert s["probability"] == pytest.approx(float(probs.max()), abs=1e-6)
    assert s["label"] == 4 and s["range"] == "per-map"


def test_gradcam_is_lazy_cached_and_the_grad_cam_map(model, images, app, cams):
    assert len(cams) == 1  # the first image, predicted class
    s = app.current()
    expected = cam.gradcam(model, images[:1], model.layer4[-1], [s["prediction"]])[0]
    torch.testing.assert_close(s["gradcam"], expected)
    app.controls["opacity"].value = 0.3
    app.controls["cmap"].value = "inferno"
    app.block = BLOCKS[0]
    assert len(cams) == 1  # redraws reuse it
    other = (s["prediction"] + 1) % 10
    app.target = other
    assert cams[-1] == [other] and len(cams) == 2
    assert app.current()["target"] == other
    app.target = None
    app.target = other
    assert len(cams) == 2  # both cached per (image, target, layer)
    app.mode = "overview"
    app.index = 3
    assert len(cams) == 2  # the overview shows no Grad-CAM


def test_slider_moves_change_the_bytes_of_the_same_widgets(app):
    names = ("cbam", "cam", "gate")
    panels = app.panels

    def shown() -> list[bytes]:
        pictures = app.pictures()
        return [pictures[name] for name in names]

    assert app.visible_pictures() == list(names)
    before = shown()
    app.controls["opacity"].value = 0.9
    after = shown()
    assert after[0] != before[0] and after[1] != before[1] and after[2] == before[2]
    app.controls["image"].value = 1
    assert all(a != b for a, b in zip(shown(), after))
    cbam = app.pictures()["cbam"]
    app.controls["cmap"].value = "gray"
    assert app.pictures()["cbam"] != cbam
    app.controls["range"].value = "fixed"
    assert app.current()["range"] == "shared [0, 1]"
    assert all(app.panels[name] is widget for name, widget in panels.items())
    assert app.log.outputs == ()


def test_overview_grid_is_blocks_by_images(model, images, app):
    app.index = 2
    app.mode = "overview"
    assert app.visible_pictures() == ["grid"]  # the single-mode panels are hidden
    spec = app.current()["overview"]
    assert spec["indices"] == [1, 2, 3]  # a row of 3 that fits before the end
    assert spec["blocks"] == BLOCKS and spec["row_labels"] == [b[:8] for b in BLOCKS]
    rec, _ = _captured(model, images)
    for r, block in enumerate(BLOCKS):
        for c, i in enumerate(spec["indices"]):
            torch.testing.assert_close(spec["maps"][r][c], rec[block].map[i], atol=1e-6, rtol=0)
    expected = render.overlay_grid(
        images[1:4],
        spec["maps"],
        spec["row_labels"],
        spec["col_labels"],
        scale=app.grid_scale,
    )
    shown = _decode(app.pictures()["grid"])
    np.testing.assert_array_equal(shown, np.asarray(expected))
    h = 4 + len(BLOCKS) * (SIZE * app.grid_scale + 4)
    assert shown.shape[0] > h and shown.shape[1] > 4 + 3 * (SIZE * app.grid_scale + 4)
    app.mode = "single"
    assert app.visible_pictures() == ["cbam", "cam", "gate"]


@pytest.mark.parametrize("train", [True, False])
def test_model_state_is_left_as_it_was(model, images, train):
    model.train(train)
    model.layer3.train(not train)
    flags = [m.training for m in model.modules()]
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    grad = model.fc.weight.grad
    app = SpatialExplorer(model, images)
    app.index = 1
    app.target = 5
    app.mode = "overview"
    app.close()
    assert [m.training for m in model.modules()] == flags
    assert model.fc.weight.grad is grad and torch.equal(grad, torch.ones_like(grad))
    assert all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model.fc.weight.grad = None
    model.eval()


def test_normalised_images_and_info_line(model, images):
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    normed = (images - mean[:, None, None]) / std[:, None, None]
    with pytest.raises(ValueError, match="mean and std"):
        SpatialExplorer(model, normed)
    names = [f"c{k}" for k in range(10)]
    app = SpatialExplorer(
        model, normed, mean=mean, std=std, class_names=names, target_layer="layer3"
    )
    app.opacity = 0.0
    expected = render.upscale(images[0].clamp(0, 1), app.scale)
    for name in ("cbam", "cam"):  # at opacity 0 both maps leave the image as it is
        assert np.abs(_decode(app.pictures()[name]).astype(int) - expected).max() <= 1
    s = app.current()
    assert s["target_layer"] == "layer3"
    text = app.info
    assert f"prediction c{s['prediction']} (P={s['probability']:.2f})" in text
    assert "Grad-CAM on layer3" in text and "4&times;4" in text
    app.close()


def test_errors_go_to_the_log(model, app):
    def broken(_module, _args):
        raise RuntimeError("forward failed")

    handle = model.register_forward_pre_hook(broken)
    try:
        app.controls["image"].value = 3  # a new image: a forward pass, which fails
    finally:
        handle.remove()
    assert "forward failed" in app.log.outputs[-1]["text"]


def test_display_close_and_bad_inputs(model, images, app):
    assert "application/vnd.jupyter.widget-view+json" in app._repr_mimebundle_()
    app.close()
    app.close()
    with pytest.raises(ValueError, match="block must be"):
        app.block = "layer9"
    with pytest.raises(ValueError, match="target must be"):
        app.target = 10
    with pytest.raises(ValueError, match="no submodule"):
        SpatialExplorer(model, images, target_layer="layer5")
    se = small_resnet(10, attention="se", width=8)
    with pytest.raises(ValueError, match="no attention module of kind|ran no spatial"):
        SpatialExplorer(se, images)
    with pytest.raises(TypeError, match="float"):
        SpatialExplorer(model, (images * 255).to(torch.uint8))


def test_the_value_under_the_pointer_is_the_maps_value_there(app):
    """Hovering the CBAM picture names the pixel, its cell of Ms and Ms's value there."""
    view = app.panels["cbam"]
    hh, ww = app._shown.shape[-2:]
    assert view.size == [hh, ww] and app.under_pointer() is None
    view.hover = [ww - 1, 0]
    at, s = app.under_pointer(), app.current()
    w = s["map"].shape[1]
    assert at["cell"] == (0, w - 1) and at["value"] == float(s["map"][0, w - 1])
    assert f"at ({ww - 1}, 0)" in app.info
    view.hover = []
    assert app.under_pointer() is None and "at (" not in app.info
