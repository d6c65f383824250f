"""STNInspector: the numbers it shows are maps.py's, and redraws only swap image bytes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz import maps, render
from attnviz.widgets import STNInspector

N, H, W, SCALE = 4, 16, 16, 4


def _thetas() -> torch.Tensor:
    """Three snapshots: identity, a centred half-size crop, the crop turned by 30 degrees."""
    turn = dict(scale_x=0.5, scale_y=0.5, shear=0, rotation=math.radians(30), tx=0.1, ty=-0.1)
    snaps = [
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]),
        maps.compose_theta(turn)[0].float(),
    ]
    return torch.stack([s.expand(N, 2, 3) for s in snaps]) + 0.01 * torch.randn(3, N, 2, 3)


@pytest.fixture
def parts():
    boxes = torch.tensor([[3.0, 3.0, 11.0, 11.0]]).expand(N, 4)
    return {"images": torch.rand(N, 1, H, W), "thetas": _thetas(), "boxes": boxes}


@pytest.fixture
def app(parts):
    predictions = torch.tensor([[0, 0, 0, 0], [3, 1, 0, 1], [3, 1, 4, 1]])
    inspector = STNInspector(
        parts["images"],
        parts["thetas"],
        epochs=[1, 5, 10],
        labels=[3, 1, 4, 1],
        predictions=predictions,
        boxes=parts["boxes"],
        scale=SCALE,
    )
    yield inspector
    inspector.close()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_sliders_swap_the_image_bytes_of_the_same_widgets(app):
    panels = app.panels
    assert list(panels) == ["input", "crop"]
    before = list(app.pictures().values())
    app.controls["image"].value = 2
    after_image = list(app.pictures().values())
    assert all(a != b for a, b in zip(after_image, before))
    app.controls["snapshot"].value = 1
    assert all(a != b for a, b in zip(app.pictures().values(), after_image))
    # updated in place, never rebuilt
    assert all(app.panels[name] is widget for name, widget in panels.items())
    assert app.index == 2 and app.snapshot == 1 and app.current()["epoch"] == 5


def test_properties_and_play_move_the_sliders(app):
    app.index, app.snapshot = 3, 2
    controls = app.controls
    assert controls["image"].value == 3 and controls["snapshot"].value == 2
    controls["play"].value = 0
    assert app.snapshot == 0
    with pytest.raises(ValueError, match=r"index must be in \[0, 3\]"):
        app.index = 4
    with pytest.raises(ValueError, match="snapshot must be"):
        app.snapshot = -1


def test_current_numbers_are_the_maths(app, parts):
    for i, k in [(0, 0), (1, 1), (3, 2)]:
        app.index, app.snapshot = i, k
        cur = app.current()
        theta = parts["thetas"][k, i]
        assert torch.equal(cur["theta"], theta)
        expected = {key: v.item() for key, v in maps.decompose_theta(theta).items()}
        assert cur["decomposition"] == expected
        corners = maps.theta_corners(theta, (H, W))
        assert torch.equal(cur["corners"], corners[0])
        assert cur["iou"] == maps.polygon_iou(corners, parts["boxes"][i]).item()
        assert cur["label"] == [3, 1, 4, 1][i] and cur["epoch"] == [1, 5, 10][k]
        table = app.info
        assert f"{expected['zoom']:.2f}×" in table and f"{cur['iou']:.3f}" in table
        assert f"{math.degrees(expected['rotation']):.1f}°" in table


def test_input_panel_has_the_quad_where_theta_corners_says(app):
    app.index, app.snapshot = 1, 2
    panel = _decode(app.pictures()["input"])
    assert panel.shape == (H * SCALE, W * SCALE, 3)
    quad = np.all(panel == render.QUAD_COLOR, axis=-1)
    corners = app.current()["corners"] * SCALE
    for x, y in corners.tolist():  # each corner lies within a canvas pixel of a quad pixel
        assert 0 < x < W * SCALE and 0 < y < H * SCALE
        cx, cy = int(x), int(y)
        assert quad[cy - 1 : cy + 2, cx - 1 : cx + 2].any(), (x, y)
    centre = corners.mean(dim=0).int().tolist()
    assert not quad[centre[1] - 2 : centre[1] + 3, centre[0] - 2 : centre[0] + 3].any()
    box = np.all(panel == render.BOX_COLOR, axis=-1)
    assert box.any()


def test_identity_snapshot_frames_the_whole_input(parts):
    thetas = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(N, 2, 3)
    app = STNInspector(parts["images"], thetas, scale=2)
    panel = _decode(app.pictures()["input"])
    edges = np.concatenate([panel[0], panel[-1], panel[:, 0], panel[:, -1]])
    assert (edges == render.QUAD_COLOR).all()
    crop = _decode(app.pictures()["crop"])  # identity crop: the input itself, upscaled to match
    np.testing.assert_array_equal(crop, render.upscale(parts["images"][0], 2))
    controls = app.controls  # one snapshot: nothing to play
    assert controls["snapshot"].disabled and controls["play"].disabled
    app.close()


def test_crop_is_resampled_from_the_high_resolution_source(parts):
    source = parts["images"].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    app = STNInspector(parts["images"], parts["thetas"], source=source, scale=SCALE)
    app.snapshot = 1
    crop = _decode(app.pictures()["crop"])
    expected = maps.resample(source[0], parts["thetas"][1, 0], (2 * H, 2 * W)).clamp(0, 1)
    np.testing.assert_array_equal(crop, render.upscale(expected, 2))  # 32 px -> 64 px panel
    panel = _decode(app.pictures()["input"])  # the low-resolution input, not the source
    assert panel.shape == (H * SCALE, W * SCALE, 3)
    drawn = (panel == render.QUAD_COLOR).all(-1)  # the quadrilateral; the rest is the image
    image = render.upscale(parts["images"][0], SCALE)
    assert drawn.any() and not drawn.all()
    np.testing.assert_array_equal(panel[~drawn], image[~drawn])
    app.close()


def test_callback_errors_go_to_the_output_widget(app, monkeypatch):
    def broken(*_args):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(maps, "resample", broken)  # drawing the crop fails
    app.index = 1  # must not raise out of the slider's callback
    assert "cannot draw" in "".join(o.get("text", "") for o in app.log.outputs)


def test_display_and_close(app):
    bundle = app._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    app.close()
    app.close()  # safe twice
    controls = app.controls
    controls["play"].value = 2
    assert controls["snapshot"].value == 0  # unlinked


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"thetas": torch.zeros(3, N + 1, 2, 3)}, ValueError, r"thetas must be \(E, N, 2, 3\)"),
        ({"thetas": torch.zeros(N, 3, 2)}, ValueError, "thetas must be"),
        ({"images": torch.rand(N, 2, H, W)}, ValueError, r"images must be \(N, C, H, W\)"),
        ({"images": torch.rand(N, 1, H, W) * 3}, ValueError, r"images must lie in \[0, 1\]"),
        ({"images": torch.zeros(N, 1, H, W, dtype=torch.uint8)}, TypeError, "float tensor"),
        ({"epochs": [0, 1]}, ValueError, "epochs must hold 3 entries"),
        ({"labels": [0]}, ValueError, "labels must hold 4 entries"),
        ({"predictions": torch.zeros(2, N)}, ValueError, r"predictions must be \(E, N\)"),
        ({"boxes": torch.zeros(N, 2)}, ValueError, r"boxes must be \(4, 4\)"),
        ({"source": torch.rand(N - 1, 1, 32, 32)}, ValueError, "source must hold the same 4"),
        ({"output_size": (0, 4)}, ValueError, "output_size"),
        ({"scale": 0}, ValueError, "scale must be a positive int"),
    ],
)
def test_bad_construction_raises_a_clear_error(parts, change, error, match):
    kwargs = {"images": parts["images"], "thetas": parts["thetas"], **change}
    with pytest.raises(error, match=match):
        STNInspector(kwargs.pop("images"), kwargs.pop("thetas"), **kwargs)


def test_panels_keep_their_pixel_size_in_the_browser():
    """The clickable pictures state their image size and scale (the page pins them to the
    PNG's size: front ends neither stretch nor squeeze them) and report positions in
    image pixels."""
    import io

    from PIL import Image

    from attnviz.widgets import STNInspector

    app = STNInspector(torch.rand(2, 1, 20, 30), torch.eye(2, 3).expand(2, 2, 3), scale=2)
    view = app.panels["input"]
    w, h = Image.open(io.BytesIO(view.png)).size
    assert (view.size, view.scale, (w, h)) == ([20, 30], 2, (60, 40))
    panel = _decode(view.png)  # identity theta: the quadrilateral frames the image itself
    inside = panel[1:-1, 1:-1]
    image = render.upscale(app.images[0], 2)[1:-1, 1:-1]
    np.testing.assert_array_equal(inside, image)
    app.close()


def test_pointing_at_the_input_marks_where_it_lands_in_the_crop_and_back(app):
    """A point of the input lands in the crop where theta's inverse takes it, and pointing
    at that crop pixel leads back to the input point (theta applied), both marked."""
    app.index, app.snapshot = 1, 2
    theta = app.current()["theta"].double()
    app.point = ("input", (8, 7))
    link = app.correspondence()
    assert link["from"] == "input" and link["input"] == (8.5, 7.5)
    u, v = link["crop"]
    # by hand: crop pixel centre (u, v) samples theta @ (2u/W' - 1, 2v/H' - 1, 1)
    ho, wo = app.output_size
    xn = theta[:, :2] @ torch.tensor([2 * u / wo - 1, 2 * v / ho - 1]).double() + theta[:, 2]
    assert torch.allclose(xn, torch.tensor([2 * 8.5 / W - 1, 2 * 7.5 / H - 1]).double())
    assert link["inside"] and "in the crop" in app.info
    crop = _decode(app.pictures()["crop"])
    k = app._crop_scale
    assert tuple(crop[int(v * k), int(u * k)]) == (0, 255, 255)  # the mark at the landing
    assert tuple(_decode(app.pictures()["input"])[int(7.5 * SCALE), int(8.5 * SCALE)]) == (
        0,
        255,
        255,
    )
    # hovering the crop overrides the click: back to the input
    app.panels["crop"].hover = [int(u), int(v)]
    back = app.correspondence()
    assert back["from"] == "crop" and abs(back["input"][0] - 8.5) < 1.5
    app.panels["crop"].hover = []
    assert app.correspondence()["from"] == "input"
    app.point = None
    assert app.correspondence() is None and "in the crop" not in app.info
