"""torchvision's SE networks through the public weights API, offline from a cached file."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pytest
import torch
from torchvision.models import (
    MobileNet_V3_Small_Weights,
    ResNet50_Weights,
    get_model,
    get_model_weights,
    list_models,
)
from torchvision.ops import SqueezeExcitation

import attnviz
from attnviz.photos import load_sample, prepare
from attnviz.zoo import SE_NETWORKS, Pretrained, predict, pretrained, weights_path

NAME = "mobilenet_v3_small"  # the smallest (2.5 M parameters): keeps these tests fast


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty $TORCH_HOME: nothing cached, so only files a test puts there can load."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def _cache_weights(torch_home, name: str, weights) -> dict[str, torch.Tensor]:
    """Save a state dict where torchvision looks before downloading, as a user's cache holds it.

    ``$TORCH_HOME/hub/checkpoints/<the file name the weights' URL ends with>``; torchvision
    checks the file's hash only when it downloads it.
    """
    torch.manual_seed(1)
    state = get_model(name, weights=None).state_dict()
    state = {k: v + torch.rand_like(v) if v.is_floating_point() else v for k, v in state.items()}
    path = torch_home / "hub" / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_every_listed_network_exists_in_torchvision_and_has_weights():
    available = set(list_models())
    for name in SE_NETWORKS:
        assert name in available, name
        assert get_model_weights(name).DEFAULT.meta["categories"], name


def test_pretrained_loads_the_cached_weights_through_torchvision(torch_home):
    weights = MobileNet_V3_Small_Weights.DEFAULT
    saved = _cache_weights(torch_home, NAME, weights)
    pre = pretrained(NAME, progress=False)
    assert isinstance(pre, Pretrained) and pre.name == NAME and pre.pretrained
    assert pre.weights is weights
    assert not pre.model.training
    loaded = pre.model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert pre.categories == weights.meta["categories"] and len(pre.categories) == 1000
    assert repr(pre.transforms) == repr(weights.transforms())
    assert weights_path(NAME) == (
        torch_home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    )


def test_weights_by_member_and_by_name_load_the_same_file(torch_home):
    saved = _cache_weights(torch_home, NAME, MobileNet_V3_Small_Weights.IMAGENET1K_V1)
    for weights in ("IMAGENET1K_V1", MobileNet_V3_Small_Weights.IMAGENET1K_V1):
        pre = pretrained(NAME, weights=weights, progress=False)
        assert pre.weights is MobileNet_V3_Small_Weights.IMAGENET1K_V1
        assert torch.equal(pre.model.classifier[-1].bias, saved["classifier.3.bias"])


def test_random_weights_need_no_file_and_get_the_architectures_preprocessing(torch_home):
    pre = pretrained(NAME, weights=None)
    assert not pre.pretrained and pre.weights is None and not pre.model.training
    assert pre.categories[:2] == ["class 0", "class 1"] and len(pre.categories) == 1000
    assert repr(pre.transforms) == repr(MobileNet_V3_Small_Weights.DEFAULT.transforms())
    assert list(torch_home.iterdir()) == []  # nothing downloaded or written


def test_the_se_blocks_are_captured():
    pre = pretrained(NAME, weights=None)
    n_se = sum(isinstance(m, SqueezeExcitation) for m in pre.model.modules())
    x = prepare(load_sample("chelsea"), pre.transforms)
    with attnviz.capture(pre.model) as rec:
        pre.model(x)
    weights = rec.select(kind="channel")
    assert len(weights) == n_se > 0
    assert all(r.weights.min() >= 0 and r.weights.max() <= 1 for r in weights)


def test_predict_returns_the_top_classes_and_restores_the_mode():
    pre = pretrained(NAME, weights=None)
    pre.model.train()
    top = predict(pre, load_sample("coffee"), topk=3)
    assert pre.model.training
    assert len(top) == 3 and all(name in pre.categories for name, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    x = prepare(load_sample("coffee"), pre.transforms)
    assert [n for n, _ in predict(pre, x[0], topk=3)] == [n for n, _ in top]
    with pytest.raises(ValueError, match="topk"):
        predict(pre, x, topk=0)
    with pytest.raises(ValueError, match="3 x H x W"):
        predict(pre, torch.zeros(2, 3, 8, 8))


def test_bad_names_and_weights_say_what_to_pass():
    with pytest.raises(ValueError, match="mobilenet_v3_large"):
        pretrained("resnet50")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        pretrained(NAME, weights="IMAGENET1K_V9")
    with pytest.raises(TypeError, match="MobileNet_V3_Small_Weights"):
        pretrained(NAME, weights=ResNet50_Weights.DEFAULT)
    with pytest.raises(ValueError, match="no file"):
        weights_path(NAME, None)
