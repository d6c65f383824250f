"""NonLocal (Wang et al., CVPR 2018): eq. 3/4/6 by hand, the captured matrix, grids, placement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

import attnviz
from attnviz.models import resnet, small_resnet
from attnviz.models.resnets import _load_backbone
from attnviz.modules import NonLocal


def _eval_block(channels=8, **kwargs) -> NonLocal:
    block = NonLocal(channels, **kwargs).eval()
    with torch.no_grad():  # leave the identity: a W_z that does something
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.5, 0.5)
        block.bn.running_mean.uniform_(-0.1, 0.1)
    return block


def _y_hook(block: NonLocal):
    seen = {}
    handle = block.w_z.register_forward_pre_hook(lambda _m, args: seen.setdefault("y", args[0]))
    return seen, handle


def _one_hot_positions(h: int, w: int) -> torch.Tensor:
    """x with C = h w channels: channel p is 1 at position p (row-major), 0 elsewhere."""
    return torch.eye(h * w).reshape(1, h * w, h, w)


def _self_looking_block(n: int, **kwargs) -> NonLocal:
    """theta = phi = 10 I, so theta(x_i)^T phi(x_j) = 100 [i == j] on one-hot positions."""
    block = NonLocal(n, inner=n, **kwargs).eval()
    with torch.no_grad():
        for conv in (block.theta, block.phi):
            conv.weight.copy_(10 * torch.eye(n)[:, :, None, None])
            conv.bias.zero_()
    return block


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product"])
@pytest.mark.parametrize("subsample", [False, True])
def test_a_new_block_is_exactly_the_identity(mode, subsample):
    block = NonLocal(8, mode=mode, subsample=subsample)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(block(x), x)  # training mode: batch statistics, scale 0
    assert torch.equal(block.eval()(x), x)
    assert torch.equal(block.bn.weight, torch.zeros(8)) and block.inner == 4


def test_matrix_is_the_softmax_of_theta_phi_eq3_and_rows_sum_to_one():
    block = _eval_block()
    x = torch.randn(2, 8, 5, 4)
    with attnviz.capture(block) as rec:
        block(x)
    r = rec[""]
    assert r.kind == "self" and r.matrix.shape == (2, 1, 20, 20) and r.heads == 1
    theta = block.theta(x).flatten(2)  # B x D x N
    phi = block.phi(x).flatten(2)
    expected = torch.softmax(torch.einsum("bdi,bdj->bij", theta, phi), dim=-1)
    torch.testing.assert_close(r.matrix[:, 0], expected.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.matrix.sum(-1), torch.ones(2, 1, 20), atol=1e-6, rtol=0)


def test_dot_product_divides_by_the_number_of_keys_eq4():
    block = _eval_block(mode="dot_product", subsample=True)
    x = torch.randn(1, 8, 6, 6)
    with attnviz.capture(block) as rec:
        block(x)
    theta = block.theta(x).flatten(2)
    phi = F.max_pool2d(block.phi(x), 2).flatten(2)  # 9 keys
    expected = torch.einsum("bdi,bdj->bij", theta, phi) / 9
    torch.testing.assert_close(rec[""].matrix[:, 0], expected.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("subsample", [False, True])
def test_matrix_times_values_is_y_and_the_output_is_x_plus_wz_y_eq6(subsample):
    block = _eval_block(subsample=subsample)
    seen, handle = _y_hook(block)
    x = torch.randn(2, 8, 6, 6)
    with attnviz.capture(block) as rec:
        z = block(x)
    handle.remove()
    r = rec[""]
    keys = 9 if subsample else 36
    assert r.values.shape == (2, 1, keys, 4)
    y = (r.matrix @ r.values)[:, 0].transpose(1, 2).reshape(2, 4, 6, 6)
    torch.testing.assert_close(y, seen["y"], atol=1e-6, rtol=0)
    g = F.max_pool2d(block.g(x), 2) if subsample else block.g(x)
    torch.testing.assert_close(r.values[:, 0], g.flatten(2).transpose(1, 2).detach())
    torch.testing.assert_close(x + block.bn(block.w_z(y)), z, atol=1e-6, rtol=0)
    assert not torch.allclose(z, x)


def test_subsampling_puts_keys_on_a_half_grid():
    with attnviz.capture(block := NonLocal(8, subsample=True)) as rec:
        block(torch.randn(1, 8, 8, 12))
    r = rec[""]
    assert r.query_size == (8, 12) and r.key_size == (4, 6) and r.matrix.shape == (1, 1, 96, 24)
    assert r.received().shape == (1, 4, 6)
    with attnviz.capture(block) as rec:
        block(torch.randn(1, 8, 7, 9))  # odd sizes: the pooling floors
    assert rec[""].key_size == (3, 4) and rec[""].query_size == (7, 9)


def test_query_map_of_a_block_where_each_position_looks_at_itself():
    block = _self_looking_block(16)  # a 4 x 4 feature grid
    with attnviz.capture(block) as rec:
        block(_one_hot_positions(4, 4))
    r = rec[""]
    torch.testing.assert_close(r.matrix[0, 0], torch.eye(16), atol=1e-6, rtol=0)
    # image 32 x 32 over the 4 x 4 grid: pixel (x=13, y=22) lies in cell (22 // 8, 13 // 8)
    assert r.query_cell((13, 22), (32, 32)) == (2, 1)
    shown = r.query_map((13, 22), (32, 32))
    one_hot = torch.zeros(1, 1, 4, 4)
    one_hot[0, 0, 2, 1] = 1
    expected = F.interpolate(one_hot, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(shown, expected, atol=1e-6, rtol=0)
    peak = int(shown[0].argmax())
    assert 16 <= peak // 32 < 24 and 8 <= peak % 32 < 16  # inside the cell's pixel block


def test_query_map_with_subsampling_lights_the_pooled_cell_of_the_query():
    block = _self_looking_block(64, subsample=True)  # 8 x 8 queries, 4 x 4 keys
    with attnviz.capture(block) as rec:
        block(_one_hot_positions(8, 8))
    r = rec[""]
    assert r.query_cell((5, 30), (32, 32)) == (7, 1)
    key_map = r.matrix[0, 0, 7 * 8 + 1].reshape(4, 4)
    expected = torch.zeros(4, 4)
    expected[3, 0] = 1  # query cell (7, 1) pools into key cell (3, 0)
    torch.testing.assert_close(key_map, expected, atol=1e-6, rtol=0)
    up = F.interpolate(expected[None, None], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(r.query_map((5, 30), (32, 32)), up[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(r.received()[0], torch.full((4, 4), 1 / 16), atol=1e-6, rtol=0)


def test_query_cell_on_a_non_square_image_and_bad_queries():
    with attnviz.capture(block := NonLocal(4)) as rec:
        block(torch.randn(1, 4, 3, 4))
    r = rec[""]
    assert r.query_cell((0, 0), (30, 40)) == (0, 0)
    assert r.query_cell((39, 29), (30, 40)) == (2, 3)
    assert r.query_cell((9.99, 10.0), (30, 40)) == (1, 0)
    assert r.query_map((39, 29), (30, 40)).shape == (1, 30, 40)
    with pytest.raises(ValueError, match="must lie in the 40 x 30 image"):
        r.query_map((40, 0), (30, 40))
    with pytest.raises(ValueError, match="image_size"):
        r.query_map((0, 0), (0, 40))


def test_received_is_the_mean_over_queries():
    with attnviz.capture(block := _eval_block()) as rec:
        block(torch.randn(2, 8, 4, 6))
    r = rec[""]
    torch.testing.assert_close(r.received(), r.matrix[:, 0].mean(1).reshape(2, 4, 6))
    assert torch.allclose(r.received().sum((1, 2)), torch.ones(2))


class _TokenSelfAttention(nn.Module):
    """Self-attention over a sequence of tokens (B x N x D): no grid to read from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.attend = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x @ x.transpose(1, 2)) @ x


def test_grids_come_from_the_input_or_default_to_squares():
    block = _eval_block()
    with attnviz.capture(block) as rec:
        block(torch.randn(1, 8, 2, 3))
    assert rec[""].query_size == (2, 3) == rec[""].key_size  # NonLocal states its grids
    attnviz.register_attention_type(_TokenSelfAttention, "self", "attend")
    try:
        m = _TokenSelfAttention()
        with attnviz.capture(m) as rec:
            m(torch.randn(1, 16, 3))
        assert rec[""].query_size == (4, 4) and rec[""].key_size == (4, 4)
        assert rec[""].values.shape == (1, 1, 16, 3)
        with attnviz.capture(m) as rec:
            m(torch.randn(1, 6, 3))
        with pytest.raises(ValueError, match="no square grid"):
            rec[""].query_size  # noqa: B018
    finally:
        attnviz.unregister_attention_type(_TokenSelfAttention)


def test_registry_and_arguments():
    ((name, spec),) = attnviz.list_attention_types("attnviz.*NonLocal").items()
    assert name == "attnviz.modules.nonlocal_block.NonLocal"
    assert (spec.kind, spec.submodule) == ("self", "attend")
    assert isinstance(attnviz.get_attention_layer("nonlocal", 8, subsample=True), NonLocal)
    for kwargs, match in [
        ({"channels": 0}, "channels"),
        ({"channels": 8, "inner": 0}, "inner"),
        ({"channels": 8, "mode": "gaussian"}, "mode must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            NonLocal(**kwargs)
    with pytest.raises(TypeError, match="subsample"):
        NonLocal(8, subsample=2)


# -- placement in the ResNets ----------------------------------------------------------------
def _nonlocal_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, NonLocal)]


def test_small_resnet_has_non_local_blocks_only_in_the_chosen_stages():
    model = small_resnet(attention="nonlocal", width=8)
    assert _nonlocal_names(model) == ["layer3.non_local"]  # the paper's res4
    assert all(isinstance(m.attention, nn.Identity) for m in model.modules() if hasattr(m, "bn2"))
    assert torch.equal(model.layer3.non_local.bn.weight, torch.zeros(32))  # kept its zero init
    model = small_resnet(18, attention="nonlocal", width=8, nonlocal_stages=(2, 3))
    assert _nonlocal_names(model) == ["layer2.non_local", "layer3.non_local"]
    with attnviz.capture(model) as rec:
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert [(n, r.kind) for n, r in rec.items()] == [
        ("layer2.non_local", "self"),
        ("layer3.non_local", "self"),
    ]
    assert rec["layer2.non_local"].query_size == (16, 16)
    assert rec["layer3.non_local"].matrix.shape == (2, 1, 64, 64)


def test_plain_and_se_models_are_unchanged():
    plain = small_resnet(width=8)
    assert not _nonlocal_names(plain) and not [k for k in plain.state_dict() if "non_local" in k]
    se = small_resnet(attention="se", width=8)
    assert not _nonlocal_names(se)
    assert all(type(b.attention).__name__ == "SqueezeExcitation" for b in se.layer3)
    with pytest.raises(ValueError, match="only with attention='nonlocal'"):
        small_resnet(attention="se", nonlocal_stages=(3,))
    with pytest.raises(ValueError, match="distinct stages 1-4"):
        small_resnet(attention="nonlocal", nonlocal_stages=(5,))


def test_resnet_with_non_local_blocks_loads_a_plain_backbone():
    model = resnet("resnet18", attention="nonlocal", nonlocal_stages=(2, 3), num_classes=10)
    assert _nonlocal_names(model) == ["layer2.non_local", "layer3.non_local"]
    state = {k: v for k, v in resnet18().state_dict().items() if not k.startswith("fc.")}
    missing = _load_backbone(model, state, fresh=("fc.",))
    assert {k.split(".")[1] for k in missing if not k.startswith("fc.")} == {"non_local"}
    assert model.layer3.non_local.subsample is False
