"""The channel gallery: a statistics file's top and bottom images per channel."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import attnviz
from attnviz import render, shipped
from attnviz.data import digits_on_photos
from attnviz.stats import dataset_stats
from attnviz.widgets import ChannelGallery

SIDE = 72  # the gallery's default tile


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    test = digits_on_photos("test", n=120, seed=2)
    data = TensorDataset(test.images, test.labels)
    path = tmp_path_factory.mktemp("stats") / "se.pt"
    model = shipped.load("resnet10_se")
    dataset_stats(model, data, out=path, num_classes=10, top_k=6, progress=False)
    return path, data, model


@pytest.fixture(scope="module")
def weights(setup):
    """Every image's channel weights, block -> N x C (float64), captured afresh."""
    _, data, model = setup
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(data), 64):  # the statistics' batches
        with torch.no_grad(), attnviz.capture(model, kinds="channel") as rec:
            model(data.tensors[0][start : start + 64])
        for name, r in rec.items():
            parts.setdefault(name, []).append(r.weights.double())
    return {name: torch.cat(p) for name, p in parts.items()}


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _strip(data, indices, k) -> np.ndarray:
    """The images ``indices`` as the gallery shows them: SIDE-pixel tiles, k per row."""
    tiles = [
        np.asarray(Image.fromarray(render.to_uint8_rgb(data[i][0])).resize((SIDE, SIDE)))
        for i in indices
    ]
    return render.montage(tiles, ncols=k)


def _check_shown(g, data, weights) -> None:
    """The top-k shown are exactly the k largest weights of the channel (best first, ties by
    data set index), the bottom-k the k smallest, and the pictures show those images and
    the channel's mean weight per class."""
    w = weights[g.block][:, g.channel]
    top = torch.argsort(w, descending=True, stable=True)[: g.k]
    bottom = torch.argsort(w, stable=True)[: g.k]
    now = g.current()
    assert now["top"] == top.tolist() and now["bottom"] == bottom.tolist()
    np.testing.assert_allclose(now["top_weights"], w[top].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(now["bottom_weights"], w[bottom].numpy(), atol=1e-6, rtol=0)
    assert now["top_weights"][0] > now["bottom_weights"][0]
    pictures = g.pictures()
    np.testing.assert_array_equal(_decode(pictures["top"]), _strip(data, now["top"], g.k))
    np.testing.assert_array_equal(_decode(pictures["bottom"]), _strip(data, now["bottom"], g.k))
    labels = data.tensors[1]
    means = np.array([float(w[labels == c].mean()) for c in range(10)])
    np.testing.assert_array_equal(_decode(pictures["means"]), render.bar_chart(means, 0.0, 1.0)[0])


def test_shows_the_files_top_images_and_follows_the_slider(setup, weights):
    path, data, _ = setup
    g = ChannelGallery(path, data, k=4)
    assert g.block == g.stats.channel_blocks[-1]
    first = g.current()
    values, index = g.stats.top(g.block, 0)
    assert first["top"] == index[:4].tolist() and first["top_weights"] == values[:4].tolist()
    _check_shown(g, data, weights)
    before = g.pictures()
    g.controls["channel"].value = 7
    assert g.channel == 7
    assert g.current()["top"] == g.stats.top(g.block, 7)[1][:4].tolist()
    assert g.pictures()["means"] != before["means"]
    _check_shown(g, data, weights)
    g.block = g.stats.channel_blocks[0]
    assert g.controls["channel"].max == g.stats.blocks[g.block]["mean"].shape[1] - 1
    _check_shown(g, data, weights)
    with pytest.raises(ValueError, match="channel must be in"):
        g.channel = 10_000
    with pytest.raises(ValueError, match="block must be one of"):
        g.block = "nope"
    g.close()


def test_block_change_redraws_the_gallery(setup):
    path, data, _ = setup
    g = ChannelGallery(path, data, k=4)
    g.channel = 3
    before = {name: _decode(png) for name, png in g.pictures().items()}
    other = g.stats.channel_blocks[1]
    g.controls["block"].value = other  # the user picks another block
    after = {name: _decode(png) for name, png in g.pictures().items()}
    assert g.block == other and g.channel == 3
    for name in ("top", "bottom", "means"):
        assert before[name].shape != after[name].shape or (before[name] != after[name]).any()
    fresh = ChannelGallery(path, data, k=4, block=other)  # opened on that block
    fresh.channel = 3
    for name, png in fresh.pictures().items():
        np.testing.assert_array_equal(after[name], _decode(png))
    assert g.info == fresh.info and other in g.info
    g.close()
    fresh.close()


def test_refuses_a_different_data_set_or_block(setup):
    path, data, _ = setup
    other = TensorDataset(torch.zeros(5, 3, 64, 64), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="of 120 images, this data set"):
        ChannelGallery(path, other)
    with pytest.raises(ValueError, match="block must be one of"):
        ChannelGallery(path, data, block="nope")
