"""The channel gallery: a statistics file's top and bottom images per channel."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from attnviz import shipped
from attnviz.data import digits_on_photos
from attnviz.stats import dataset_stats
from attnviz.widgets import ChannelGallery


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    test = digits_on_photos("test", n=120, seed=2)
    data = TensorDataset(test.images, test.labels)
    path = tmp_path_factory.mktemp("stats") / "se.pt"
    dataset_stats(
        shipped.load("resnet10_se"), data, out=path, num_classes=10, top_k=6, progress=False
    )
    return path, data


def test_shows_the_files_top_images_and_follows_the_slider(setup):
    path, data = setup
    g = ChannelGallery(path, data, k=4)
    assert g.block == g.stats.channel_blocks[-1]
    first = g.current()
    values, index = g.stats.top(g.block, 0)
    assert first["top"] == index[:4].tolist() and first["top_weights"] == values[:4].tolist()
    assert first["top_weights"][0] >= first["top_weights"][-1] > first["bottom_weights"][0] - 1
    before = g.pictures()
    g.channel = 7
    assert g.current()["top"] == g.stats.top(g.block, 7)[1][:4].tolist()
    assert g.pictures()["means"] != before["means"]
    g.block = g.stats.channel_blocks[0]
    assert g._channel.max == g.stats.blocks[g.block]["mean"].shape[1] - 1
    with pytest.raises(ValueError, match="channel must be in"):
        g.channel = 10_000
    g.close()


def test_refuses_a_different_data_set(setup):
    path, _ = setup
    other = TensorDataset(torch.zeros(5, 3, 64, 64), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="computed on a data set of 120 images"):
        ChannelGallery(path, other)
