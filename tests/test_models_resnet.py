"""Attention ResNets: the CBAM paper's placement, torchvision compatibility, capture."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

import attnviz
from attnviz import CBAM, SqueezeExcitation
from attnviz.models import AttnBasicBlock, AttnBottleneck, SmallResNet, resnet, small_resnet
from attnviz.models.resnets import _load_backbone

ATTENTIONS = [None, "se", "cbam"]
MODULE_TYPES = {"se": SqueezeExcitation, "cbam": CBAM}


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (AttnBasicBlock, AttnBottleneck))]


def image(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


# -- shapes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("depth", [10, 18])
def test_small_resnet_gives_one_logit_per_class(depth, attention):
    model = small_resnet(depth, attention=attention)
    assert isinstance(model, SmallResNet)
    assert model(image()).shape == (2, 10)


@pytest.mark.parametrize(("stem_stride", "side"), [(1, 8), (2, 4)])
def test_small_resnet_layer4_is_8x8_or_4x4_for_64x64_images(stem_stride, side):
    model = small_resnet(attention="cbam", width=8, stem_stride=stem_stride, num_classes=3)
    seen = []
    model.layer4.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    assert model(image()).shape == (2, 3)
    assert seen == [(2, 64, side, side)]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_gives_one_logit_per_class(name, attention):
    model = resnet(name, attention=attention, num_classes=10)
    assert isinstance(model, torchvision.models.ResNet)
    assert model(image()).shape == (2, 10)


def _open_every_gate(model: nn.Module) -> None:
    """Make every SE / CBAM gate pass everything (sigmoid(30) = 1 in float32)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (SqueezeExcitation, CBAM)):
                for lin in (
                    (m.fc2,) if isinstance(m, SqueezeExcitation) else (m.channel_gate.mlp[2],)
                ):
                    lin.weight.zero_()
                    lin.bias.fill_(30.0 if isinstance(m, SqueezeExcitation) else 15.0)
                if isinstance(m, CBAM):
                    m.spatial_gate.conv.weight.zero_()
                    m.spatial_gate.conv.bias.fill_(30.0)


@pytest.mark.parametrize("attention", ["se", "cbam"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_with_every_gate_open_the_logits_are_torchvisions(name, attention):
    """The attention ResNet is torchvision's ResNet plus gates: open them and the logits
    equal torchvision's own network with the same weights."""
    torch.manual_seed(0)
    model = resnet(name, attention=attention, num_classes=10).eval()
    reference = getattr(torchvision.models, name)(num_classes=10).eval()
    reference.load_state_dict(
        {k: v for k, v in model.state_dict().items() if ".attention." not in k}
    )
    _open_every_gate(model)
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
        last = model.layer4[-1].attention
        gate = last.spatial_gate.conv if attention == "cbam" else last.fc2
        gate.bias.fill_(-30.0)  # close one gate: the logits leave torchvision's
        assert not torch.allclose(model(x), reference(x), atol=1e-3)  # a closed gate shows


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_small_resnet_with_open_gates_is_the_plain_one(attention):
    torch.manual_seed(0)
    model = small_resnet(attention=attention, width=8).eval()
    plain = small_resnet(width=8).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".attention." not in k})
    _open_every_gate(model)
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)


# -- placement: A(F(x)) + shortcut(x), then ReLU -------------------------------------------
def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(tv_resnet.conv1x1(cin, cout, 2), nn.BatchNorm2d(cout))


_KW = {"attention": "cbam", "attention_kwargs": {"reduction": 4}}
BLOCKS = {
    "basic": lambda: AttnBasicBlock(8, 8, **_KW),
    "basic-downsample": lambda: AttnBasicBlock(8, 16, 2, _down(8, 16), **_KW),
    "bottleneck": lambda: AttnBottleneck(16, 4, **_KW),
    "bottleneck-downsample": lambda: AttnBottleneck(8, 4, 2, _down(8, 16), **_KW),
    "small_resnet-se": lambda: small_resnet(attention="se").layer2[0],
}


def _shortcut(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x if block.downsample is None else block.downsample(x)


@pytest.mark.parametrize("kind", BLOCKS)
def test_attention_sits_before_the_addition(kind):
    """With A's output forced to zero, the block gives relu(shortcut(x)), not relu(0) = 0."""
    block = BLOCKS[kind]().eval()
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    block.attention.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, torch.relu(_shortcut(block, x)))
        assert out.abs().sum() > 0


@pytest.mark.parametrize("kind", BLOCKS)
def test_attention_reads_the_last_batch_norm(kind):
    block = BLOCKS[kind]().eval()
    last_bn = block.bn3 if isinstance(block, AttnBottleneck) else block.bn2
    seen = {}
    last_bn.register_forward_hook(lambda _m, _i, out: seen.setdefault("bn", out.clone()))
    block.attention.register_forward_pre_hook(lambda _m, args: seen.setdefault("a", args[0]))
    with torch.no_grad():
        block(torch.randn(2, block.conv1.in_channels, 8, 8))
    torch.testing.assert_close(seen["a"], seen["bn"])


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_a_closed_channel_gate_leaves_the_shortcut(attention):
    model = small_resnet(attention=attention).eval()
    block = model.layer3[0]
    last = block.attention.fc2 if attention == "se" else block.attention.channel_gate.mlp[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-100.0)  # sigmoid(-100) ~ 4e-44
        x = torch.randn(2, block.conv1.in_channels, 16, 16)
        torch.testing.assert_close(block(x), torch.relu(_shortcut(block, x)))


# -- torchvision compatibility --------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_plain_resnet_is_torchvisions(name):
    ours = resnet(name)
    theirs = getattr(torchvision.models, name)()
    assert not any(isinstance(m, (SqueezeExcitation, CBAM)) for m in ours.modules())
    assert all(isinstance(b.attention, nn.Identity) for b in attention_blocks(ours))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_plain_small_resnet_has_no_attention_parameters():
    model = small_resnet(18)
    assert all(isinstance(b.attention, nn.Identity) for b in attention_blocks(model))
    assert not [n for n, _ in model.named_parameters() if "attention" in n]


def test_load_backbone_leaves_only_the_attention_at_init():
    plain = torchvision.models.resnet18()
    model = resnet("resnet18", attention="cbam")
    before = {k: v.clone() for k, v in model.state_dict().items() if ".attention." in k}
    missing = _load_backbone(model, plain.state_dict())
    assert missing == list(before)
    assert missing and all(".attention." in k for k in missing)
    state = model.state_dict()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(state[key], value)
    for key, value in before.items():
        torch.testing.assert_close(state[key], value)


def test_load_backbone_refuses_unexpected_keys_and_leaves_the_model():
    model = resnet("resnet18", attention="se")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.se.fc1.weight"] = torch.zeros(4, 64)
    with pytest.raises(ValueError, match=r"unexpected \['layer1\.0\.se\.fc1\.weight'\]"):
        _load_backbone(model, state)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_load_backbone_refuses_missing_backbone_keys():
    model = resnet("resnet18", attention="se")
    state = torchvision.models.resnet18().state_dict()
    del state["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing \['layer1\.0\.conv1\.weight'\]"):
        _load_backbone(model, state)


def test_load_backbone_refuses_another_architecture():
    with pytest.raises(ValueError, match="another architecture"):
        _load_backbone(resnet("resnet18"), torchvision.models.resnet50().state_dict())


@pytest.fixture
def fake_imagenet_weights(monkeypatch):
    """ResNet18_Weights.get_state_dict returns a random torchvision resnet18's: no download."""
    state = torchvision.models.resnet18().state_dict()
    calls = []

    def get_state_dict(self, *args, **kwargs):
        calls.append(kwargs)
        return dict(state)

    monkeypatch.setattr(tv_resnet.ResNet18_Weights, "get_state_dict", get_state_dict)
    return state, calls


@pytest.mark.parametrize("weights", ["DEFAULT", tv_resnet.ResNet18_Weights.IMAGENET1K_V1])
def test_weights_load_the_backbone_through_torchvision(fake_imagenet_weights, weights):
    state, calls = fake_imagenet_weights
    model = resnet("resnet18", attention="se", weights=weights)
    assert calls and calls[0]["progress"] is True
    loaded = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value)


def test_weights_with_a_new_label_set_keep_a_fresh_classifier(fake_imagenet_weights):
    state, _ = fake_imagenet_weights
    model = resnet("resnet18", attention="cbam", num_classes=10, weights="IMAGENET1K_V1")
    assert model.fc.out_features == 10
    torch.testing.assert_close(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_weights_of_another_model_or_name_are_refused():
    with pytest.raises(TypeError, match="ResNet18_Weights"):
        resnet("resnet18", weights=tv_resnet.ResNet50_Weights.DEFAULT)
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'"):
        resnet("resnet18", weights="IMAGENET9K")


# -- attention layers through the registry --------------------------------------------------
@pytest.mark.parametrize("attention", ["se", "cbam"])
@pytest.mark.parametrize(
    ("build", "blocks"),
    [
        (lambda a: small_resnet(10, attention=a), 4),
        (lambda a: small_resnet(18, attention=a), 8),
        (lambda a: resnet("resnet18", attention=a), 8),
        (lambda a: resnet("resnet50", attention=a), 16),
    ],
    ids=["small_resnet10", "small_resnet18", "resnet18", "resnet50"],
)
def test_one_attention_module_per_block(build, blocks, attention):
    model = build(attention)
    found = [m for m in model.modules() if isinstance(m, MODULE_TYPES[attention])]
    assert len(found) == len(attention_blocks(model)) == blocks
    assert all(b.attention is m for b, m in zip(attention_blocks(model), found))


def test_capture_records_channel_then_spatial_per_block_in_forward_order():
    model = small_resnet(attention="cbam")
    with attnviz.capture(model) as rec:
        model(image())
    expected = []
    for stage in range(1, 5):
        block = f"layer{stage}.0.attention"
        expected += [f"{block}.channel_gate", f"{block}.spatial_gate"]
    assert list(rec) == expected
    assert [r.kind for r in rec.values()] == ["channel", "spatial"] * 4
    assert [r.weights.shape for r in rec.select(kind="channel")] == [
        (2, 16),
        (2, 32),
        (2, 64),
        (2, 128),
    ]
    assert [r.map.shape for r in rec.select(kind="spatial")] == [
        (2, 64, 64),
        (2, 32, 32),
        (2, 16, 16),
        (2, 8, 8),
    ]


def test_reduction_defaults_and_attention_kwargs():
    assert small_resnet(attention="se").layer1[0].attention.fc1.out_features == 16 // 4
    assert resnet("resnet18", attention="se").layer1[0].attention.fc1.out_features == 64 // 16
    model = resnet("resnet18", attention="cbam", attention_kwargs={"reduction": 8})
    assert model.layer4[1].attention.channel_gate.mlp[0].out_features == 512 // 8


def test_a_registered_layer_needs_no_model_code_and_keeps_its_init(monkeypatch):
    channels = []

    def half_conv(c: int) -> nn.Module:
        channels.append(c)
        conv = nn.Conv2d(c, c, 1, bias=False)
        nn.init.constant_(conv.weight, 0.5)
        return conv

    monkeypatch.setitem(attnviz.registry._LAYERS, "half_conv", half_conv)
    model = resnet("resnet18", attention="half_conv", num_classes=3)
    assert channels == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all((b.attention.weight == 0.5).all() for b in attention_blocks(model))
    assert model(image(size=32)).shape == (2, 3)


@pytest.mark.parametrize(
    "build",
    [lambda: small_resnet(attention="nope"), lambda: resnet("resnet18", attention="nope")],
    ids=["small_resnet", "resnet"],
)
def test_unknown_attention_raises_the_registry_error(build):
    with pytest.raises(ValueError, match=r"unknown attention 'nope'.*register_attention_layer"):
        build()


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: small_resnet(34), ValueError, "depth must be one of"),
        (lambda: small_resnet(width=0), ValueError, "width must be a positive int"),
        (lambda: small_resnet(stem_stride=4), ValueError, "stem_stride must be 1 or 2"),
        (lambda: resnet("resnet34"), ValueError, "name must be one of"),
        (lambda: resnet("resnet18", num_classes=0), ValueError, "num_classes"),
        (
            lambda: resnet("resnet18", attention="se", attention_kwargs=[("reduction", 8)]),
            TypeError,
            "attention_kwargs must be a dict",
        ),
    ],
)
def test_bad_arguments_are_named(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_attention_stages_put_the_layer_in_those_stages_only():
    model = small_resnet(10, attention="cbam", width=8, attention_stages=(3, 4))
    kinds = {
        f"layer{s}": type(getattr(model, f"layer{s}")[0].attention).__name__ for s in range(1, 5)
    }
    assert kinds == {"layer1": "Identity", "layer2": "Identity", "layer3": "CBAM", "layer4": "CBAM"}
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(torch.rand(1, 3, 32, 32))
    assert [n.split(".")[0] for n, r in rec.items() if r.kind == "spatial"] == ["layer3", "layer4"]
    with pytest.raises(ValueError, match="distinct stages 1-4"):
        small_resnet(10, attention="se", attention_stages=(5,))
    with pytest.raises(ValueError, match="nonlocal_stages"):
        small_resnet(10, attention="nonlocal", attention_stages=(3,))
    with pytest.raises(ValueError, match="per-block attention"):
        small_resnet(10, attention=None, attention_stages=(4,))
