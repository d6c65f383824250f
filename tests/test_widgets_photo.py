"""PhotoExplainer: top-5, SE-weighted maps and Grad-CAM are the network's, computed once."""

from __future__ import annotations

import pytest
import torch

import attnviz
from attnviz.maps import weighted_activation
from attnviz.photos import load_sample, network_view, prepare, sample_photos
from attnviz.widgets import PhotoExplainer, PhotoPicker
from attnviz.zoo import pretrained, top_classes


@pytest.fixture(scope="module")
def pre():
    return pretrained("mobilenet_v3_small", weights=None)


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
    assert not app.root.children[0].value == ""  # the random-weights banner is shown
    app.close()


def test_target_change_computes_one_gradcam_and_redraws(pre, monkeypatch):
    app = PhotoExplainer(pre, picker=PhotoPicker(value=sample_photos()[0], preview_size=64))
    before = app._cam_png.value
    calls = []
    import attnviz.explain as explain

    real = explain.gradcam
    monkeypatch.setattr(explain, "gradcam", lambda *a, **k: calls.append(k) or real(*a, **k))
    second = app._target.options[1][1]
    app._target.value = second
    assert len(calls) == 1 and calls[0]["targets"] == [second]
    assert app._cam_png.value != before
    app._target.value = app._target.options[0][1]  # cached: no new Grad-CAM
    assert len(calls) == 1
    app.close()


def test_network_view_is_the_centre_crop_the_transforms_take(pre):
    img = load_sample(sample_photos()[0])
    view = network_view(img, pre.transforms, max_side=100)
    assert view.size[0] == view.size[1] <= 100
