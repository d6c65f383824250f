"""maps.py against eq. 1 of the STN paper and hand-computed geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnviz import maps

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _parts(**changes) -> dict:
    """The identity's decomposition with some parts changed."""
    return {"scale_x": 1, "scale_y": 1, "shear": 0, "rotation": 0, "tx": 0, "ty": 0, **changes}


def _rand_thetas(n: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(n, 2, 3, generator=g, dtype=dtype)
    theta[::2, :, 1] *= -1  # every other one a reflection of its linear part
    return theta


# -- theta_corners -------------------------------------------------------------------------
def test_identity_corners_are_exactly_the_image_border():
    corners = maps.theta_corners(IDENTITY, (6, 8))
    expected = torch.tensor([[[0.0, 0.0], [8.0, 0.0], [8.0, 6.0], [0.0, 6.0]]])
    assert corners.shape == (1, 4, 2)
    assert torch.equal(corners, expected)
    batched = maps.theta_corners(IDENTITY.expand(3, 2, 3), 5)
    assert torch.equal(batched, torch.tensor([[0.0, 0.0], [5, 0], [5, 5], [0, 5]]).expand(3, 4, 2))


def test_corners_of_a_zoom_and_a_quarter_turn():
    # output spans x_s in [-0.25, 0.75], y_s in [-0.5, 0.5] -> pixels x in [3, 7], y in [2, 6]
    zoom = torch.tensor([[0.5, 0.0, 0.25], [0.0, 0.5, 0.0]])
    assert maps.theta_corners(zoom, 8)[0].tolist() == [[3, 2], [7, 2], [7, 6], [3, 6]]
    # (x_s, y_s) = (-y_t, x_t): the output's top-left corner comes from the input's bottom-left
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    assert maps.theta_corners(turn, (4, 4))[0].tolist() == [[4, 0], [4, 4], [0, 4], [0, 0]]


def test_corners_agree_with_affine_grid():
    theta = _rand_thetas(5)
    # with align_corners=True a 2 x 2 grid samples exactly at the output corners (+-1, +-1)
    grid = F.affine_grid(theta, [5, 1, 2, 2], align_corners=True)  # (B, 2, 2, 2)
    norm = grid.reshape(5, 4, 2)[:, [0, 1, 3, 2]]  # TL, TR, BR, BL
    h, w = 6, 10
    expected = (norm + 1) * torch.tensor([w / 2, h / 2], dtype=torch.float64)
    torch.testing.assert_close(maps.theta_corners(theta, (h, w)), expected)


def test_theta_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"theta must have shape \(2, 3\) or \(B, 2, 3\)"):
        maps.theta_corners(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="input_size"):
        maps.theta_corners(IDENTITY, (4, 0))
    with pytest.raises(TypeError, match="theta"):
        maps.decompose_theta(torch.zeros(2, 3, dtype=torch.long))


# -- decompose / compose -------------------------------------------------------------------
def test_decompose_recovers_known_parts():
    parts = {"scale_x": 0.5, "scale_y": -0.7, "shear": 0.2, "rotation": 0.3, "tx": 0.1, "ty": -0.4}
    theta = maps.compose_theta(parts)
    assert theta.shape == (1, 2, 3)
    got = maps.decompose_theta(theta)
    for key, value in parts.items():
        assert got[key].shape == (1,)
        assert got[key].item() == pytest.approx(value, abs=1e-6)
    assert got["zoom"].item() == pytest.approx(1 / math.sqrt(0.5 * 0.7), rel=1e-6)


def test_decompose_by_hand():
    c, s = math.cos(0.5), math.sin(0.5)
    # A = R(0.5) @ diag(2, 3) @ [[1, 0.25], [0, 1]] = R @ [[2, 0.5], [0, 3]]
    a = [[2 * c, 0.5 * c - 3 * s, 0.3], [2 * s, 0.5 * s + 3 * c, -0.2]]
    got = maps.decompose_theta(torch.tensor(a, dtype=torch.float64))
    expected = {"scale_x": 2, "scale_y": 3, "shear": 0.25, "rotation": 0.5, "tx": 0.3, "ty": -0.2}
    assert {k: round(v.item(), 12) for k, v in got.items() if k != "zoom"} == expected
    assert got["zoom"].item() == pytest.approx(1 / math.sqrt(6))
    half = maps.decompose_theta(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    assert half["zoom"].item() == 2.0 and half["rotation"].item() == 0.0


def test_a_reflection_shows_as_negative_scale_y():
    flip = maps.decompose_theta(torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert flip["scale_y"].item() == -1.0 and flip["scale_x"].item() == 1.0
    assert flip["rotation"].item() == pytest.approx(math.pi)
    theta = _rand_thetas(32)
    det = torch.linalg.det(theta[:, :, :2])
    d = maps.decompose_theta(theta)
    assert torch.equal(d["scale_y"] < 0, det < 0) and (d["scale_x"] > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compose_inverts_decompose(dtype):
    theta = _rand_thetas(64, dtype)
    theta[0] = torch.tensor([[0.3, 0.9, -0.2], [0.0, -0.4, 0.5]])  # shear plus reflection
    parts = maps.decompose_theta(theta)
    assert all(v.shape == (64,) and v.dtype == dtype for v in parts.values())
    torch.testing.assert_close(maps.compose_theta(parts), theta, rtol=0, atol=1e-5)


def test_compose_broadcasts_and_reports_missing_parts():
    theta = maps.compose_theta(_parts(scale_x=torch.tensor([1.0, 2.0]), tx=0.5))
    assert theta.tolist() == [[[1, 0, 0.5], [0, 1, 0]], [[2, 0, 0.5], [0, 1, 0]]]
    with pytest.raises(ValueError, match=r"parts lacks \['shear'\]"):
        maps.compose_theta({k: v for k, v in _parts().items() if k != "shear"})


# -- IoU -----------------------------------------------------------------------------------
def _quad(x0, y0, x1, y1):
    return torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=torch.float64)


def test_polygon_iou_hand_cases():
    box = torch.tensor([0.0, 0.0, 2.0, 2.0])
    assert maps.polygon_iou(_quad(0, 0, 2, 2), box).tolist() == [1.0]
    assert maps.polygon_iou(_quad(3, 0, 5, 2), box).tolist() == [0.0]
    # overlap 1 x 2 = 2, union 4 + 4 - 2 = 6
    assert maps.polygon_iou(_quad(1, 0, 3, 2), box).item() == pytest.approx(1 / 3)


def test_polygon_iou_of_rotated_squares():
    # a 45-degree square (diamond) of diagonal 4 has area 8; inside the 4 x 4 box: 8 / 16
    diamond = torch.tensor([[2.0, 0.0], [4.0, 2.0], [2.0, 4.0], [0.0, 2.0]])
    assert maps.polygon_iou(diamond, torch.tensor([0.0, 0.0, 4.0, 4.0])).item() == 0.5
    # the unit diamond (area 2) meets the box [0, 1]^2 in a triangle of area 1/2: 0.5 / 2.5
    unit = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    box = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert maps.polygon_iou(unit, box).item() == pytest.approx(0.2)
    assert maps.polygon_iou(unit.flip(0), box).item() == pytest.approx(0.2)  # other orientation
    # a box inside a diamond: IoU = box area / diamond area = 1 / 8
    assert maps.polygon_iou(diamond, torch.tensor([1.5, 1.5, 2.5, 2.5])).item() == 1 / 8


def test_polygon_iou_of_boxes_equals_box_iou():
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(50, 2, 2, generator=g, dtype=torch.float64) * 10
    a = torch.cat([xy.min(dim=1).values, xy.max(dim=1).values], dim=1)
    xy = torch.rand(50, 2, 2, generator=g, dtype=torch.float64) * 10
    b = torch.cat([xy.min(dim=1).values, xy.max(dim=1).values], dim=1)
    quads = torch.stack([_quad(*row) for row in a.tolist()])
    iou = maps.polygon_iou(quads, b)
    assert iou.shape == (50,) and (iou > 0).any() and (iou == 0).any()
    torch.testing.assert_close(iou, maps.box_iou(a, b))


def test_identity_quad_against_the_whole_image_is_one():
    corners = maps.theta_corners(IDENTITY, (6, 8))
    assert maps.polygon_iou(corners, torch.tensor([0.0, 0.0, 8.0, 6.0])).tolist() == [1.0]


def test_box_iou_hand_cases_and_errors():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(maps.box_iou(a, b), torch.tensor([1 / 7, 0.0, 0.0]))
    with pytest.raises(ValueError, match="same batch size"):
        maps.box_iou(a, b[:2])
    with pytest.raises(ValueError, match=r"quad must have shape \(4, 2\) or \(B, 4, 2\)"):
        maps.polygon_iou(torch.zeros(3, 2), a[0])
    with pytest.raises(ValueError, match="x0 <= x1"):
        maps.polygon_iou(_quad(0, 0, 1, 1), torch.tensor([1.0, 0.0, 0.0, 1.0]))


# -- resample ------------------------------------------------------------------------------
def test_resample_identity_returns_the_image():
    image = torch.rand(3, 5, 7)
    torch.testing.assert_close(maps.resample(image, IDENTITY, (5, 7)), image)
    batch = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(maps.resample(batch, IDENTITY, 4), batch)


def test_resample_zoom_matches_the_hand_computed_crop():
    image = torch.arange(64.0).reshape(1, 8, 8)
    # half size, centred on the top-left quadrant: output pixel centres land on input
    # pixel centres 0..3, so V is exactly the top-left 4 x 4 crop
    theta = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]])
    torch.testing.assert_close(maps.resample(image, theta, (4, 4)), image[:, :4, :4])
    # translated fully outside: zero padding
    away = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    assert maps.resample(image, away, 4).abs().max() == 0


def test_resample_is_resolution_independent():
    low = torch.rand(2, 1, 8, 8)
    high = low.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # 32 x 32 original
    theta = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]]).expand(2, 2, 3)
    torch.testing.assert_close(maps.resample(high, theta, 4), maps.resample(low, theta, 4))


def test_resample_broadcasting_and_errors():
    image = torch.rand(1, 6, 6)
    thetas = maps.compose_theta(_parts(scale_x=torch.tensor([1.0, 0.5, 0.25])))
    assert maps.resample(image, thetas, (3, 2)).shape == (3, 1, 3, 2)
    assert maps.resample(image, IDENTITY, (3, 2)).shape == (1, 3, 2)
    with pytest.raises(TypeError, match=r"image\.float\(\) / 255"):
        maps.resample(torch.zeros(1, 4, 4, dtype=torch.uint8), IDENTITY, 4)
    with pytest.raises(ValueError, match="theta must have shape"):
        maps.resample(image, torch.zeros(1, 3, 2), 4)
    with pytest.raises(ValueError, match="do not match"):
        maps.resample(torch.rand(2, 1, 4, 4), thetas, 4)
    with pytest.raises(ValueError, match=r"image must be a \(C, H, W\) or \(B, C, H, W\) tensor"):
        maps.resample(torch.rand(4, 4), IDENTITY, 4)


def test_weighted_activation_is_the_channel_sum_the_weights_scale():
    # two channels of a 2 x 2 map, weighted 2 and 0.5: sum_c s_c u_c by hand
    u = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 0.0], [-2.0, 6.0]]]])
    s = torch.tensor([[2.0, 0.5]])
    expected = torch.tensor([[[2 + 5, 4 + 0], [6 - 1, 8 + 3]]], dtype=torch.float32)
    torch.testing.assert_close(maps.weighted_activation(u, s), expected, atol=0, rtol=0)
    # the weights matter: another s, another map
    assert not torch.equal(maps.weighted_activation(u, torch.ones(1, 2)), expected)
