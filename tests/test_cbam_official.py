"""The official CBAM checkpoint: strict renaming, [max, mean] -> [mean, max], same outputs.

No released file is needed: a synthetic checkpoint is written to the layout of
Jongchan/attention-module (keys ``module.``-prefixed, ``ChannelGate.mlp.{1,3}``,
``SpatialGate.spatial.{conv,bn}``, pooled maps stacked [max, mean]) and the loaded model is
compared with an independent re-implementation of the official forward pass.
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import attnviz
from attnviz.zoo import load_official_cbam, official_cbam_mapping

BLOCKS = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}


# -- the official network, written from MODELS/cbam.py and MODELS/model_resnet.py -----------
class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class OfficialChannelGate(nn.Module):
    def __init__(self, c, r=16):
        super().__init__()
        self.mlp = nn.Sequential(Flatten(), nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c))

    def forward(self, x):
        size = (x.size(2), x.size(3))
        att = self.mlp(F.avg_pool2d(x, size, stride=size)) + self.mlp(
            F.max_pool2d(x, size, stride=size)
        )
        return x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)


class BasicConv(nn.Module):  # conv(2, 1, 7, pad 3, no bias) -> BN(eps 1e-5, momentum 0.01)
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, stride=1, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class OfficialSpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = BasicConv()

    def forward(self, x):
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), 1)
        return x * torch.sigmoid(self.spatial(pooled))  # ChannelPool: [max, mean]


class OfficialCBAM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ChannelGate = OfficialChannelGate(c, 16)
        self.SpatialGate = OfficialSpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class OfficialBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        self.cbam = OfficialCBAM(planes * 4)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        out = self.cbam(out)  # after bn3, before the addition
        return F.relu(out + residual)


class OfficialResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        self.fc = nn.Linear(2048, 1000)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [OfficialBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [OfficialBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.avg_pool2d(x, 7)  # the official nn.AvgPool2d(7): top-left 7 x 7 beyond 224
        return self.fc(x.view(x.size(0), -1))


# -- a synthetic checkpoint in the official layout -------------------------------------------
def _random(key: str, shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.tensor(450_000)
    if key.endswith("running_var") or (key.endswith("weight") and len(shape) == 1):
        return 0.5 + torch.rand(shape, generator=g)  # batch-norm variances and scales
    if key.endswith(("running_mean", "bias")):
        return 0.1 * torch.randn(shape, generator=g)
    fan_in = shape[1:].numel() if len(shape) > 1 else 1
    return torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5  # conv and linear weights


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of the released file, ``module.`` prefixed, random values of the right shape."""
    with torch.device("meta"):  # torchvision's ResNet-50 gives the backbone's keys and shapes
        backbone = torchvision.models.resnet50().state_dict()
    shapes = {k: v.shape for k, v in backbone.items()}
    for layer, n in BLOCKS.items():
        for i in range(n):
            c = shapes[f"{layer}.{i}.conv3.weight"][0]
            p = f"{layer}.{i}.cbam."
            shapes[p + "ChannelGate.mlp.1.weight"] = torch.Size([c // 16, c])
            shapes[p + "ChannelGate.mlp.1.bias"] = torch.Size([c // 16])
            shapes[p + "ChannelGate.mlp.3.weight"] = torch.Size([c, c // 16])
            shapes[p + "ChannelGate.mlp.3.bias"] = torch.Size([c])
            shapes[p + "SpatialGate.spatial.conv.weight"] = torch.Size([1, 2, 7, 7])
            for stat in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                shapes[p + "SpatialGate.spatial.bn." + stat] = torch.Size(
                    [] if "num" in stat else [1]
                )
    g = torch.Generator().manual_seed(seed)
    return {"module." + k: _random(k, s, g) for k, s in shapes.items()}


def official_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict:
    """The dict train_imagenet.py saves: state dict, epoch, arch, best_prec1, SGD state."""
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))]
    sgd = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=1e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    sgd.step()  # momentum buffers, as in a real optimiser state
    return {
        "epoch": 100,
        "arch": "resnet",
        "state_dict": state_dict,
        "best_prec1": torch.tensor(77.622),
        "optimizer": sgd.state_dict(),
    }


@pytest.fixture(scope="module")
def official():
    return official_state_dict()


@pytest.fixture(scope="module")
def checkpoint_file(official, tmp_path_factory):
    path = tmp_path_factory.mktemp("cbam") / "RESNET50_CBAM_new_name_wrap.pth"
    # PyTorch 0.4.1 wrote the legacy (non-zip) format
    torch.save(official_checkpoint(official), path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint_file):
    return load_official_cbam(checkpoint_file)


def _reference(official: dict[str, torch.Tensor]) -> OfficialResNet50:
    model = OfficialResNet50()
    model.load_state_dict({k.removeprefix("module."): v for k, v in official.items()}, strict=True)
    return model.eval()


# -- tests --------------------------------------------------------------------------------------
def test_the_mapping_renames_strips_and_swaps_the_spatial_input_channels(official):
    mapped = official_cbam_mapping(official)
    assert len(mapped) == len(official)
    assert not any(k.startswith("module.") or ".cbam." in k for k in mapped)
    p, q = "layer3.5.attention.", "module.layer3.5.cbam."
    assert mapped[p + "channel_gate.mlp.0.weight"] is official[q + "ChannelGate.mlp.1.weight"]
    assert mapped[p + "channel_gate.mlp.2.bias"] is official[q + "ChannelGate.mlp.3.bias"]
    assert (
        mapped[p + "spatial_gate.bn.running_var"]
        is official[q + "SpatialGate.spatial.bn.running_var"]
    )
    ours, theirs = (
        mapped[p + "spatial_gate.conv.weight"],
        official[q + "SpatialGate.spatial.conv.weight"],
    )
    assert torch.equal(ours[:, 0], theirs[:, 1]) and torch.equal(ours[:, 1], theirs[:, 0])
    assert (
        mapped["layer1.0.downsample.1.running_mean"]
        is official["module.layer1.0.downsample.1.running_mean"]
    )
    assert mapped["fc.weight"] is official["module.fc.weight"]


def test_the_file_loads_with_weights_only_and_every_weight_is_used(loaded, official):
    assert isinstance(loaded, torchvision.models.ResNet) and not loaded.training
    mapped = official_cbam_mapping(official)
    state = loaded.state_dict()
    assert state.keys() == mapped.keys()
    assert all(torch.equal(state[k], mapped[k]) for k in mapped)
    gate = loaded.layer1[0].attention
    assert isinstance(gate, attnviz.CBAM) and isinstance(gate.spatial_gate.bn, nn.BatchNorm2d)


@pytest.mark.parametrize("size", [224, 320])
def test_outputs_equal_the_official_forward_pass(loaded, official, size):
    reference = _reference(official)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), attnviz.capture(loaded, kinds="spatial") as rec:
            ours = loaded(x)
    with torch.no_grad():
        theirs = reference(x)
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * max(1.0, scale))
    assert len(rec.select(kind="spatial")) == sum(BLOCKS.values())
    # 320 x 320 gives a 10 x 10 map of which the official pooling sees the top-left 7 x 7
    told = [str(w.message) for w in caught if "top-left 7 x 7" in str(w.message)]
    assert bool(told) == (size != 224)


@pytest.mark.parametrize("size", [64, 448])
def test_sizes_the_official_network_cannot_run_are_refused_clearly(loaded, official, size):
    x = torch.randn(1, 3, size, size)
    with pytest.raises(ValueError, match="official_cbam_transforms"):
        loaded(x)
    with pytest.raises(RuntimeError):  # the official code fails too, less clearly
        _reference(official)(x)


def test_the_official_preprocessing_gives_224():
    from PIL import Image

    t = attnviz.zoo.official_cbam_transforms()
    x = t(Image.new("RGB", (640, 480), (120, 30, 200)))
    assert x.shape == (3, 224, 224)
    expected = (torch.tensor([120, 30, 200]) / 255 - torch.tensor(t.mean)) / torch.tensor(t.std)
    torch.testing.assert_close(x[:, 100, 100], expected.float(), atol=1e-6, rtol=0)


def test_one_cbam_block_equals_the_official_one_and_the_swap_matters(loaded, official):
    reference = _reference(official).layer2[1].cbam
    x = torch.randn(2, 512, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = loaded.layer2[1].attention(x), reference(x)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        conv = loaded.layer2[1].attention.spatial_gate.conv
        unswapped = conv.weight.flip(1)
        conv.weight, saved = nn.Parameter(unswapped), conv.weight
        try:
            wrong = loaded.layer2[1].attention(x)
        finally:
            conv.weight = saved
    assert (wrong - theirs).abs().max() > 1e-3  # without the swap the test would fail


def test_a_checkpoint_dict_or_a_bare_state_dict_loads_too(official):
    model = load_official_cbam({k: v for k, v in official.items()})
    assert torch.equal(model.fc.bias, official["module.fc.bias"])


def test_missing_num_batches_tracked_is_tolerated(official):
    old = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    model = load_official_cbam({"state_dict": old})
    assert torch.equal(
        model.layer4[2].attention.spatial_gate.bn.running_mean,
        official["module.layer4.2.cbam.SpatialGate.spatial.bn.running_mean"],
    )


def test_a_missing_key_is_named(official):
    broken = dict(official)
    del broken["module.layer2.1.cbam.SpatialGate.spatial.bn.running_var"]
    expected = "missing from the file ['layer2.1.attention.spatial_gate.bn.running_var'] (1)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_official_cbam({"state_dict": broken})


def test_an_unused_key_is_named(official):
    extra = {**official, "module.layer1.0.cbam.ChannelGate.lse.weight": torch.zeros(3)}
    expected = "(after renaming) ['layer1.0.cbam.ChannelGate.lse.weight'] (1)"
    with pytest.raises(ValueError, match=r"unused keys .*" + re.escape(expected)):
        load_official_cbam({"state_dict": extra})


def test_a_wrong_shape_is_named(official):
    key = "module.layer1.0.cbam.ChannelGate.mlp.1.weight"
    wrong = {**official, key: torch.zeros(32, 256)}  # reduction 8 instead of 16
    expected = "layer1.0.attention.channel_gate.mlp.0.weight: file (32, 256), model (16, 256)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_official_cbam({"state_dict": wrong})


def test_a_file_weights_only_refuses_gets_a_clear_explanation(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"(?s)weights_only=True.*If you trust"):
        load_official_cbam(path)


def test_a_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="Jongchan/attention-module"):
        load_official_cbam(tmp_path / "nothing.pth")
