"""Spatial maps against ground truth (metrics.py) on constructed maps, boxes and masks."""

from __future__ import annotations

import pytest
import torch

import attnviz
from attnviz import analysis, metrics
from attnviz.models import small_resnet


def _peak(h: int, w: int, *cells: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    for i, j in cells:
        m[0, i, j] = 1.0
    return m


def _box(*xyxy: float) -> torch.Tensor:
    return torch.tensor([xyxy], dtype=torch.float64)


# -- pointing game ---------------------------------------------------------------------------
def test_peak_inside_the_box_hits_and_outside_misses():
    m = _peak(8, 8, (2, 5))  # cell centre in a 32 x 32 image: x = 5.5 * 4 = 22, y = 2.5 * 4 = 10
    size = (32, 32)
    assert metrics.pointing_game(m, _box(20, 8, 24, 12), image_size=size).tolist() == [True]
    assert metrics.pointing_game(m, _box(0, 0, 16, 16), image_size=size).tolist() == [False]
    assert metrics.pointing_game(m, _box(22, 10, 30, 30), image_size=size).tolist() == [True]


def test_tolerance_grows_the_box_in_pixels():
    m, box = _peak(8, 8, (2, 5)), _box(0, 0, 20, 16)  # the peak is 2 pixels right of the box
    hit = [bool(metrics.pointing_game(m, box, tolerance=t, image_size=32)) for t in (0, 1.9, 2, 5)]
    assert hit == [False, False, True, True]
    with pytest.raises(ValueError, match="tolerance"):
        metrics.pointing_game(m, box, tolerance=-1)


def test_tolerance_grows_the_box_in_every_direction():
    # peak at pixel (22, 10) of a 32 x 32 image; a box 2 pixels away on each side in turn
    m = _peak(8, 8, (2, 5))
    for box in (_box(24, 0, 32, 32), _box(0, 0, 20, 32), _box(0, 12, 32, 32), _box(0, 0, 32, 8)):
        hit = [bool(metrics.pointing_game(m, box, tolerance=t, image_size=32)) for t in (1.9, 2)]
        assert hit == [False, True], box.tolist()


def test_ties_hit_only_when_every_maximum_is_inside():
    box = _box(0, 0, 4, 4)  # the top-left 2 x 2 cells at image resolution 8 = 2 x map
    inside = _peak(4, 4, (0, 0), (1, 1))
    split = _peak(4, 4, (0, 0), (3, 3))
    flat = torch.full((1, 4, 4), 0.3)
    got = metrics.pointing_game(torch.cat([inside, split, flat]), box.repeat(3, 1), image_size=8)
    assert got.tolist() == [True, False, False]
    assert bool(metrics.pointing_game(flat, _box(0, 0, 8, 8), image_size=8))  # whole image


def test_float16_maps_tie_near_saturation_and_are_warned_about():
    # two cells of a sigmoid map, 0.9996 inside the box and 0.9993 outside: distinct in
    # float32, the same float16 number, so the tie (one maximum outside) misses
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0], maps[0, 1, 1] = 0.9996, 0.9993
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # holds cell (0, 0) of a 2 x 2 image
    assert metrics.pointing_game(maps, box, image_size=2).item()
    with pytest.warns(UserWarning, match="Score float32 maps"):
        assert not metrics.pointing_game(maps.half(), box, image_size=2).item()


def test_pointing_game_batches_chunks_and_refuses_nan():
    maps = torch.rand(10, 4, 4)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(10, 1) * torch.arange(1, 11)[:, None]
    whole = metrics.pointing_game(maps, boxes)
    assert torch.equal(metrics.pointing_game(maps, boxes, chunk=3), whole)
    maps[4, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        metrics.pointing_game(maps, boxes)
    with pytest.raises(ValueError, match=r"boxes must be \(10, 4\)"):
        metrics.pointing_game(maps, boxes[:3])


# -- energy-based pointing game --------------------------------------------------------------
@pytest.mark.parametrize(("h", "w"), [(4, 4), (3, 5), (32, 32), (7, 2)])
def test_uniform_map_energy_equals_the_box_area_share(h, w):
    boxes = torch.tensor([[3.0, 5.0, 19.0, 30.0], [0.0, 0.0, 32.0, 32.0], [10.0, 10.0, 11.0, 12.0]])
    share = metrics.energy_pointing_game(torch.full((3, h, w), 0.25), boxes, image_size=32)
    expected = torch.tensor([16 * 25, 32 * 32, 1 * 2], dtype=torch.float64) / (32 * 32)
    torch.testing.assert_close(share, expected, atol=1e-12, rtol=0)


def test_energy_weights_cells_by_their_area_inside_the_box():
    m = _peak(4, 4, (1, 2))  # cell (1, 2) owns pixels x 8..12, y 4..8 of a 16 x 16 image
    cases = {(8, 4, 12, 8): 1.0, (10, 0, 16, 16): 0.5, (0, 0, 8, 16): 0.0, (9, 5, 11, 7): 0.25}
    for box, expected in cases.items():
        got = float(metrics.energy_pointing_game(m, _box(*box), image_size=16))
        assert got == pytest.approx(expected, abs=1e-12), box
    negative = m - 1.0  # only the peak is >= 0: ReLU leaves no mass
    assert float(metrics.energy_pointing_game(negative, _box(8, 4, 12, 8), image_size=16)) == 0
    zero = torch.zeros(1, 4, 4)
    assert float(metrics.energy_pointing_game(zero, _box(0, 0, 16, 16), image_size=16)) == 0


# -- mask IoU ---------------------------------------------------------------------------------
def test_mask_iou_at_mask_resolution():
    m = torch.zeros(1, 4, 4)
    m[0, :2, :2] = 1.0  # selects 4 pixels
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :3] = True  # 6 pixels, 4 of them shared
    assert float(metrics.mask_iou(m, mask)) == pytest.approx(4 / 6)
    graded = torch.linspace(0, 1, 16).reshape(1, 4, 4)
    top = torch.zeros(1, 4, 4, dtype=torch.bool)
    top[0, 2:] = True  # the 8 largest values
    assert float(metrics.mask_iou(graded, top, threshold=0.5)) == 1.0
    assert float(metrics.mask_iou(graded, top, threshold=0.8)) == pytest.approx(4 / 8)


def test_mask_iou_upsamples_stride_aligned():
    m = _peak(2, 2, (0, 0))
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :4, :4] = True  # the cell's own pixel block
    # bilinear weights per axis 1, 1, 0.875, 0.625 inside the block, 0.375 next to it: only
    # (3, 3) = 0.625^2 = 0.39 is < 0.5, and every block pixel beats every other (<= 0.375)
    assert float(metrics.mask_iou(m, mask)) == pytest.approx(15 / 16)
    assert float(metrics.mask_iou(m, mask, threshold=0.38)) == 1.0


def test_mask_iou_constant_and_empty_cases():
    flat = torch.full((2, 4, 4), 0.5)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    assert metrics.mask_iou(flat, mask).tolist() == [0.0, 1.0]  # nothing selected; both empty
    shared = metrics.mask_iou(torch.stack([flat[0], flat[0] * 2]), mask, normalize="shared")
    assert shared.tolist() == [0.0, 0.0]  # one range: the second map is all 1 -> union 16
    with pytest.raises(ValueError, match="threshold"):
        metrics.mask_iou(flat, mask, threshold=2)
    with pytest.raises(ValueError, match=r"masks must be \(2, H, W\)"):
        metrics.mask_iou(flat, mask[:1])


# -- centre prior and the table --------------------------------------------------------------
def test_centre_prior_peaks_in_the_middle_and_costs_one_map():
    prior = metrics.center_prior(5, (6, 8))
    assert prior.shape == (5, 6, 8) and prior.stride(0) == 0
    assert torch.equal(prior[0], prior[0].flip(0)) and torch.equal(prior[0], prior[0].flip(1))
    assert float(prior.max()) < 1 and prior[0, 2:4, 3:5].eq(prior.max()).all()
    centre = torch.tensor([[16.0, 16.0, 32.0, 32.0]] * 5)  # the four tied centre cells inside
    assert metrics.pointing_game(prior, centre, image_size=48).all()
    with pytest.raises(ValueError, match="sigma"):
        metrics.center_prior(1, 8, sigma=0)


def test_score_maps_table_matches_the_single_scores():
    gen = torch.Generator().manual_seed(0)
    n = 6
    boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0]]).repeat(n, 1)
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    masks[:, 6:18, 6:18] = True
    native = torch.rand(n, 4, 4, generator=gen)
    full = torch.rand(n, 32, 32, generator=gen)
    table, scores = metrics.score_maps(
        {"cbam": native, "gradcam": full, "centre": metrics.center_prior(n, 32)},
        boxes,
        masks,
        chunk=4,
    )
    assert list(scores) == ["cbam", "gradcam", "centre"]
    expected = metrics.energy_pointing_game(native, boxes, image_size=32).mean()
    assert scores["cbam"]["energy"] == pytest.approx(float(expected))
    hits = metrics.pointing_game(full, boxes).double().mean()
    assert scores["gradcam"]["pointing_game"] == pytest.approx(float(hits))
    iou = metrics.mask_iou(native, masks).mean()
    assert scores["cbam"]["mask_iou"] == pytest.approx(float(iou))
    assert scores["centre"]["n"] == n
    lines = table.splitlines()
    assert lines[0].startswith("| method | n | pointing game") and len(lines) == 5
    assert lines[2].startswith(f"| cbam | {n} | ")
    with pytest.raises(ValueError, match="at least one"):
        metrics.score_maps({}, boxes, masks)


def test_score_maps_at_several_tolerances():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0]]).repeat(2, 1)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    maps = torch.zeros(2, 32, 32)
    maps[0, 14, 14] = 1  # inside the box
    maps[1, 14, 22] = 1  # centre x = 22.5: 2.5 px right of the box
    table, scores = metrics.score_maps({"m": maps}, boxes, masks, tolerance=(0, 4))
    assert scores["m"]["pointing_game_0px"] == scores["m"]["pointing_game"] == 0.5
    assert scores["m"]["pointing_game_4px"] == 1.0
    assert "| pointing game ±0 px | pointing game ±4 px |" in table.splitlines()[0]
    assert table.splitlines()[2].startswith("| m | 2 | 0.500 | 1.000 |")
    with pytest.raises(ValueError, match="non-empty"):
        metrics.score_maps({"m": maps}, boxes, masks, tolerance=())


def test_mask_share_maps_are_the_ceiling_of_a_resolution():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 0:16, 0:16] = True  # exactly cell (0, 0) of a 4 x 4 map
    masks[1, 20:28, 40:60] = True
    masks[2, 30:34, 30:34] = True  # a small object across four cells
    share = metrics.mask_share_maps(masks, 4)
    assert share.shape == (3, 4, 4)
    assert share[0, 0, 0] == 1 and share[0].sum() == 1
    # each cell holds the fraction of its 256 pixels the object covers
    torch.testing.assert_close(share[1].sum() * 256, masks[1].sum().float())
    assert share[2, 1:3, 1:3].eq(4 / 256).all() and share[2].sum() == 16 / 256
    torch.testing.assert_close(metrics.mask_share_maps(masks, 64), masks.float())
    # the 4 x 4 ideal map of the small object ties four cells whose centres miss its box:
    # a coarse map cannot point at it however good it is
    boxes = torch.tensor([[0.0, 0, 16, 16], [40, 20, 60, 28], [30, 30, 34, 34]])
    hits = metrics.pointing_game(share, boxes, image_size=64)
    assert hits.tolist() == [True, True, False]
    assert metrics.pointing_game(metrics.mask_share_maps(masks, 16), boxes, image_size=64).all()
    with pytest.raises(ValueError, match="equal cells"):
        metrics.mask_share_maps(masks, 5)


def test_cbam_spatial_maps_are_the_captured_records():
    model = small_resnet(10, attention="cbam", width=8)
    model.train()
    x = torch.rand(5, 3, 32, 32)
    got = analysis.spatial_maps(model, x, batch_size=2)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad(), attnviz.capture(model, kinds="spatial") as rec:
        model(x)
    assert list(got) == list(rec) == [f"layer{k}.0.attention.spatial_gate" for k in (1, 2, 3, 4)]
    for name, maps in got.items():
        torch.testing.assert_close(maps, rec[name].map, atol=1e-6, rtol=0)
    assert got["layer4.0.attention.spatial_gate"].shape == (5, 4, 4)
    half = analysis.spatial_maps(model, x, dtype=torch.float16)
    assert half["layer1.0.attention.spatial_gate"].dtype == torch.float16


def test_attention_on_object_on_a_constructed_block():
    """A non-local block whose every query looks at itself: on-object share = the query's cover."""
    from attnviz.metrics import attention_on_object
    from attnviz.modules import NonLocal

    class Pos(torch.nn.Module):  # one-hot positional features, then the block
        def __init__(self):
            super().__init__()
            self.block = NonLocal(16, inner=16)
            with torch.no_grad():
                for conv in (self.block.theta, self.block.phi):
                    conv.weight.copy_(10 * torch.eye(16)[:, :, None, None])
                    conv.bias.zero_()

        def forward(self, x):
            return self.block(torch.eye(16).reshape(1, 16, 4, 4).expand(len(x), -1, -1, -1))

    model = Pos()
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # covers query/key cells (0..1, 0..1) fully
    images = torch.zeros(2, 3, 8, 8)
    out = attention_on_object(model, images, masks)
    assert out["on_object"][0] > 0.99  # self-attention on object cells stays on the object
    torch.testing.assert_close(out["area"], torch.tensor([0.25, 0.0]))
    assert torch.isnan(out["on_object"][1])  # no query on an empty mask


def test_transform_agreement_is_one_for_the_ideal_theta_and_low_for_identity():
    from attnviz.data import distort, mnist_split
    from attnviz.metrics import transform_agreement

    x, y = mnist_split()["test"]
    d = distort(x[:200], y[:200], "RTS", seed=0)
    ideal = torch.linalg.inv(d.transforms)[:, :2]
    perfect = transform_agreement(ideal, d.transforms)
    assert perfect["rotation_corr"] > 0.999 and perfect["zoom_corr"] > 0.999
    assert abs(perfect["rotation_deg"] - perfect["ideal_rotation_deg"]) < 1e-6
    noisy = transform_agreement(ideal + 0.3 * torch.randn_like(ideal), d.transforms)
    assert noisy["rotation_corr"] < 0.9
    with pytest.raises(ValueError, match="N x 2 x 3"):
        transform_agreement(ideal[:, :1], d.transforms)


def test_square_window_ceiling_matches_a_search_over_square_windows():
    boxes = torch.tensor([[10.0, 5, 30, 25], [0, 0, 4, 20], [3, 7, 20, 12]])
    got = metrics.square_window_ceiling(boxes)
    assert got[0] == 1.0  # a square box: a square window fits it exactly
    # brute force: square sides on a fine grid, centred and shifted, exact IoU by polygon area
    from attnviz import maps

    best = torch.zeros(3, dtype=torch.float64)
    for side in torch.linspace(1, 30, 233):
        for dx in torch.linspace(-3, 3, 5):
            for dy in torch.linspace(-3, 3, 5):
                c = (boxes[:, :2] + boxes[:, 2:]) / 2 + torch.stack([dx, dy])
                lo, hi = c - side / 2, c + side / 2
                quad = torch.stack(
                    [
                        lo,
                        torch.stack([hi[:, 0], lo[:, 1]], 1),
                        hi,
                        torch.stack([lo[:, 0], hi[:, 1]], 1),
                    ],
                    1,
                )
                best = torch.maximum(best, maps.polygon_iou(quad, boxes))
    assert torch.all(best <= got + 1e-9)  # nothing beats the ceiling ...
    torch.testing.assert_close(best, got, atol=2e-3, rtol=0)  # ... and it is reached
    with pytest.raises(ValueError, match="positive width"):
        metrics.square_window_ceiling(torch.tensor([[0.0, 0, 0, 5]]))


def test_perfect_and_useless_maps_score_as_their_definitions_imply():
    """The box itself scores 1 on every measure, the mask itself IoU 1; a constant map gets
    the box's share of the image as energy, no pointing hit and no mask: the measures
    cannot silently invert."""
    from attnviz.data import digits_on_photos

    data = digits_on_photos("test", n=24, seed=5)
    n, side = len(data), data.images.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    b = data.boxes[:, :, None, None]
    box_maps = ((xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])).float()
    constant = torch.full((n, side, side), 0.7)
    _, s = metrics.score_maps(
        {"box": box_maps, "mask": data.masks.float(), "constant": constant},
        data.boxes,
        data.masks,
        tolerance=(0, 4),
    )
    assert s["box"]["pointing_game"] == 1 and s["box"]["energy"] == pytest.approx(1)
    assert s["mask"]["mask_iou"] == pytest.approx(1) and s["mask"]["energy"] == pytest.approx(1)
    share = (
        (data.boxes[:, 2] - data.boxes[:, 0]) * (data.boxes[:, 3] - data.boxes[:, 1])
    ) / side**2
    assert s["constant"]["energy"] == pytest.approx(share.mean().item(), abs=1e-4)
    assert s["constant"]["pointing_game"] == 0 and s["constant"]["mask_iou"] == 0
    # a better map scores higher: the box beats the constant map on every measure
    for key in ("pointing_game", "pointing_game_4px", "energy", "mask_iou"):
        assert s["box"][key] > s["constant"][key], key
