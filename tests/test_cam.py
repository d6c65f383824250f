"""cam.py: grad-cam's maps, with the model left exactly as it was and the freeze trick exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnviz import cam
from attnviz.models import SmallCNN, small_resnet

N, SIZE = 4, 32


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return small_resnet(10, attention="cbam", width=8)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(N, 3, SIZE, SIZE)


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_maps_come_from_grad_cam_for_the_predicted_class(model, images):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = cam.gradcam(model, images)
    assert maps.shape == (N, SIZE, SIZE) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    with GradCAM(model, [model.layer4[-1]]) as reference:
        expected = reference(images, [ClassifierOutputTarget(int(k)) for k in predicted])
    torch.testing.assert_close(maps, torch.from_numpy(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam.gradcam(model, images, targets=predicted), maps)


@pytest.mark.parametrize("train", [True, False])
def test_model_mode_is_restored(model, images, train):
    model.train(train)
    model.layer2.train(not train)  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    cam.gradcam(model, images, targets=1)
    assert [m.training for m in model.modules()] == flags
    model.eval()


@pytest.mark.parametrize("freeze", [True, False])
def test_grads_and_requires_grad_are_restored(model, images, freeze):
    params = list(model.parameters())
    for p in params:
        p.grad = None
    for p in params[::3]:  # some gradients exist (a training step in progress)
        p.grad = torch.randn_like(p)
    saved = [None if p.grad is None else (p.grad, p.grad.clone()) for p in params]
    model.fc.weight.requires_grad_(False)  # and some parameters are frozen by the user
    model.layer1[0].conv2.weight.requires_grad_(False)
    flags = [p.requires_grad for p in params]
    cam.gradcam(model, images, freeze_before=freeze)
    cam.gradcam(model, images, "layer2.0", targets=[0, 1, 2, 3], batch_size=3)
    assert [p.requires_grad for p in params] == flags
    for p, s in zip(params, saved):
        if s is None:
            assert p.grad is None
        else:
            assert p.grad is s[0] and torch.equal(p.grad, s[1])  # the same tensor, unchanged
    for p in params:
        p.requires_grad_(True)
        p.grad = None


def test_no_hook_is_left_behind_also_after_an_error(model, images):
    before = _hooks(model)
    cam.gradcam(model, images)
    assert _hooks(model) == before == 0
    model.train()
    with pytest.raises(ValueError, match="target class 10"):
        cam.gradcam(model, images, targets=10)  # raised inside the forward pass
    assert _hooks(model) == 0 and model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    model.eval()


@pytest.mark.parametrize("method", sorted(cam.CAM_METHODS))
@pytest.mark.parametrize(
    "layer", [None, "layer2.0", "layer4.0.bn2", "layer3.0.attention.spatial_gate.gate"]
)
def test_freezing_earlier_parameters_gives_identical_maps(model, images, method, layer):
    # the last layer has no parameters: everything before it is frozen, so the output is
    # made to require grad, and the maps still agree
    fast = cam.gradcam(model, images, layer, targets=2, method=method, freeze_before=True)
    slow = cam.gradcam(model, images, layer, targets=2, method=method, freeze_before=False)
    assert torch.equal(fast, slow)


def test_freezing_follows_the_forward_order(model, images):
    seen = {}

    def spy(name):
        return lambda m, _a, _o: seen.setdefault(name, []).append(m.weight.requires_grad)

    watch = {"stem": model.conv1, "layer3": model.layer3[0].conv1, "target": model.layer4[0].conv1}
    handles = [m.register_forward_hook(spy(k)) for k, m in watch.items()]
    try:
        cam.gradcam(model, images, freeze_before=True, batch_size=2)
        assert seen == {"stem": [False, False], "layer3": [False, False], "target": [True, True]}
        seen.clear()
        cam.gradcam(model, images, freeze_before=False)
        assert seen == {"stem": [True], "layer3": [True], "target": [True]}
    finally:
        for h in handles:
            h.remove()


def test_batches_and_no_grad_context_give_the_same_maps(model, images):
    whole = cam.gradcam(model, images)
    torch.testing.assert_close(cam.gradcam(model, images, batch_size=3), whole)
    with torch.no_grad():
        torch.testing.assert_close(cam.gradcam(model, images), whole)


def test_resolve_layer_by_name_or_module_with_helpful_errors(model):
    assert cam.resolve_layer(model, "layer4.0.conv2") is model.layer4[0].conv2
    assert cam.resolve_layer(model, model.layer3) is model.layer3
    with pytest.raises(ValueError, match=r"closest names: \['layer4.0.conv2'"):
        cam.resolve_layer(model, "layer4.0.conv")
    with pytest.raises(ValueError, match="top-level children"):
        cam.resolve_layer(model, "block9")
    with pytest.raises(ValueError, match="not a submodule"):
        cam.resolve_layer(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="module name"):
        cam.resolve_layer(model, 4)


def test_default_target_layer(model, tiny_net):
    assert cam.default_target_layer(model) is model.layer4[-1]
    cnn = SmallCNN(3, 10, 4)
    last_conv = [m for m in cnn.features if isinstance(m, nn.Conv2d)][-1]
    assert cam.default_target_layer(cnn) is last_conv
    assert cam.default_target_layer(tiny_net) is tiny_net.conv2  # not CBAM's 2 -> 1 conv
    with pytest.raises(ValueError, match="pass target_layer"):
        cam.default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_softmax_scores_are_p_of_the_target(model, images):
    model.train()
    p = cam.softmax_scores(model, images)
    p2 = cam.softmax_scores(model, images, [2] * N, batch_size=3)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with torch.no_grad():
        probs = model(images).softmax(dim=1)
    torch.testing.assert_close(p, probs.max(dim=1).values)
    torch.testing.assert_close(p2, probs[:, 2])
    with pytest.raises(ValueError, match="not classes"):
        cam.softmax_scores(model, images, 12)


def test_bad_arguments_are_refused(model, images):
    with pytest.raises(ValueError, match="method must be one of"):
        cam.gradcam(model, images, method="scorecam")
    with pytest.raises(ValueError, match="targets must be"):
        cam.gradcam(model, images, targets=[1, 2])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        cam.gradcam(model, images[0])
    with pytest.raises(TypeError, match="float"):
        cam.gradcam(model, (images * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        cam.gradcam(model, images, batch_size=0)
    assert _hooks(model) == 0
