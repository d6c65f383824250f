"""Each module against its paper's equations, written out by hand on small tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnviz import (
    CBAM,
    ChannelGate,
    HeatmapHead,
    SpatialGate,
    SpatialTransformer,
    SqueezeExcitation,
)
from attnviz.modules import TwoStageTransformer


def _sigmoid(t):
    return 1.0 / (1.0 + torch.exp(-t))


def test_se_matches_equations_2_to_4():
    se = SqueezeExcitation(8, reduction=4)
    u = torch.randn(3, 8, 5, 4, dtype=torch.float64)
    se = se.double()
    # eq. 2: z_c = 1/(HW) sum_ij u_c(i, j), written as an explicit loop
    z = torch.zeros(3, 8, dtype=torch.float64)
    for i in range(5):
        for j in range(4):
            z += u[:, :, i, j]
    z /= 20
    # eq. 3: s = sigmoid(W2 relu(W1 z))
    w1, b1, w2, b2 = se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias
    h = torch.clamp(z @ w1.T + b1, min=0)
    s = _sigmoid(h @ w2.T + b2)
    # eq. 4: x~_c = s_c u_c
    expected = u * s[:, :, None, None]
    assert se.fc1.weight.shape == (2, 8) and se.fc2.weight.shape == (8, 2)
    torch.testing.assert_close(se(u), expected, rtol=0, atol=1e-12)


def test_se_hidden_size_and_errors():
    assert SqueezeExcitation(8, reduction=16).fc1.out_features == 1
    with pytest.raises(ValueError, match="channels"):
        SqueezeExcitation(0)
    with pytest.raises(ValueError, match="reduction"):
        SqueezeExcitation(8, reduction=0)


def test_cbam_matches_equations_1_to_3():
    cbam = CBAM(8, reduction=2, spatial_kernel=3).double()
    f = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    lin1, lin2 = cbam.channel_gate.mlp[0], cbam.channel_gate.mlp[2]

    def mlp(v):
        return torch.clamp(v @ lin1.weight.T + lin1.bias, min=0) @ lin2.weight.T + lin2.bias

    avg = f.sum(dim=(2, 3)) / 30
    mx = f.flatten(2).max(dim=2).values
    mc = _sigmoid(mlp(avg) + mlp(mx))  # eq. 2
    f1 = f * mc[:, :, None, None]
    # eq. 3 with an explicit 3x3 correlation, zero padding 1
    pooled = torch.stack([f1.mean(dim=1), f1.max(dim=1).values], dim=1)
    padded = F.pad(pooled, (1, 1, 1, 1))
    w, b = cbam.spatial_gate.conv.weight[0], cbam.spatial_gate.conv.bias[0]
    conv = torch.zeros(2, 6, 5, dtype=torch.float64)
    for y in range(6):
        for x in range(5):
            conv[:, y, x] = (padded[:, :, y : y + 3, x : x + 3] * w).sum(dim=(1, 2, 3)) + b
    ms = _sigmoid(conv)
    expected = f1 * ms[:, None]
    torch.testing.assert_close(cbam(f), expected, rtol=0, atol=1e-12)


def test_cbam_order_is_channel_then_spatial():
    cbam = CBAM(4, reduction=2)
    names = [n for n, _ in cbam.named_children()]
    assert names == ["channel_gate", "spatial_gate"]
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(cbam(x), cbam.spatial_gate(cbam.channel_gate(x)))


def test_spatial_gate_batch_norm_option_keeps_paper_default():
    assert isinstance(SpatialGate().bn, nn.Identity)
    assert SpatialGate().conv.bias is not None
    g = SpatialGate(batch_norm=True)
    assert isinstance(g.bn, nn.BatchNorm2d) and g.conv.bias is None
    assert g.bn.momentum == 0.01 and g.bn.eps == 1e-5
    with pytest.raises(ValueError, match="odd"):
        SpatialGate(kernel_size=4)


def test_channel_gate_uses_one_shared_mlp():
    gate = ChannelGate(8, reduction=2)
    linears = [m for m in gate.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2


def _loc():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU())


def test_stn_identity_initialisation_returns_the_input():
    stn = SpatialTransformer(_loc())
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(stn.head.weight, torch.zeros(6, 5))
    torch.testing.assert_close(stn.head.bias, torch.tensor([1.0, 0, 0, 0, 1, 0]))
    torch.testing.assert_close(stn(x), x, atol=1e-6, rtol=0)
    theta = stn.regress(x)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(3, 2, 3))


def test_stn_samples_with_eq_1_grid():
    stn = SpatialTransformer(_loc(), output_size=(4, 4))
    with torch.no_grad():
        stn.head.bias.copy_(torch.tensor([0.5, 0, 0.25, 0, 0.5, -0.25]))
    x = torch.rand(2, 1, 8, 8)
    theta = torch.tensor([[0.5, 0, 0.25], [0, 0.5, -0.25]]).expand(2, 2, 3)
    # eq. 1 by hand: target pixel centres in [-1, 1] (align_corners=False)
    t = (torch.arange(4) + 0.5) / 4 * 2 - 1
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    src = torch.stack([0.5 * xs + 0.25, 0.5 * ys - 0.25], dim=-1).expand(2, 4, 4, 2)
    expected = F.grid_sample(x, src, align_corners=False)
    torch.testing.assert_close(stn(x), expected)
    torch.testing.assert_close(stn.regress(x), theta)


def test_stn_attention_transform_is_isotropic_scale_and_translation():
    stn = SpatialTransformer(_loc(), transform="attention")
    assert stn.head.out_features == 3
    with torch.no_grad():
        stn.head.bias.copy_(torch.tensor([0.5, 0.1, -0.2]))
    theta = stn.regress(torch.rand(2, 1, 8, 8))
    torch.testing.assert_close(theta[0], torch.tensor([[0.5, 0, 0.1], [0, 0.5, -0.2]]))


def test_stn_padding_value_fills_outside_the_image():
    stn = SpatialTransformer(_loc(), padding_value=-0.42)
    with torch.no_grad():
        stn.head.bias.copy_(torch.tensor([1.0, 0, 5.0, 0, 1.0, 0]))  # look far to the right
    out = stn(torch.rand(1, 1, 8, 8))
    torch.testing.assert_close(out, torch.full_like(out, -0.42))


def test_stn_resamples_a_higher_resolution_source():
    stn = SpatialTransformer(_loc(), output_size=(16, 16))
    low = torch.rand(1, 1, 8, 8)
    high = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    out = stn(low, source=high)
    assert out.shape == (1, 1, 16, 16)
    torch.testing.assert_close(
        out,
        F.interpolate(high, size=(16, 16), mode="bilinear", align_corners=False, antialias=False),
        atol=0.05,
        rtol=0,
    )


def _conv_loc():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())


@pytest.mark.parametrize("transform", ["affine", "attention"])
def test_heatmap_head_starts_at_the_identity_or_at_its_scale(transform):
    stn = SpatialTransformer(_conv_loc(), transform=transform, head=HeatmapHead(4, transform))
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(stn(x), x, atol=1e-6, rtol=0)
    zoomed = SpatialTransformer(
        _conv_loc(), transform=transform, head=HeatmapHead(4, transform, scale=0.5)
    )
    torch.testing.assert_close(
        zoomed.regress(x), torch.tensor([[0.5, 0, 0], [0, 0.5, 0]]).expand(3, 2, 3)
    )


def test_heatmap_head_translation_is_the_soft_argmax_of_its_scores():
    head = HeatmapHead(2, "attention", scale=0.5).double()
    with torch.no_grad():
        head.score.weight.copy_(torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))
    f = torch.rand(2, 2, 3, 5, dtype=torch.float64)
    params = head(f)
    # by hand: scores s_ij = f0 - 2 f1, p = softmax over the 15 cells, t = sum p * centre
    scores = (f[:, 0] - 2 * f[:, 1]).reshape(2, -1)
    p = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
    xs = torch.tensor([-0.8, -0.4, 0.0, 0.4, 0.8], dtype=torch.float64)  # 5 cell centres
    ys = torch.tensor([-2 / 3, 0.0, 2 / 3], dtype=torch.float64)
    cx = xs.repeat(3)
    cy = ys.repeat_interleave(5)
    torch.testing.assert_close(params[:, 1], (p * cx).sum(1))
    torch.testing.assert_close(params[:, 2], (p * cy).sum(1))
    torch.testing.assert_close(params[:, 0], torch.full((2,), 0.5, dtype=torch.float64))
    # a sharply peaked score map puts the window's centre on that cell
    with torch.no_grad():
        head.score.weight.fill_(0).view(-1)[0] = 100.0
    f = torch.zeros(1, 2, 3, 5, dtype=torch.float64)
    f[0, 0, 2, 1] = 1.0  # row 2, column 1
    torch.testing.assert_close(head(f)[0, 1:], torch.tensor([-0.4, 2 / 3], dtype=torch.float64))


def test_heatmap_head_learns_where_from_gradients():
    # a bright dot at a random place; the loss asks the window's centre to sit on it
    torch.manual_seed(0)
    stn = SpatialTransformer(
        _conv_loc(), transform="attention", head=HeatmapHead(4, "attention", scale=0.5)
    )
    opt = torch.optim.Adam(stn.parameters(), lr=0.05)

    def batch(n=64):
        x = torch.zeros(n, 1, 8, 8)
        r, c = torch.randint(0, 8, (2, n))
        x[torch.arange(n), 0, r, c] = 1.0
        return x, torch.stack([(c + 0.5) / 4 - 1, (r + 0.5) / 4 - 1], dim=1)

    x, target = batch()
    before = (stn.regress(x)[:, :, 2] - target).abs().mean().item()
    for _ in range(150):
        x, target = batch()
        loss = (stn.regress(x)[:, :, 2] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, target = batch()
    after = (stn.regress(x)[:, :, 2] - target).abs().mean().item()
    assert after < 0.25 * before, (before, after)


def test_custom_heads_are_checked():
    with pytest.raises(ValueError, match="feature map"):
        SpatialTransformer(_loc(), head=HeatmapHead(5))(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="same transform"):
        SpatialTransformer(_conv_loc(), head=HeatmapHead(4, "attention"))
    with pytest.raises(ValueError, match="out_features=6"):
        SpatialTransformer(_loc(), head=nn.Linear(5, 4))
    with pytest.raises(ValueError, match="B x 6 parameters"):
        SpatialTransformer(_loc(), head=nn.Sequential(nn.Linear(5, 4)))(torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="reset_head"):
        SpatialTransformer(_loc(), head=nn.Sequential(nn.Linear(5, 6))).reset_head()
    with pytest.raises(TypeError, match="nn.Module or None"):
        SpatialTransformer(_loc(), head="linear")
    with pytest.raises(ValueError, match="scale must be > 0"):
        HeatmapHead(4, scale=0)


def test_stn_errors_name_the_fix():
    with pytest.raises(ValueError, match="in_features"):
        SpatialTransformer(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten()))
    with pytest.raises(ValueError, match="transform must be one of"):
        SpatialTransformer(_loc(), transform="tps")
    with pytest.raises(TypeError, match="nn.Module"):
        SpatialTransformer(lambda x: x)
    with pytest.raises(ValueError, match="B x C x H x W"):
        SpatialTransformer(_loc())(torch.rand(1, 8, 8))


# -- the two-stage transformer: the angle head reads the first stage's crop ---------------------
def _two_stage(seed: int = 0, **kwargs) -> TwoStageTransformer:
    """A two-stage transformer whose angle head answers differently for different crops."""
    torch.manual_seed(seed)
    stn = TwoStageTransformer(
        nn.Conv2d(1, 4, 3, padding=1), 4, window_size=(32, 32), output_size=(32, 32), **kwargs
    )
    with torch.no_grad():
        stn.angle.regress[-1].weight.normal_(std=0.5)  # not the identity: depends on its input
    return stn.eval()


def _rotation(stn: TwoStageTransformer, x: torch.Tensor) -> torch.Tensor:
    """The rotation R the transformer applied to each image (the angle head's output)."""
    seen = {}
    handle = stn.angle.register_forward_hook(lambda m, args, out: seen.update(r=out))
    try:
        with torch.no_grad():
            stn(x)
    finally:
        handle.remove()
    return seen["r"]


def test_two_stage_angle_head_sees_only_pixels_inside_the_window():
    # scores 0 and zoom 0.5: the window is the central half of the 32 x 32 image whatever
    # the image; its 32 x 32 crop reads pixels 7..24 (bilinear, align_corners=False)
    stn = _two_stage(init_scale=0.5)
    x = torch.rand(3, 1, 32, 32)
    outside = x.clone()
    frame = torch.ones(32, 32, dtype=torch.bool)
    frame[6:26, 6:26] = False
    outside[:, :, frame] = torch.rand(3, 1, int(frame.sum()))
    inside = x.clone()
    inside[:, :, 10:22, 10:22] = torch.rand(3, 1, 12, 12)
    r = _rotation(stn, x)
    assert not torch.allclose(r, torch.eye(2).expand(3, 2, 2), atol=1e-3)  # a real answer
    torch.testing.assert_close(_rotation(stn, outside), r, atol=1e-6, rtol=0)
    assert (_rotation(stn, inside) - r).abs().amax(dim=(1, 2)).min() > 1e-3


def test_two_stage_angle_head_input_is_the_image_sampled_by_the_first_stage_theta():
    stn = _two_stage(seed=1, init_scale=0.6)
    with torch.no_grad():
        stn.head.score.weight.normal_(std=3.0)  # a window that moves with the image
    x = torch.rand(4, 1, 32, 32)
    seen = {}
    hooks = [
        stn.window.register_forward_hook(lambda m, args, out: seen.update(window=out)),
        stn.angle.register_forward_hook(lambda m, args, out: seen.update(crop=args[0], r=out)),
    ]
    try:
        with torch.no_grad():
            out = stn(x)
    finally:
        for h in hooks:
            h.remove()
    window = seen["window"]
    # the first stage's theta: [[s, 0, tx], [0, s, ty]], off-centre and different per image
    torch.testing.assert_close(window[:, 0, 0], torch.full((4,), 0.6))
    torch.testing.assert_close(window[:, 1, 1], torch.full((4,), 0.6))
    assert window[:, :, 2].abs().max() > 0.05 and window[:, :, 2].std(0).max() > 1e-3
    crop = F.grid_sample(
        x, F.affine_grid(window, [4, 1, 32, 32], align_corners=False), align_corners=False
    )
    torch.testing.assert_close(seen["crop"], crop, atol=1e-6, rtol=0)
    assert not torch.allclose(crop, x, atol=1e-2)  # the crop is not the whole image
    # and the output is the input sampled once by [s R | t]
    theta = torch.cat([window[:, :, :2] @ seen["r"], window[:, :, 2:]], dim=2)
    expected = F.grid_sample(
        x, F.affine_grid(theta, [4, 1, 32, 32], align_corners=False), align_corners=False
    )
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
