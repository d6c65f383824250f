"""attnviz.probes.scan: which modules' own code could start an attention kernel, and the
capture that turns its torch function mode off while the others run, missing nothing."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode_stack

import attnviz
from attnviz.probes.kernels import Tracker, tracked
from attnviz.probes.scan import method_table, starts_no_kernel


def _quiet(model: nn.Module, name: str = "") -> bool:
    module = model.get_submodule(name)
    return starts_no_kernel(module, tracked, method_table(model))


def _helper_softmax(x: torch.Tensor) -> torch.Tensor:
    return F.softmax(x, dim=-1)


TABLE = {"eager": _helper_softmax}


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return torch.relu(self.conv(x)) + x


class MethodSoftmax(Residual):
    def forward(self, x):
        return x.flatten(2).softmax(-1).reshape(x.shape)


class HelperSoftmax(Residual):
    def forward(self, x):
        return _helper_softmax(x)


class TableSoftmax(Residual):
    def forward(self, x):
        return TABLE["eager"](x)


class Fused(Residual):
    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)
        return F.scaled_dot_product_attention(t, t, t).transpose(1, 2).reshape(x.shape)


class SoftmaxChild(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Sequential(nn.Softmax(dim=1))  # a leaf under a torch.nn container

    def forward(self, x):
        return self.act(x)


class Scorer(nn.Module):
    """A child whose method (not its forward) applies a softmax."""

    def forward(self, x):
        return x

    def weights(self, x):
        return x.softmax(-1)


class ChildMethod(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.scorer = Scorer()

    def forward(self, x):
        return self.scorer.weights(x)


class FunctionAttribute(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.fn = _helper_softmax

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    "kind", [MethodSoftmax, HelperSoftmax, TableSoftmax, Fused, SoftmaxChild, ChildMethod]
)
def test_a_module_whose_code_may_start_a_kernel_is_never_called_quiet(kind):
    assert not _quiet(kind())


def test_what_a_module_holds_or_is_patched_with_is_read_too():
    assert not _quiet(FunctionAttribute())
    plain = Residual()
    assert _quiet(plain)
    plain.forward = lambda x: x.softmax(-1)  # patched on the instance
    assert not _quiet(plain)


def test_cnn_blocks_and_transformer_blocks_around_registered_attention_are_quiet():
    from torchvision.models import mobilenet_v3_small

    from attnviz.models import small_resnet

    assert _quiet(Residual())
    resnet = small_resnet(10, attention="cbam", width=8)
    assert _quiet(resnet, "layer2.0") and _quiet(resnet)
    mobilenet = mobilenet_v3_small()
    assert _quiet(mobilenet, "features.1") and _quiet(mobilenet)
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    assert _quiet(vit, "blocks.0")
    assert not _quiet(vit, "blocks.0.attn")  # registered anyway; its own code has a softmax


class Probs(nn.Module):
    """Returns a softmax result: the kernel's matrix product happens in a later module."""

    def forward(self, x):
        return (x @ x.transpose(-2, -1)).softmax(-1)


class Mix(nn.Module):
    """Multiplies what it is given: no softmax in its own code (a quiet frame)."""

    def forward(self, a, v):
        return a @ v


class TwoStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.probs, self.drop, self.mix = Probs(), nn.Dropout(0.0), Mix()

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.mix(self.drop(self.probs(t)), t)


def test_a_softmax_result_is_followed_through_quiet_modules_to_its_product():
    """The capture keeps the mode on while a softmax result is alive: the product with
    values in the quiet Mix is recorded, equal to the matrix computed by hand."""
    model = TwoStep().eval()
    assert _quiet(model, "mix") and _quiet(model) and not _quiet(model, "probs")
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(x)
    t = model.conv(x).flatten(2).transpose(1, 2)
    expected = (t @ t.transpose(-2, -1)).softmax(-1)
    (name,) = list(rec)
    assert name == "mix"
    torch.testing.assert_close(rec[name].matrix.reshape(expected.shape), expected)
    assert not _get_current_function_mode_stack()


def test_the_mode_is_on_only_where_a_kernel_may_start():
    model = TwoStep().eval()
    seen = {}

    def spy(name):
        def hook(module, args):
            seen[name] = any(isinstance(m, Tracker) for m in _get_current_function_mode_stack())

        return hook

    model.conv.register_forward_pre_hook(spy("conv, in the quiet root"))
    model.drop.register_forward_pre_hook(spy("dropout, a softmax result alive"))
    with torch.no_grad(), attnviz.capture(model):
        model(torch.randn(1, 3, 4, 4))
    assert seen == {"conv, in the quiet root": False, "dropout, a softmax result alive": True}


def test_the_reading_is_kept_per_model_and_redone_when_a_module_changes():
    capture_module = importlib.import_module("attnviz.capture")
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Residual()).eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(attnviz.NoAttentionError), torch.no_grad():
        with attnviz.capture(model):
            model(x)
    assert id(model[1]) in capture_module._QUIET[model][1]
    model[1].forward = lambda y: (
        (y.flatten(2) @ y.flatten(2).transpose(1, 2)).softmax(-1) @ y.flatten(2)
    )  # now it applies attention: read again, and recorded
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(x)
    assert list(rec) == ["1"] and id(model[1]) not in capture_module._QUIET[model][1]
