"""capture(): records are what the network applied, hooks always come off, state is untouched."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import SqueezeExcitation as TVSqueezeExcitation

import attnviz
from attnviz import CBAM, SqueezeExcitation
from attnviz.modules import ChannelGate, SpatialGate


def _io_hooks(model, types):
    """Test-owned hooks that keep each module's input and output, to check records against."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, types):

            def hook(mod, args, out, name=name):
                seen.setdefault(name, []).append((args[0].detach().clone(), out.detach().clone()))

            handles.append(m.register_forward_hook(hook))
    return seen, handles


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_se_output_equals_input_times_captured_weights(tiny_net):
    seen, handles = _io_hooks(tiny_net, (SqueezeExcitation, ChannelGate, SpatialGate))
    x = torch.randn(4, 3, 16, 16)
    with attnviz.capture(tiny_net) as rec:
        tiny_net(x)
    for h in handles:
        h.remove()
    assert list(rec) == ["se", "cbam.channel_gate", "cbam.spatial_gate"]
    for name in ("se", "cbam.channel_gate"):
        ((inp, out),) = seen[name]
        w = rec[name].weights
        assert w.shape == (4, 16) and rec[name].kind == "channel"
        torch.testing.assert_close(out, inp * w[:, :, None, None], atol=1e-6, rtol=0)
    ((inp, out),) = seen["cbam.spatial_gate"]
    m = rec["cbam.spatial_gate"].map
    assert m.shape == (4, 8, 8)
    torch.testing.assert_close(out, inp * m[:, None], atol=1e-6, rtol=0)


@pytest.mark.parametrize("builder", ["mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf"])
def test_torchvision_se_blocks_are_captured_faithfully(builder):
    model = getattr(torchvision.models, builder)(weights=None)
    n_se = sum(isinstance(m, TVSqueezeExcitation) for m in model.modules())
    assert n_se > 0
    seen, handles = _io_hooks(model, TVSqueezeExcitation)
    with attnviz.capture(model) as rec:
        model(torch.randn(2, 3, 64, 64))
    for h in handles:
        h.remove()
    channel = rec.select(kind="channel")
    assert len(channel) == len(rec) == n_se
    for r in channel:
        ((inp, out),) = seen[r.name]
        assert r.weights.shape == inp.shape[:2]
        torch.testing.assert_close(out, inp * r.weights[:, :, None, None], atol=1e-6, rtol=0)
    assert _hook_count(model) == 0


def test_stn_records_theta_output_and_input_size(tiny_stnet):
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        tiny_stnet.stn.head.weight.normal_(0, 0.01)  # a non-identity transform
    seen, handles = _io_hooks(tiny_stnet, attnviz.SpatialTransformer)
    head_out = []
    handles.append(
        tiny_stnet.stn.head.register_forward_hook(lambda m, a, o: head_out.append(o.detach()))
    )
    with attnviz.capture(tiny_stnet) as rec:
        tiny_stnet(x)
    for h in handles:
        h.remove()
    r = rec["stn"]
    assert r.kind == "transform" and r.theta.shape == (3, 2, 3)
    torch.testing.assert_close(r.theta, head_out[0].view(3, 2, 3), atol=0, rtol=0)
    ((_, out),) = seen["stn"]
    torch.testing.assert_close(r.output, out, atol=0, rtol=0)
    assert r.input_size == (28, 28)
    # the grid rebuilt from theta reproduces the output
    resampled = torch.nn.functional.grid_sample(x, r.grid(), align_corners=False)
    torch.testing.assert_close(resampled, out, atol=1e-6, rtol=0)


def test_no_hooks_left_after_exit_and_after_an_exception(tiny_net, tiny_stnet):
    for model in (tiny_net, tiny_stnet):
        before = _hook_count(model)
        with attnviz.capture(model):
            assert _hook_count(model) > before
            model(torch.rand(1, *((3, 16, 16) if model is tiny_net else (1, 28, 28))))
        assert _hook_count(model) == before == 0
        with pytest.raises(RuntimeError, match="boom"), attnviz.capture(model):
            raise RuntimeError("boom")
        assert _hook_count(model) == 0
    cap = attnviz.capture(tiny_net)
    with cap:
        pass
    cap.remove()  # safe twice
    assert _hook_count(tiny_net) == 0


def test_hook_error_mid_forward_leaves_model_clean(tiny_net):
    x = torch.rand(1, 3, 5, 5)  # fine for convs
    with pytest.raises(RuntimeError), attnviz.capture(tiny_net):
        tiny_net(torch.rand(1, 4, 8, 8))  # wrong channel count raises inside the forward
    assert _hook_count(tiny_net) == 0
    tiny_net(x)


def test_capture_never_changes_the_callers_model(tiny_net):
    tiny_net.train()
    tiny_net.cbam.eval()  # a mixed state that must come back exactly
    modes = {n: m.training for n, m in tiny_net.named_modules()}
    loss = tiny_net(torch.rand(2, 3, 8, 8)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in tiny_net.named_parameters()}
    params = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    with torch.enable_grad():
        with attnviz.capture(tiny_net) as rec:
            assert not tiny_net.training  # captured in eval by default
            tiny_net(torch.rand(2, 3, 8, 8))
        assert torch.is_grad_enabled()
    assert {n: m.training for n, m in tiny_net.named_modules()} == modes
    for n, p in tiny_net.named_parameters():
        assert torch.equal(p.grad, grads[n]) and torch.equal(p.detach(), params[n])
    with torch.no_grad(), attnviz.capture(tiny_net):
        pass
    assert torch.is_grad_enabled()
    assert not rec["se"].weights.requires_grad


def test_eval_false_keeps_training_mode(tiny_net):
    tiny_net.train()
    with attnviz.capture(tiny_net, eval=False):
        assert tiny_net.training and tiny_net.drop.training
    assert tiny_net.training


def test_records_are_detached_copies_on_cpu_optionally_half(tiny_net):
    x = torch.rand(2, 3, 8, 8)
    with attnviz.capture(tiny_net, dtype=torch.float16) as rec:
        out = tiny_net(x)
    assert rec["se"].weights.dtype == torch.float16 and rec["se"].weights.device.type == "cpu"
    with attnviz.capture(tiny_net, records_on=None) as rec32:
        tiny_net(x)
    torch.testing.assert_close(rec["se"].weights.float(), rec32["se"].weights, atol=1e-3, rtol=0)
    # a later in-place change of the live tensor does not reach the record
    live = []
    h = tiny_net.se.gate.register_forward_hook(lambda m, a, o: live.append(o))
    with attnviz.capture(tiny_net) as rec2:
        tiny_net(x)
    h.remove()
    before = rec2["se"].weights.clone()
    live[0].mul_(0)
    assert torch.equal(rec2["se"].weights, before)
    assert out.shape == (2, 10)


def test_several_forwards_concatenate_along_the_batch(tiny_net):
    a, b = torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8)
    with attnviz.capture(tiny_net) as rec:
        tiny_net(a)
        tiny_net(b)
    with attnviz.capture(tiny_net) as ref:
        tiny_net(torch.cat([a, b]))
    assert rec["se"].calls == 2 and rec["se"].batch_size == 5
    for name in rec:
        torch.testing.assert_close(rec[name].data, ref[name].data, atol=1e-6, rtol=0)


def test_different_sizes_in_one_capture_give_a_clear_error(tiny_net):
    with attnviz.capture(tiny_net) as rec:
        tiny_net(torch.rand(1, 3, 8, 8))
        tiny_net(torch.rand(1, 3, 16, 16))
    assert rec["se"].weights.shape == (2, 16)  # channel weights do not depend on size
    with pytest.raises(ValueError, match="one capture per input size"):
        rec["cbam.spatial_gate"].map  # noqa: B018


def test_selection_by_kind_and_name(tiny_net):
    with attnviz.capture(tiny_net, kinds="spatial") as rec:
        tiny_net(torch.rand(1, 3, 8, 8))
    assert list(rec) == ["cbam.spatial_gate"]
    with attnviz.capture(tiny_net, blocks="cbam.*") as rec:
        tiny_net(torch.rand(1, 3, 8, 8))
    assert list(rec) == ["cbam.channel_gate", "cbam.spatial_gate"]
    assert [r.name for r in rec.select(kind="channel")] == ["cbam.channel_gate"]
    assert [r.name for r in rec.select(blocks="*spatial*")] == ["cbam.spatial_gate"]
    with pytest.raises(ValueError, match="no record matches"):
        rec.select(blocks="layer9.*")
    with pytest.raises(KeyError, match="recorded"):
        rec["se"]


def test_clear_errors(tiny_net):
    with pytest.raises(ValueError, match=r"no recognised attention module.*register"):
        attnviz.capture(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="matches no attention module.*available"):
        attnviz.capture(tiny_net, blocks="layer4.*")
    with pytest.raises(ValueError, match="unknown kind"):
        attnviz.capture(tiny_net, kinds="temporal")
    with pytest.raises(TypeError, match="nn.Module"):
        attnviz.capture(lambda x: x)
    with pytest.raises(TypeError, match="floating"):
        attnviz.capture(tiny_net, dtype=torch.int8)


class _TimmStyleSE(nn.Module):
    """An SE written the timm way: the gate is a submodule called ``gate``, conv MLP."""

    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


def test_registry_teaches_capture_a_new_type():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), _TimmStyleSE(6))
    # a module of its own could compute attention: capture looks at what the forward does,
    # and says that it applied none (no registered module, no attention kernel)
    with pytest.raises(ValueError, match="applied no attention.*register_attention_type"):
        with attnviz.capture(model):
            model(torch.rand(1, 3, 8, 8))
    attnviz.register_attention_type(_TimmStyleSE, kind="channel", submodule="gate")
    try:
        assert "test_capture._TimmStyleSE" in "".join(attnviz.list_attention_types("*TimmStyle*"))
        with pytest.raises(ValueError, match="registered already"):
            attnviz.register_attention_type(_TimmStyleSE, kind="channel", submodule="gate")
        x = torch.rand(2, 3, 8, 8)
        with attnviz.capture(model) as rec:
            out = model(x)
        w = rec["1"].weights
        assert w.shape == (2, 6)
        torch.testing.assert_close(out, model[0](x) * w[:, :, None, None], atol=1e-6, rtol=0)
    finally:
        attnviz.unregister_attention_type(_TimmStyleSE)
    with pytest.raises(ValueError, match="kind must be one of"):
        attnviz.register_attention_type(_TimmStyleSE, kind="temporal")
    with pytest.raises(TypeError, match="nn.Module subclass"):
        attnviz.register_attention_type(int, kind="channel")


def test_builtin_registry_lists_own_and_torchvision_modules():
    names = attnviz.list_attention_types()
    assert "torchvision.ops.misc.SqueezeExcitation" in names
    assert {"attnviz.modules.se.SqueezeExcitation", "attnviz.modules.cbam.SpatialGate"} <= set(
        names
    )


def test_memory_stays_flat_across_1000_captures():
    psutil = pytest.importorskip("psutil")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), CBAM(8, reduction=2)).eval()
    x = torch.rand(16, 3, 64, 64)  # a spatial record is 16*64*64*4 B = 256 KiB
    proc = psutil.Process()
    refs = []

    def run(n):
        for _ in range(n):
            with torch.no_grad(), attnviz.capture(model) as rec:
                model(x)
            refs.append(weakref.ref(rec))
            del rec

    run(50)
    gc.collect()
    before = proc.memory_info().rss
    run(1000)
    gc.collect()
    grown = proc.memory_info().rss - before
    # keeping every record alive would cost > 1000 * 256 KiB = 250 MiB
    assert grown < 40 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 1000 captures"
    assert all(r() is None for r in refs)
    assert _hook_count(model) == 0


def test_layer_registry_builds_attention_by_name():
    assert {"se", "cbam"} <= set(attnviz.list_attention_layers())
    assert isinstance(attnviz.get_attention_layer("se", 32), SqueezeExcitation)
    assert isinstance(attnviz.get_attention_layer("cbam", 32, reduction=8), CBAM)
    assert isinstance(attnviz.get_attention_layer(None, 32), nn.Identity)
    with pytest.raises(ValueError, match="unknown attention 'eca'.*register_attention_layer"):
        attnviz.get_attention_layer("eca", 32)
    with pytest.raises(ValueError, match="exists already"):
        attnviz.register_attention_layer("se", SqueezeExcitation)
    attnviz.register_attention_layer("timm_se", _TimmStyleSE)
    try:
        assert isinstance(attnviz.get_attention_layer("timm_se", 6), _TimmStyleSE)
    finally:
        attnviz.registry._LAYERS.pop("timm_se")


def test_features_are_the_maps_the_attention_scaled(tiny_net):
    seen, handles = _io_hooks(tiny_net, (SqueezeExcitation, ChannelGate, SpatialGate))
    with attnviz.capture(tiny_net, features=True) as rec:
        tiny_net(torch.rand(3, 3, 16, 16))
    for h in handles:
        h.remove()
    for name in ("se", "cbam.channel_gate"):
        ((inp, out),) = seen[name]
        r = rec[name]
        assert torch.equal(r.features, inp)
        torch.testing.assert_close(r.features * r.weights[:, :, None, None], out, atol=1e-6, rtol=0)
    r = rec["cbam.spatial_gate"]
    torch.testing.assert_close(r.features * r.map[:, None], seen["cbam.spatial_gate"][0][1])
    with attnviz.capture(tiny_net) as rec:
        tiny_net(torch.rand(1, 3, 16, 16))
    with pytest.raises(AttributeError, match="features=True"):
        rec["se"].features  # noqa: B018
