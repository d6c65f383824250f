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
    panels = (app._input_png, app._crop_png)
    before = [p.value for p in panels]
    app._image.value = 2
    after_image = [p.value for p in panels]
    assert all(a != b for a, b in zip(after_image, before))
    app._snapshot.value = 1
    assert all(a != b for a, b in zip((p.value for p in panels), after_image))
    assert (app._input_png, app._crop_png) == panels  # updated in place, never rebuilt
    assert app.index == 2 and app.snapshot == 1 and app.current()["epoch"] == 5


def test_properties_and_play_move_the_sliders(app):
    app.index, app.snapshot = 3, 2
    assert app._image.value == 3 and app._snapshot.value == 2
    app._play.value = 0
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
        table = app._table.value
        assert f"{expected['zoom']:.2f}×" in table and f"{cur['iou']:.3f}" in table
        assert f"{math.degrees(expected['rotation']):.1f}°" in table


def test_input_panel_has_the_quad_where_theta_corners_says(app):
    app.index, app.snapshot = 1, 2
    panel = _decode(app._input_png.value)
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
    panel = _decode(app._input_png.value)
    edges = np.concatenate([panel[0], panel[-1], panel[:, 0], panel[:, -1]])
    assert (edges == render.QUAD_COLOR).all()
    crop = _decode(app._crop_png.value)  # identity crop: the input itself, upscaled to match
    np.testing.assert_array_equal(crop, render.upscale(parts["images"][0], 2))
    assert app._snapshot.disabled and app._play.disabled  # one snapshot: nothing to play
    app.close()


def test_crop_is_resampled_from_the_high_resolution_source(parts):
    source = parts["images"].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    app = STNInspector(parts["images"], parts["thetas"], source=source, scale=SCALE)
    app.snapshot = 1
    crop = _decode(app._crop_png.value)
    expected = maps.resample(source[0], parts["thetas"][1, 0], (2 * H, 2 * W)).clamp(0, 1)
    np.testing.assert_array_equal(crop, render.upscale(expected, 2))  # 32 px -> 64 px panel
    assert _decode(app._input_png.value).shape == (H * SCALE, W * SCALE, 3)
    app.close()


def test_callback_errors_go_to_the_output_widget(app, monkeypatch):
    def broken(_state):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(app, "_render_crop", broken)
    app.index = 1  # must not raise out of the slider's callback
    assert "cannot draw" in "".join(o.get("text", "") for o in app.log.outputs)


def test_display_and_close(app):
    bundle = app._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    app.close()
    app.close()  # safe twice
    app._play.value = 2
    assert app._snapshot.value == 0  # unlinked


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
    """Image widgets are pinned to the PNG size: front ends neither stretch nor squeeze them."""
    import io

    from PIL import Image

    from attnviz.widgets import STNInspector

    app = STNInspector(torch.rand(2, 1, 20, 30), torch.eye(2, 3).expand(2, 2, 3), scale=2)
    png = app._input_png
    w, h = Image.open(io.BytesIO(png.value)).size
    assert (png.layout.width, png.layout.height) == (f"{w}px", f"{h}px") == ("60px", "40px")
    app.close()
