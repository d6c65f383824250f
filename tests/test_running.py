"""Every public function that runs a model leaves it as found: each module's train/eval
flag, each parameter's requires_grad, the grad mode and the model's device.

Each model is put in a mixed state first (training, with some blocks and batch-norms in
eval and one frozen parameter), the state ``model.train(was)`` would flatten.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from attnviz import analysis, cam, metrics, running, train, zoo
from attnviz.models import STCNN, small_resnet
from attnviz.widgets import ChannelExplorer, QueryExplorer, SpatialExplorer


def _mixed(model: nn.Module) -> nn.Module:
    model.train()
    mods = list(model.modules())
    for i, m in enumerate(mods):
        if i % 3 == 1 or (isinstance(m, nn.BatchNorm2d) and i % 2):
            m.eval()
    next(model.parameters()).requires_grad_(False)
    return model


def _state(model: nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        torch.is_grad_enabled(),
    )


def _cbam() -> nn.Module:
    torch.manual_seed(0)
    return _mixed(small_resnet(attention="cbam", width=8, num_classes=3))


def _nonlocal() -> nn.Module:
    torch.manual_seed(0)
    return _mixed(small_resnet(attention="nonlocal", nonlocal_stages=(2,), width=8, num_classes=3))


def _stn() -> nn.Module:
    torch.manual_seed(0)
    return _mixed(STCNN(image_size=(16, 16), output_size=(12, 12), num_classes=2, width=4))


_X = torch.rand(4, 3, 32, 32)
_DIGITS = torch.rand(4, 1, 16, 16)
_LABELS = torch.tensor([0, 1, 1, 0])
_BOXES = torch.tensor([[2.0, 2.0, 10.0, 12.0]]).repeat(4, 1)
_MASKS = torch.zeros(4, 32, 32, dtype=torch.bool)
_MASKS[:, 8:24, 8:24] = True


CALLS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], object]]] = {
    "train.logits": (
        _stn,
        lambda m: train.logits(m, TensorDataset(_DIGITS, torch.zeros(4).long())),
    ),
    "train.evaluate": (
        _stn,
        lambda m: train.evaluate(m, TensorDataset(_DIGITS, _LABELS)),
    ),
    "train.snapshot_attention": (_stn, lambda m: train.snapshot_attention(_DIGITS)(m)),
    "metrics.sampled_box_iou": (_stn, lambda m: metrics.sampled_box_iou(m, _DIGITS, _BOXES)),
    "metrics.attention_on_object": (
        _nonlocal,
        lambda m: metrics.attention_on_object(m, _X, _MASKS),
    ),
    "analysis.channel_stats": (
        _cbam,
        lambda m: analysis.channel_stats(m, _X, [0, 1, 2, 0], num_classes=3),
    ),
    "analysis.spatial_maps": (_cbam, lambda m: analysis.spatial_maps(m, _X)),
    "analysis.forward_cost": (_cbam, lambda m: analysis.forward_cost(m, _X, reps=1)),
    "cam.gradcam": (_cbam, lambda m: cam.gradcam(m, _X, "layer3")),
    "cam.softmax_scores": (_cbam, lambda m: cam.softmax_scores(m, _X)),
    "capture": (_cbam, lambda m: _run_capture(m)),
    "ChannelExplorer": (_cbam, lambda m: ChannelExplorer(m, _X).picture()),
    "SpatialExplorer": (_cbam, lambda m: SpatialExplorer(m, _X).picture()),
    "QueryExplorer": (_nonlocal, lambda m: QueryExplorer(m, _X).picture()),
}


def _run_capture(model: nn.Module) -> None:
    import attnviz

    with attnviz.capture(model) as rec:
        model(_X)
    assert len(rec)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_model_in_mixed_modes_is_left_as_found(name):
    make, call = CALLS[name]
    model = make()
    before = _state(model)
    assert len(set(before[0])) == 2  # really mixed
    call(model)
    assert _state(model) == before


@pytest.mark.parametrize("grad", [False, True])
def test_grad_mode_is_restored_either_way(grad):
    model = _cbam()
    with torch.set_grad_enabled(grad):
        train.logits(model, TensorDataset(_X, torch.zeros(4).long()))
        cam.softmax_scores(model, _X)
        assert torch.is_grad_enabled() is grad


def test_modes_are_restored_after_an_exception():
    model = _cbam()
    before = _state(model)
    with pytest.raises(RuntimeError), running.inference(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("inside")
    assert _state(model) == before


def test_top_classes_leaves_the_model_as_found(tmp_path):
    pre = zoo.pretrained("mobilenet_v3_small", weights=None)
    _mixed(pre.model)
    before = _state(pre.model)
    zoo.top_classes(pre, torch.rand(3, 64, 64), topk=2)
    assert _state(pre.model) == before


def test_model_device_of_a_model_without_parameters():
    assert running.model_device(nn.ReLU()) == torch.device("cpu")
    assert running.model_device(nn.BatchNorm2d(2)) == torch.device("cpu")
    assert running.model_device(nn.Sequential()) == torch.device("cpu")
    with running.inference(nn.ReLU()) as m:  # runs too
        assert m(torch.tensor([-1.0])).item() == 0.0
