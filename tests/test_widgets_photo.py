"""PhotoExplainer: top-5, SE-weighted maps and Grad-CAM are the network's, computed once."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import attnviz
from attnviz import render
from attnviz.cam import gradcam
from attnviz.maps import weighted_activation
from attnviz.photos import load_sample, network_view, prepare, sample_photos
from attnviz.widgets import PhotoExplainer, PhotoPicker
from attnviz.zoo import pretrained, top_classes


@pytest.fixture(scope="module")
def pre():
    return pretrained("mobilenet_v3_small", weights=None)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_shows_the_networks_top5_and_se_maps(pre):
    app = PhotoExplainer(pre, picker=PhotoPicker(value=sample_photos()[0], preview_size=64))
    shown = app.current()
    expected = top_classes(pre, load_sample(sample_photos()[0]))
    assert [n for n, _ in shown["top5"]] == [n for n, _ in expected]
    x = prepare(load_sample(sample_photos()[0]), pre.transforms)
    with torch.no_grad(), attnviz.capture(pre.model, kinds="channel", features=True) as rec:
        pre.model(x)
    r = rec[shown["block"]]
    torch.testing.assert_close(shown["map"], weighted_activation(r.features, r.weights)[0])
    assert shown["label"] == "SE-weighted activation"
    assert shown["gradcam"].shape == x.shape[-2:]
    top = shown["target"]
    torch.testing.assert_close(shown["gradcam"], gradcam(pre.model, x, targets=[top])[0])
    pictures, view = app.pictures(), app.ex.view  # the maps over the region the network sees
    expected = render.overlay(view, shown["gradcam"], alpha=app.alpha)
    np.testing.assert_array_equal(_decode(pictures["cam"]), expected)
    expected = render.overlay(view, shown["map"], alpha=app.alpha)
    np.testing.assert_array_equal(_decode(pictures["se"]), expected)
    assert not app.root.children[0].value == ""  # the random-weights banner is shown
    app.close()


def test_target_change_computes_one_gradcam_and_redraws(pre, monkeypatch):
    app = PhotoExplainer(pre, picker=PhotoPicker(value=sample_photos()[0], preview_size=64))
    before = app.pictures()["cam"]
    target = app.controls["target"]
    calls = []
    import attnviz.explain as explain

    real = explain.gradcam
    monkeypatch.setattr(explain, "gradcam", lambda *a, **k: calls.append(k) or real(*a, **k))
    second = target.options[1][1]
    target.value = second
    assert len(calls) == 1 and calls[0]["targets"] == [second]
    assert app.pictures()["cam"] != before
    target.value = target.options[0][1]  # cached: no new Grad-CAM
    assert len(calls) == 1
    assert app.pictures()["cam"] == before
    app.close()


def test_network_view_is_the_centre_crop_the_transforms_take(pre):
    img = load_sample(sample_photos()[0])
    view = network_view(img, pre.transforms, max_side=100)
    assert view.size[0] == view.size[1] <= 100
    t = pre.transforms  # what the network sees, unnormalised, at the view's size
    x = (
        prepare(img, t)[0] * torch.tensor(t.std)[:, None, None]
        + torch.tensor(t.mean)[:, None, None]
    )
    seen = F.interpolate(x.clamp(0, 1)[None], size=view.size[::-1], mode="area")[0]
    seen = seen.permute(1, 2, 0).numpy()
    shown = np.asarray(view.convert("RGB")) / 255
    whole = np.asarray(img.convert("RGB").resize(view.size)) / 255  # the uncropped photo
    assert np.abs(shown - seen).mean() < 0.03 < np.abs(whole - seen).mean()
