"""ChannelExplorer: the bars are the captured s, u_c is scaled by s_c, steps need no forward."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import mobilenet_v3_small

import attnviz
from attnviz import CBAM, SqueezeExcitation, render
from attnviz.widgets import ChannelExplorer

N, SIZE = 3, 64


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return mobilenet_v3_small(weights=None, num_classes=4)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(N, 3, SIZE, SIZE)


@pytest.fixture
def app(model, images):
    explorer = ChannelExplorer(model, images, labels=[2, 0, 1], class_names=["a", "b", "c", "d"])
    yield explorer
    explorer.close()


@pytest.fixture
def forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    yield calls
    handle.remove()


def _captured(model, image, block, features=False):
    with torch.no_grad(), attnviz.capture(model, kinds="channel", features=features) as rec:
        out = model(image[None])
    return rec[block], out


def _panels(app) -> list[bytes]:
    pictures = app.pictures()
    return [pictures["bars"], pictures["before"], pictures["after"]]


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _blocks(app) -> list[str]:
    return [value for _label, value in app.controls["block"].options]


def test_blocks_are_the_channel_attention_records(model, images, app):
    with torch.no_grad(), attnviz.capture(model, kinds="channel") as rec:
        model(images[:1])
    assert _blocks(app) == list(rec)
    assert len(_blocks(app)) == 9  # mobilenet_v3_small's torchvision SE blocks


def test_bar_heights_are_the_captured_weights(model, images, app):
    app.index = 2
    app.block = _blocks(app)[3]
    rec, _ = _captured(model, images[2], app.block)
    torch.testing.assert_close(app.bar_heights(), rec.weights[0].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(app.current()["weights"], rec.weights[0], atol=1e-6, rtol=0)
    c = app.channel
    assert app.current()["weight"] == pytest.approx(float(rec.weights[0, c]), abs=1e-6)


def test_bars_are_drawn_at_their_heights(app):
    """Counted in pixels: each bar is as tall as its weight on the chart's [0, 1] scale."""
    app.block = _blocks(app)[0]  # 16 channels: wide bars
    heights = app.bar_heights().numpy()
    chart = _decode(app.pictures()["bars"])
    base, x0 = render.bar_chart(heights, 0.0, 1.0)  # x0: where each bar starts
    np.testing.assert_array_equal(chart, render.mark_bar(base, x0, app.channel))
    # the scale, read off a chart of full bars (weight 1): its rows and colours
    full, _ = render.bar_chart(np.ones(len(heights)), 0.0, 1.0)
    empty, _ = render.bar_chart(np.zeros(len(heights)), 0.0, 1.0)
    colour = full[np.flatnonzero((full[:, x0[0]] != empty[:, x0[0]]).any(-1))[0], x0[0]]
    rows = np.flatnonzero((full[:, x0[0]] == colour).all(-1))  # the 0 line to weight 1
    assert (np.diff(rows) == 1).all() and len(rows) > 100
    pick = render.mark_bar(full, x0, 0)[rows[0], x0[0]]
    assert (pick != colour).any()
    plot = chart[rows]
    bar = (plot == colour).all(-1) | (plot == pick).all(-1)
    drawn = bar[:, x0].sum(axis=0) - 1  # rows from the 0 line to the top, inclusive
    np.testing.assert_allclose(drawn, heights * (len(rows) - 1), atol=1)
    assert (plot[:, x0[app.channel]] == pick).all(-1).any()  # the selected bar


def test_after_scaling_is_before_times_weight(model, images, app):
    app.index = 1
    app.block = _blocks(app)[5]
    app.channel = 7
    s = app.current()
    rec, _ = _captured(model, images[1], app.block, features=True)
    torch.testing.assert_close(s["before"], rec.features[0, 7], atol=1e-6, rtol=0)
    torch.testing.assert_close(s["after"], s["before"] * s["weight"], atol=1e-7, rtol=0)
    lo, hi = s["scale"]  # one colour scale covers both maps
    for m in (s["before"], s["after"]):
        assert lo <= float(m.min()) and float(m.max()) <= hi


def test_channel_steps_redraw_without_a_forward_pass(app, forwards):
    before = _panels(app)
    panels = app.panels
    app.controls["channel"].value = 3
    after = _panels(app)
    assert all(a != b for a, b in zip(after, before))
    assert list(app.panels) == ["bars", "before", "after"]
    assert all(app.panels[name] is widget for name, widget in panels.items())  # same widgets
    app.block = _blocks(app)[4]  # every block of the image is cached
    app.controls["sort"].value = True
    app.controls["highest"].click()
    assert forwards == []
    assert app.log.outputs == ()


def test_image_change_runs_exactly_one_forward(model, images, app, forwards):
    app.index = 1
    assert len(forwards) == 1
    _, out = _captured(model, images[1], app.block)
    assert app.current()["prediction"] == int(out.argmax())
    assert app.current()["label"] == 0


def test_highest_and_lowest_land_on_argmax_and_argmin(app):
    for block in _blocks(app)[:4]:
        app.block = block
        weights = app.current()["weights"]
        app.controls["highest"].click()
        assert app.channel == int(weights.argmax())
        assert app.current()["rank"] == 1
        app.controls["lowest"].click()
        assert app.channel == int(weights.argmin())
        assert app.current()["weight"] == float(weights.min())


def test_sorted_slider_walks_channels_by_descending_weight(app):
    app.block = _blocks(app)[0]  # 16 channels
    app.channel = 5
    slider, sort = app.controls["channel"], app.controls["sort"]
    sort.value = True
    assert app.channel == 5  # toggling keeps the channel
    assert slider.description == "rank"
    weights = app.current()["weights"]
    walked = []
    for position in range(len(weights)):
        slider.value = position
        walked.append(app.channel)
        assert app.current()["rank"] == position + 1
    assert sorted(walked) == list(range(len(weights)))
    assert (weights[walked].diff() <= 0).all()
    sort.value = False
    assert slider.description == "channel"
    assert slider.value == app.channel == walked[-1]


def test_block_change_keeps_a_valid_channel(app):
    app.block = _blocks(app)[-1]  # 576 channels
    app.channel = 500
    app.block = _blocks(app)[0]  # 16
    assert app.controls["channel"].max == 15 and app.channel == 15
    with pytest.raises(ValueError, match="channel must be"):
        app.channel = 16
    with pytest.raises(ValueError, match="block must be"):
        app.block = "nope"
    with pytest.raises(ValueError, match="index must be"):
        app.index = N


@pytest.mark.parametrize("train", [True, False])
def test_model_mode_and_hooks_are_left_as_they_were(model, images, train):
    model.train(train)
    model.features[3].train(not train)
    flags = [m.training for m in model.modules()]
    app = ChannelExplorer(model, images)
    app.index = 2
    app.controls["channel"].value = 4
    app.close()
    assert [m.training for m in model.modules()] == flags
    assert all(not m._forward_hooks for m in model.modules())
    model.eval()


def test_normalised_images_are_shown_unnormalised(model, images):
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    normed = (images - mean[:, None, None]) / std[:, None, None]
    with pytest.raises(ValueError, match="mean and std"):
        ChannelExplorer(model, normed)
    app = ChannelExplorer(model, normed, mean=mean, std=std)
    app.opacity = 0.0
    expected = render.upscale(images[0].clamp(0, 1), app.scale)
    for name in ("before", "after"):  # at opacity 0 both panels are the image itself
        assert np.abs(_decode(app.pictures()[name]).astype(int) - expected).max() <= 1
    app.close()


def test_html_names_block_channel_weight_rank_label_prediction(app):
    app.channel = 2
    text, s = app.info, app.current()
    for part in (s["block"], "channel 2", f"{s['weight']:.4f}", f"rank {s['rank']}", "label c"):
        assert part in text
    assert f"prediction {'abcd'[s['prediction']]}" in text


def test_se_and_cbam_channel_gates_in_a_small_net():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        SqueezeExcitation(8, reduction=2),
        nn.Conv2d(8, 12, 3, padding=1, stride=2),
        CBAM(12, reduction=3),
    )
    images = torch.rand(2, 1, 16, 16).expand(2, 3, 16, 16)
    app = ChannelExplorer(model, images)
    assert _blocks(app) == ["2", "4.channel_gate"]
    app.block = "4.channel_gate"
    assert len(app.bar_heights()) == 12 and app.controls["channel"].max == 11
    app.channel = 9
    s = app.current()
    assert tuple(s["before"].shape) == (8, 8)  # CBAM's input after the stride-2 conv
    rec, _ = _captured(model, images[0], "4.channel_gate", features=True)
    torch.testing.assert_close(app.bar_heights(), rec.weights[0].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(s["before"], rec.features[0, 9], atol=1e-6, rtol=0)
    assert app.current()["prediction"] is None  # the output is a feature map, not logits
    app.close()


def test_errors_go_to_the_log(model, app):
    def broken(_module, _args):
        raise RuntimeError("forward failed")

    handle = model.register_forward_pre_hook(broken)
    try:
        app.controls["image"].value = 1  # no exception escapes the callback
    finally:
        handle.remove()
    assert "forward failed" in app.log.outputs[-1]["text"]


def test_display_and_close(app):
    bundle = app._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    app.close()
    app.close()


def test_bad_inputs_are_refused(model, images):
    with pytest.raises(TypeError, match="float"):
        ChannelExplorer(model, (images * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ChannelExplorer(model, images[0])
    with pytest.raises(ValueError, match="labels must hold 3"):
        ChannelExplorer(model, images, labels=[1])
    with pytest.raises(ValueError, match="std must give"):
        ChannelExplorer(model, images, std=[1.0, 1.0])
    with pytest.raises(ValueError, match="no recognised attention"):
        ChannelExplorer(nn.Sequential(nn.Conv2d(3, 3, 1)), images)
