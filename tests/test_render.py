"""render.py against hand-computed pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz import maps, render

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)


# -- to_uint8_rgb --------------------------------------------------------------------------
def test_to_uint8_rgb_reads_every_layout(rgb):
    unit = rgb / 255.0
    chw = torch.from_numpy(unit).permute(2, 0, 1)
    cases = {
        "uint8 HWC": rgb,
        "float HWC": unit,
        "float32 HWC": unit.astype(np.float32),
        "torch CHW": chw,
        "torch CHW uint8": torch.from_numpy(rgb).permute(2, 0, 1),
        "numpy CHW": chw.numpy(),
        "torch HWC": torch.from_numpy(unit),
        "PIL": Image.fromarray(rgb),
    }
    for name, image in cases.items():
        out = render.to_uint8_rgb(image)
        assert out.dtype == np.uint8 and out.shape == (4, 5, 3), name
        np.testing.assert_array_equal(out, rgb, err_msg=name)


def test_ambiguous_layouts_follow_the_container():
    cube = np.random.default_rng(1).random((3, 4, 3))
    np.testing.assert_array_equal(
        render.to_uint8_rgb(torch.from_numpy(cube)), render.to_uint8_rgb(cube.transpose(1, 2, 0))
    )
    assert render.to_uint8_rgb(cube).shape == (3, 4, 3)


def test_grey_layouts_repeat_to_rgb(rgb):
    grey = rgb[..., 0]
    expected = np.repeat(grey[..., None], 3, axis=2)
    as_tensor = torch.from_numpy(grey[None] / 255.0)
    for image in (
        grey,
        grey / 255.0,
        grey[None],
        as_tensor,
        grey[..., None],
        Image.fromarray(grey),
    ):
        np.testing.assert_array_equal(render.to_uint8_rgb(image), expected)
    mask = np.array([[True, False]])
    np.testing.assert_array_equal(render.to_uint8_rgb(mask)[0, :, 0], [255, 0])


def test_rgba_is_composited_over_white():
    rgba = np.zeros((1, 3, 4))
    rgba[0, :, 0] = 1.0  # red
    rgba[0, :, 3] = [0.0, 1.0, 0.5]  # transparent, opaque, half
    expected = [[255, 255, 255], [255, 0, 0], [255, 128, 128]]
    assert render.to_uint8_rgb(rgba)[0].tolist() == expected
    as_uint8 = np.round(rgba * 255).astype(np.uint8)  # alpha 128 / 255: 255 * 127 / 255 = 127
    expected[2] = [255, 127, 127]
    assert render.to_uint8_rgb(as_uint8)[0].tolist() == expected
    assert render.to_uint8_rgb(Image.fromarray(as_uint8, "RGBA"))[0].tolist() == expected


def test_to_uint8_rgb_errors():
    with pytest.raises(ValueError, match=r"image must be \(H, W\), \(C, H, W\) with C in \(1, 3\)"):
        render.to_uint8_rgb(np.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match="got shape"):
        render.to_uint8_rgb(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*normalisation"):
        render.to_uint8_rgb(torch.full((3, 2, 2), -0.5))
    with pytest.raises(TypeError, match="dtype int32"):
        render.to_uint8_rgb(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="got list"):
        render.to_uint8_rgb([[0, 1]])


# -- upscale, montage, png -----------------------------------------------------------------
def test_upscale_repeats_pixels(rgb):
    big = render.upscale(rgb, 3)
    assert big.shape == (12, 15, 3)
    ii, jj = np.meshgrid(np.arange(12), np.arange(15), indexing="ij")
    np.testing.assert_array_equal(big, rgb[ii // 3, jj // 3])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="scale must be a positive int"):
            render.upscale(rgb, bad)


def test_montage_places_tiles_row_by_row():
    tiles = [np.full((2, 3, 3), 10 * k, np.uint8) for k in range(5)]
    out = render.montage(tiles, ncols=3, pad=1, pad_value=255)
    assert out.shape == (2 * 2 + 1, 3 * 3 + 2, 3)
    for k in range(5):
        y, x = (k // 3) * 3, (k % 3) * 4
        assert (out[y : y + 2, x : x + 3] == 10 * k).all()
    assert (out[2] == 255).all() and (out[:, 3] == 255).all()  # padding row and column
    assert (out[3:, 8:] == 255).all()  # the missing sixth tile
    assert render.montage(tiles[:2], ncols=8, pad=0).shape == (2, 6, 3)


def test_montage_errors():
    with pytest.raises(ValueError, match="share one size"):
        render.montage([np.zeros((2, 2, 3)), np.zeros((2, 3, 3))], 2)
    with pytest.raises(ValueError, match="must not be empty"):
        render.montage([], 2)
    with pytest.raises(ValueError, match="ncols"):
        render.montage([np.zeros((2, 2, 3))], 0)


def test_png_bytes_round_trip(rgb):
    data = render.png_bytes(rgb)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
    again = render.png_bytes(Image.fromarray(rgb), compress_level=9)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(again))), rgb)


# -- drawing -------------------------------------------------------------------------------
def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def test_identity_quad_traces_the_border_and_leaves_the_inside():
    image = np.full((6, 8), 0.5)
    corners = maps.theta_corners(IDENTITY, (6, 8))
    for scale in (1, 3):
        out = np.asarray(render.draw_quad(image, corners, scale=scale))
        assert out.shape == (6 * scale, 8 * scale, 3)
        assert (_border(out) == render.QUAD_COLOR).all()
        assert (out[1:-1, 1:-1] == 128).all()


def test_draw_box_draws_an_axis_aligned_box():
    out = np.asarray(render.draw_box(np.zeros((8, 8)), [2, 2, 6, 6], scale=2, color=(0, 0, 255)))
    # edge coordinate u on a 16-pixel canvas lands on pixel round(u * 2 * 15 / 16)
    blue = np.all(out == (0, 0, 255), axis=-1)
    assert blue[4, 4] and blue[11, 11] and blue[4, 8] and blue[8, 11]
    assert blue.sum() == 4 * 7 and not blue[5:11, 5:11].any()
    with pytest.raises(ValueError, match="four numbers"):
        render.draw_box(np.zeros((8, 8)), [1, 2, 3])


def test_drawings_compose_and_never_modify_their_input():
    base = render.draw_quad(np.zeros((8, 8)), maps.theta_corners(IDENTITY, 8), scale=2)
    before = np.asarray(base).copy()
    both = render.draw_box(base, [2, 2, 6, 6], scale=2)
    assert both.size == (16, 16)  # a PIL canvas is not upscaled again
    np.testing.assert_array_equal(np.asarray(base), before)
    arr = np.asarray(both)
    assert (arr[0, 0] == render.QUAD_COLOR).all() and (arr[4, 4] == render.BOX_COLOR).all()


def test_draw_quad_errors():
    with pytest.raises(ValueError, match=r"corners must be \(K, 2\)"):
        render.draw_quad(np.zeros((4, 4)), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="finite"):
        render.draw_quad(np.zeros((4, 4)), torch.full((4, 2), float("nan")))


# -- stn_grid ------------------------------------------------------------------------------
def test_stn_grid_pairs_inputs_with_their_crops():
    images = torch.rand(3, 1, 8, 8)
    thetas = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]]).expand(3, 2, 3)
    outputs = maps.resample(images, thetas, (4, 4))
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0]]).expand(3, 4)
    grid = render.stn_grid(images, thetas, outputs, boxes, scale=2, ncols=2)
    # pair: 16 x 16 input, gap 2, crop 4 x 4 -> 16 x 16; two pairs a row with pad 6
    assert isinstance(grid, Image.Image) and grid.size == (2 * 34 + 6, 2 * 16 + 6)
    arr = np.asarray(grid)
    np.testing.assert_array_equal(arr[:16, 18:34], render.upscale(outputs[0], 4))
    np.testing.assert_array_equal(arr[22:, 18:34], render.upscale(outputs[2], 4))
    quad = np.all(arr[:16, :16] == render.QUAD_COLOR, axis=-1)
    box = np.all(arr[:16, :16] == render.BOX_COLOR, axis=-1)
    assert quad[0, 0] and quad[8, 8] and box[2, 2] and box[6, 6]  # quad: pixels 0..8, box 2..6
    with pytest.raises(ValueError, match=r"thetas must be \(3, 2, 3\)"):
        render.stn_grid(images, thetas[:2], outputs)
    with pytest.raises(ValueError, match=r"boxes must be \(3, 4\)"):
        render.stn_grid(images, thetas, outputs, boxes[:, :2])


def test_as_pil_and_figure_to_image():
    from matplotlib.figure import Figure

    from attnviz.render import as_pil, figure_to_image

    img = as_pil(np.zeros((4, 5, 3), np.uint8))
    assert img.size == (5, 4) and img.mode == "RGB"
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [0, 1], color="red")
    pic = np.asarray(figure_to_image(fig, dpi=50))
    assert pic.shape == (50, 100, 3)
    red = (pic[..., 0] > 200) & (pic[..., 1] < 80) & (pic[..., 2] < 80)
    assert red.sum() > 20
