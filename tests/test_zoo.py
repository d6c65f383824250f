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
from attnviz.zoo import SE_NETWORKS, Pretrained, pretrained, top_classes, weights_path

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
    assert pre.class_names == weights.meta["categories"] and len(pre.class_names) == 1000
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
    assert pre.class_names[:2] == ["class 0", "class 1"] and len(pre.class_names) == 1000
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
    # each record is what its block multiplied by: output == input * s, seen by our own hooks
    seen, handles = {}, []
    for name, m in pre.model.named_modules():
        if isinstance(m, SqueezeExcitation):

            def hook(mod, a, o, name=name):
                seen[name] = (a[0], o)

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        pre.model(x)
    for h in handles:
        h.remove()
    for r in weights:
        inp, out = seen[r.name]
        torch.testing.assert_close(out, inp * r.weights[:, :, None, None], atol=1e-6, rtol=0)


def test_predict_returns_the_top_classes_and_restores_the_mode():
    pre = pretrained(NAME, weights=None)
    pre.model.train()
    top = top_classes(pre, load_sample("coffee"), topk=3)
    assert pre.model.training
    assert len(top) == 3 and all(name in pre.class_names for name, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    x = prepare(load_sample("coffee"), pre.transforms)
    assert [n for n, _ in top_classes(pre, x[0], topk=3)] == [n for n, _ in top]
    with pytest.raises(ValueError, match="topk"):
        top_classes(pre, x, topk=0)
    with pytest.raises(ValueError, match="3 x H x W"):
        top_classes(pre, torch.zeros(2, 3, 8, 8))


def test_bad_names_and_weights_say_what_to_pass():
    with pytest.raises(ValueError, match="mobilenet_v3_large"):
        pretrained("resnet50")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        pretrained(NAME, weights="IMAGENET1K_V9")
    with pytest.raises(TypeError, match="MobileNet_V3_Small_Weights"):
        pretrained(NAME, weights=ResNet50_Weights.DEFAULT)
    with pytest.raises(ValueError, match="no file"):
        weights_path(NAME, None)


# -- timm models, through timm's own loading ---------------------------------------------------
TIMM = "timm/ecaresnet26t"


def test_a_timm_model_loads_a_local_weights_file_through_timms_public_api(tmp_path):
    import timm

    torch.manual_seed(2)
    state = timm.create_model("ecaresnet26t", pretrained=False).state_dict()
    state = {
        k: v + 0.01 * torch.rand_like(v) if v.is_floating_point() else v for k, v in state.items()
    }
    path = tmp_path / "ecaresnet26t.pth"
    torch.save(state, path)
    pre = pretrained(TIMM, weights=path)
    assert pre.pretrained and pre.weights == str(path) and not pre.model.training
    for k, v in pre.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert pre.class_names[0] == "tench" and len(pre.class_names) == 1000
    photo = load_sample("chelsea")
    x = prepare(photo, pre.transforms)
    assert x.shape == (1, 3, 256, 256)  # timm's input size for this model
    # the same preprocessing as timm's own transform
    cfg = timm.data.resolve_data_config({}, model=pre.model)
    expected = timm.data.create_transform(**cfg)(photo)
    torch.testing.assert_close(x[0], expected, atol=1e-6, rtol=0)
    with attnviz.capture(pre.model) as rec:
        pre.model(x)
    assert len(rec.select(kind="channel")) == 8 and all(c.ok for c in rec.checks)
    top = top_classes(pre, photo, topk=3)
    assert len(top) == 3 and all(name in pre.class_names for name, _ in top)


def test_timm_random_weights_missing_files_and_unknown_names(tmp_path):
    pre = pretrained(TIMM, weights=None)
    assert not pre.pretrained and pre.weights is None and pre.name == TIMM
    with pytest.raises(FileNotFoundError, match="no weights file"):
        pretrained(TIMM, weights=tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="timm has no model 'nope'"):
        pretrained("timm/nope", weights=None)
    with pytest.raises(TypeError, match="'DEFAULT', a file path or None"):
        pretrained(TIMM, weights=3)


def test_official_cbam_by_name_needs_its_file(tmp_path):
    pre = pretrained("official-cbam", weights=None)
    assert not pre.pretrained and pre.transforms.crop_size == [224]
    assert pre.class_names[0] == "tench"
    with pytest.raises(ValueError, match="download by hand"):
        pretrained("official-cbam")
    with pytest.raises(FileNotFoundError, match="no CBAM checkpoint"):
        pretrained("official-cbam", weights=tmp_path / "missing.pth")
