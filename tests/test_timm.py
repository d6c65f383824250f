"""timm's whole attention zoo, captured out of the box and checked against each layer's equation.

Every layer ``timm.layers.create_attn.get_attn`` can build (21 names) and the EfficientNet /
MobileNetV3 SE block, inside real timm models with random weights and non-trivial
normalisation statistics. For each: one record per attention module, and the module's
output rebuilt from its input and the record by the layer's own equation, written out here
(never with attnviz's own checks), to 1e-5 relative.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import warnings

import pytest
import timm
import torch
from timm.layers import cbam, coord_attn, eca, gather_excite, global_context, squeeze_excite
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.halo_attn import HaloAttn
from timm.layers.lambda_layer import LambdaLayer
from timm.layers.non_local_attn import BilinearAttnTransform, NonLocalAttn
from timm.layers.selective_kernel import SelectiveKernel
from timm.layers.split_attn import SplitAttn
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn

import attnviz
from attnviz.testing import randomise

RTOL = 1e-5


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    err = float((a - e).abs().max() / e.abs().max())
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"
    return err


def _resnet(attn):
    return functools.partial(timm.create_model, "resnet18", block_args={"attn_layer": attn})


def _ge(**kw):
    # timm 1.0's GatherExcite cannot build its default MLP (ConvMlp gets act_layer twice), so
    # every timm model that asks for it fails; without the MLP it builds, and it is the layer.
    return _resnet(functools.partial(gather_excite.GatherExcite, use_mlp=False, **kw))


def _model(name):
    return functools.partial(timm.create_model, name)


# create_attn name -> (model builder, input size, the classes that hold the attention)
CASES = {
    "se": (_model("seresnet18"), 64, (squeeze_excite.SEModule,)),
    "ese": (_model("ese_vovnet19b_dw"), 64, (squeeze_excite.EffectiveSEModule,)),
    "eca": (_model("ecaresnet26t"), 64, (eca.EcaModule,)),
    "ecam": (_resnet("ecam"), 64, (eca.EcaModule,)),
    "ceca": (_resnet("ceca"), 64, (eca.CecaModule,)),
    "ge": (_ge(), 64, (gather_excite.GatherExcite,)),
    "ge-extent": (_ge(extent=2), 64, (gather_excite.GatherExcite,)),
    "gc": (_resnet("gc"), 64, (global_context.GlobalContext,)),
    "gca": (_model("gcresnet33ts"), 64, (global_context.GlobalContext,)),
    "cbam": (_resnet("cbam"), 64, (cbam.ChannelAttn, cbam.SpatialAttn)),
    "lcbam": (_resnet("lcbam"), 64, (cbam.LightChannelAttn, cbam.LightSpatialAttn)),
    "coord": (_resnet("coord"), 64, (coord_attn.CoordAttn,)),
    "scoord": (_resnet("scoord"), 64, (coord_attn.SimpleCoordAttn,)),
    "ela": (_resnet("ela"), 64, (coord_attn.EfficientLocalAttn,)),
    "strip": (_resnet("strip"), 64, (coord_attn.StripAttn,)),
    "sk": (_model("skresnet18"), 64, (SelectiveKernel,)),
    "splat": (_model("resnest14d"), 64, (SplitAttn,)),
    "nl": (_resnet("nl"), 64, (NonLocalAttn,)),
    "bat": (_model("bat_resnext26ts"), 256, (BilinearAttnTransform,)),
    "bottleneck": (_model("botnet26t_256"), 256, (BottleneckAttn,)),
    "halo": (_model("halonet26t"), 256, (HaloAttn,)),
    "efficientnet-se": (_model("efficientnet_b0"), 64, (SqueezeExcite,)),
    "mobilenetv3-se": (_model("mobilenetv3_small_100"), 64, (SqueezeExcite,)),
}


def _io(model, classes):
    """Test-owned hooks: every attention module's (input, output), in call order."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, classes) and not any(
            isinstance(m, c) for c in classes if c is not type(m) and issubclass(type(m), c)
        ):

            def hook(mod, args, out, name=name):
                seen[name] = (args[0].detach().clone(), out.detach().clone())

            handles.append(m.register_forward_hook(hook))
    return seen, handles


def _inner(model, classes, path, want="input"):
    """(input or output) of submodule ``path`` of each attention module, by module name."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, classes):

            def hook(mod, args, out, name=name):
                seen[name] = (args[0] if want == "input" else out).detach().clone()

            handles.append(m.get_submodule(path).register_forward_hook(hook))
    return seen, handles


def _run(case):
    build, size, classes = CASES[case]
    torch.manual_seed(0)
    model = randomise(build(pretrained=False))
    x = torch.randn(2, 3, size, size)
    n = sum(type(m) in classes for m in model.modules())
    assert n > 0
    seen, handles = _io(model, classes)
    extra = {}
    if case == "sk":
        extra, more = _inner(model, classes, "attn")
        handles += more
    if case == "splat":
        extra, more = _inner(model, classes, "act0", want="output")
        handles += more
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a faithfulness warning fails the test
        with torch.no_grad(), attnviz.capture(model, verify="raise") as rec:
            model(x)
    for h in handles:
        h.remove()
    ours = [r for r in rec.values() if type(model.get_submodule(r.name)) in classes]
    assert len(ours) == len(rec) == n
    assert rec.checks and all(c.ok for c in rec.checks)
    return model, rec, seen, extra


@pytest.mark.parametrize(
    "case", ["se", "ese", "eca", "ecam", "ceca", "ge", "efficientnet-se", "mobilenetv3-se"]
)
def test_channel_gates_scale_their_input_by_the_recorded_weights(case):
    _, rec, seen, _ = _run(case)
    for r in rec.values():
        inp, out = seen[r.name]
        assert r.kind == "channel" and r.weights.shape == inp.shape[:2]
        assert 0 <= float(r.weights.min()) and float(r.weights.max()) <= 1
        _close(out, inp * r.weights[:, :, None, None])


@pytest.mark.parametrize("case", ["cbam", "lcbam"])
def test_cbam_is_two_records_channel_then_spatial(case):
    _, rec, seen, _ = _run(case)
    kinds = [r.kind for r in rec.values()]
    assert kinds == ["channel", "spatial"] * (len(rec) // 2)
    for r in rec.values():
        inp, out = seen[r.name]
        gate = r.weights[:, :, None, None] if r.kind == "channel" else r.map[:, None]
        _close(out, inp * gate)
    # the whole CBAM module: F'' = Ms(F') F', F' = Mc(F) F
    name = next(iter(rec)).rsplit(".", 1)[0]
    f = seen[f"{name}.channel"][0]
    mc, ms = rec[f"{name}.channel"].weights, rec[f"{name}.spatial"].map
    _close(seen[f"{name}.spatial"][1], f * mc[:, :, None, None] * ms[:, None])


@pytest.mark.parametrize("case", ["ge-extent", "scoord", "strip"])
def test_elementwise_gates(case):
    model, rec, seen, _ = _run(case)
    for r in rec.values():
        inp, out = seen[r.name]
        assert r.kind == "elementwise" and r.gate.shape == inp.shape
        skip = inp if getattr(model.get_submodule(r.name), "has_skip", False) else 0
        _close(out, inp * r.gate + skip)


@pytest.mark.parametrize("case", ["coord", "ela"])
def test_axial_gates_multiply_rows_and_columns(case):
    _, rec, seen, _ = _run(case)
    for r in rec.values():
        inp, out = seen[r.name]
        b, c, h, w = inp.shape
        assert r.kind == "axial" and r.height.shape == (b, c, h) and r.width.shape == (b, c, w)
        _close(out, inp * r.height[..., :, None] * r.width[..., None, :])
        torch.testing.assert_close(r.gate(), r.height[..., :, None] * r.width[..., None, :])


def test_selective_kernel_weights_choose_among_paths():
    model, rec, seen, paths = _run("sk")
    for r in rec.values():
        m = model.get_submodule(r.name)
        _, out = seen[r.name]
        p = paths[r.name]  # B x K x C x H x W, the stacked branch outputs
        assert r.kind == "branch" and r.weights.shape == p.shape[:3]
        _close(out, (p * r.weights[..., None, None]).sum(1))
        # the SK paper's select: softmax over paths of fc(z), z from the fused paths
        a = m.attn
        z = a.act(a.bn(a.fc_reduce(p.sum(1).mean((2, 3), keepdim=True))))
        logits = a.fc_select(z).view(p.shape[0], p.shape[1], p.shape[2])
        _close(r.weights, logits.softmax(dim=1))
        assert torch.equal(r.choice(), r.weights.argmax(1))


def test_split_attention_weights_choose_among_radix_groups():
    model, rec, seen, act = _run("splat")
    for r in rec.values():
        m = model.get_submodule(r.name)
        _, out = seen[r.name]
        x = act[r.name]
        b, rc, h, w = x.shape
        paths = x.reshape(b, m.radix, rc // m.radix, h, w)
        assert r.weights.shape == (b, m.radix, rc // m.radix) and r.paths == m.radix
        torch.testing.assert_close(r.weights.sum(1), torch.ones(b, rc // m.radix))
        _close(out, (paths * r.weights[..., None, None]).sum(1))


@pytest.mark.parametrize("case", ["gc", "gca"])
def test_global_context_map_pools_the_context_then_scales_and_shifts(case):
    model, rec, seen, _ = _run(case)
    for r in rec.values():
        m = model.get_submodule(r.name)
        inp, out = seen[r.name]
        b, _, h, w = inp.shape
        assert r.kind == "context" and r.map.shape == (b, h, w)
        expected_map = m.conv_attn(inp).reshape(b, h * w).softmax(-1).reshape(b, h, w)
        _close(r.map, expected_map)
        context = torch.einsum("bchw,bhw->bc", inp, r.map)[:, :, None, None]
        scale = torch.sigmoid(m.mlp_scale(context)) if m.mlp_scale is not None else None
        shift = m.mlp_add(context) if m.mlp_add is not None else None
        assert r.has_scale == (scale is not None) and r.has_shift == (shift is not None)
        expected = inp
        if scale is not None:
            _close(r.scale, scale[..., 0, 0])
            expected = expected * r.scale[:, :, None, None]
        if shift is not None:
            _close(r.shift, shift[..., 0, 0])
            expected = expected + r.shift[:, :, None, None]
        _close(out, expected)
    assert case != "gca" or not any(r.has_scale for r in rec.values())


def test_non_local_matrix_reproduces_the_block():
    model, rec, seen, _ = _run("nl")
    for r in rec.values():
        m = model.get_submodule(r.name)
        inp, out = seen[r.name]
        b, _, h, w = inp.shape
        t = m.t(inp).flatten(2).transpose(1, 2)
        p = m.p(inp).flatten(2)
        _close(r.matrix[:, 0], (t @ p * m.scale).softmax(-1))
        torch.testing.assert_close(r.matrix.sum(-1), torch.ones(b, 1, h * w))
        y = (r.matrix @ r.values)[:, 0].transpose(1, 2).reshape(b, -1, h, w)
        _close(out, m.norm(m.z(y)) + inp)
        assert r.query_size == r.key_size == (h, w)


def test_bottleneck_attention_heads_reproduce_the_block():
    model, rec, seen, _ = _run("bottleneck")
    for r in rec.values():
        m = model.get_submodule(r.name)
        inp, out = seen[r.name]
        b, _, h, w = inp.shape
        assert r.heads == m.num_heads and r.matrix.shape == (b, m.num_heads, h * w, h * w)
        torch.testing.assert_close(r.matrix.sum(-1), torch.ones(b, m.num_heads, h * w))
        y = (r.matrix @ r.values).transpose(-1, -2).reshape(b, -1, h, w)
        _close(out, m.pool(y))
        assert r.query_map((0, 0), (h * 4, w * 4), head=1).shape == (b, h * 4, w * 4)


def test_halo_windows_laid_on_the_grid_reproduce_the_block():
    model, rec, seen, _ = _run("halo")
    for r in rec.values():
        m = model.get_submodule(r.name)
        inp, out = seen[r.name]
        b, _, h, w = inp.shape
        hq, wq = r.query_size
        assert r.key_size == (h, w) and r.heads == m.num_heads
        dense = r.matrix
        assert dense.shape == (b, m.num_heads, hq * wq, h * w)
        # padded keys take part in the softmax: what a row misses is on the padding
        torch.testing.assert_close(
            dense.sum(-1) + r.padding_mass(), torch.ones(b, r.heads, hq * wq)
        )
        assert float(r.padding_mass().max()) > 0
        y = (dense @ r.values).transpose(-1, -2).reshape(b, -1, hq, wq)
        _close(out, m.pool(y))
        # a query only sees its block's window: block + halo on every side
        i, j = r.query_cell((0, 0), (hq, wq))
        row = dense[0, 0, i * wq + j].reshape(h, w)
        reach = m.block_size + m.halo_size
        assert float(row[reach:].abs().sum()) == 0 and float(row[:, reach:].abs().sum()) == 0


def test_bilinear_attention_rows_and_columns_reproduce_the_block():
    model, rec, seen, _ = _run("bat")
    for r in rec.values():
        m = model.get_submodule(r.name)
        inp, out = seen[r.name]
        b, c, h, w = inp.shape
        g = m.groups
        assert r.rows.shape == (b, g, h, h) and r.cols.shape == (b, g, w, w)
        torch.testing.assert_close(r.rows.sum(-1), torch.ones(b, g, h))
        torch.testing.assert_close(r.cols.sum(-2), torch.ones(b, g, w))
        x = inp.reshape(b, g, c // g, h, w)
        y = r.rows[:, :, None] @ x @ r.cols[:, :, None]
        _close(out, m.conv2(y.reshape(b, c, h, w)))
    small = list(rec.values())[-1]  # the last stage, 8 x 8: the dense matrix is 64 x 64
    p, q = small.rows, small.cols
    dense = small.matrix
    hh, ww = p.shape[-1], q.shape[-1]
    i, j, k, m = 3, 5, 2, 7  # output (i, j) takes input (k, m) with weight P[i, k] Q[m, j]
    torch.testing.assert_close(dense[0, 1, i * ww + j, k * ww + m], p[0, 1, i, k] * q[0, 1, m, j])
    torch.testing.assert_close(dense.sum(-1), torch.ones(*dense.shape[:3]))
    xy = (j * 4 + 1, i * 4 + 1)
    key_map = small.key_row(xy, (hh * 4, ww * 4), head=1)
    torch.testing.assert_close(key_map[0].flatten(), dense[0, 1, i * ww + j])
    torch.testing.assert_close(small.received(), dense.float().mean(1).mean(1).reshape(-1, hh, ww))


def test_lambda_layers_are_refused_with_the_reason():
    model = timm.create_model("lambda_resnet26t", pretrained=False)
    assert any(isinstance(m, LambdaLayer) for m in model.modules())
    with pytest.warns(attnviz.CaptureWarning, match="by design"):
        with pytest.raises(ValueError, match="lambda layer .* applies no attention map"):
            with attnviz.capture(model):
                model(torch.randn(1, 3, 64, 64))
    mixed = nn.Sequential(squeeze_excite.SEModule(16), LambdaLayer(16, feat_size=None, r=3))
    with pytest.warns(attnviz.CaptureWarning, match="not recorded by design"):
        with attnviz.capture(mixed) as rec:
            mixed.eval()(torch.randn(1, 16, 6, 6))
    assert list(rec) == ["0"] and "no attention map" in rec.refused["1"]
    assert "refused 1" in repr(rec)
    with pytest.raises(ValueError, match="every selected module is refused"):
        attnviz.capture(mixed, blocks="1")


def test_every_create_attn_name_is_recognised():
    from timm.layers.create_attn import get_attn

    from attnviz.probes.timm import TIMM_LAYERS

    names = {
        "se",
        "ese",
        "eca",
        "ecam",
        "ceca",
        "ge",
        "gc",
        "gca",
        "cbam",
        "lcbam",
        "coord",
        "scoord",
        "ela",
        "strip",
        "sk",
        "splat",
        "lambda",
        "bottleneck",
        "halo",
        "nl",
        "bat",
    }
    assert set(TIMM_LAYERS) == names
    specs = attnviz.list_attention_types("timm.*")
    for name in names:
        cls = get_attn(name)
        cls = getattr(cls, "func", cls)  # partial(EcaModule, use_mlp=True) and friends
        qual = f"{cls.__module__}.{cls.__qualname__}"
        assert any(q in specs for q in TIMM_LAYERS[name]), name
        if qual in specs:  # the layer itself; cbam/lcbam/bat hold theirs in children
            assert qual in TIMM_LAYERS[name]


def test_attnviz_imports_and_captures_without_timm():
    code = (
        "import sys; sys.modules['timm'] = None\n"
        "import torch, attnviz\n"
        "m = attnviz.SqueezeExcitation(8, 2)\n"
        "with attnviz.capture(m) as rec: m(torch.rand(1, 8, 4, 4))\n"
        "assert 'timm' not in [k.split('.')[0] for k in sys.modules if sys.modules[k]]\n"
        "print(len(rec))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
