"""Overlays of maps on images (render.py): hand-computed blends, alignment, normalisation."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from attnviz import render

# jet's first and last colours: (0, 0, 0.5) and (0.5, 0, 0), rounded: 127.5 -> 128
BLUE, RED = np.array([0, 0, 128]), np.array([128, 0, 0])
CHECKER = np.array([[0.0, 1.0], [1.0, 0.0]])  # per-map normalised: itself


def test_grey_overlay_is_the_hand_computed_blend():
    grey = np.full((2, 2), 100, np.uint8)
    out = render.overlay(grey, CHECKER, alpha=0.5)
    # 0.5 * 100 + 0.5 * (0, 0, 128) = (50, 50, 114); 0.5 * 100 + 0.5 * (128, 0, 0) = (114, 50, 50)
    expected = np.array([[[50, 50, 114], [114, 50, 50]], [[114, 50, 50], [50, 50, 114]]])
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, expected)


def test_rgb_overlay_is_the_hand_computed_blend():
    rgb = np.array([[[200, 0, 0], [0, 200, 0]], [[0, 0, 200], [255, 255, 255]]], np.uint8)
    out = render.overlay(rgb, CHECKER, alpha=0.25)
    # round(0.75 * image + 0.25 * colour)
    expected = np.array([[[150, 0, 32], [32, 150, 0]], [[32, 0, 150], [191, 191, 223]]])
    np.testing.assert_array_equal(out, expected)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255  # the same image as a tensor
    np.testing.assert_array_equal(render.overlay(chw, torch.from_numpy(CHECKER), alpha=0.25), out)


def test_rgba_is_composited_over_white_first():
    rgba = np.array(
        [[[12, 20, 40, 255], [0, 0, 0, 0]], [[0, 0, 0, 51], [12, 20, 40, 255]]], np.uint8
    )
    out = render.overlay(rgba, np.array([[0.0, 1.0], [0.0, 0.0]]), alpha=0.25)
    # over white: (12, 20, 40), (255, 255, 255), 0.2 * 0 + 0.8 * 255 = (204, 204, 204)
    expected = np.array([[[9, 15, 62], [223, 191, 191]], [[153, 153, 185], [9, 15, 62]]])
    np.testing.assert_array_equal(out, expected)


def test_alpha_zero_and_one_give_the_image_and_the_colours():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    m = np.random.default_rng(1).random((4, 4))
    np.testing.assert_array_equal(render.overlay(rgb, m, alpha=0.0), rgb)
    np.testing.assert_array_equal(
        render.overlay(rgb, m, alpha=1.0), render.colorize(render.normalize_map(m))
    )


def test_colorize_picks_matplotlibs_colours_rounded():
    v = np.concatenate([[0.0, 0.5, 1.0, 1 / 256, 255 / 256], np.random.default_rng(2).random(40)])
    for name in ("jet", "inferno", "gray"):
        expected = np.round(matplotlib.colormaps[name](v)[:, :3] * 255)
        np.testing.assert_array_equal(render.colorize(v[None], name)[0], expected)
    with pytest.raises(ValueError, match="unknown colormap"):
        render.colorize(v[None], "nope")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render.colorize(np.array([[0.0, 2.0]]))


def test_constant_map_normalises_to_zeros_without_nan():
    flat = np.full((3, 3), 0.7)
    np.testing.assert_array_equal(render.normalize_map(flat), np.zeros((3, 3), np.float32))
    np.testing.assert_array_equal(render.normalize_map(flat, "shared"), np.zeros((3, 3)))
    np.testing.assert_array_equal(render.normalize_map(flat, vmin=0.7, vmax=0.7), np.zeros((3, 3)))
    out = render.overlay(np.zeros((3, 3), np.uint8), flat, alpha=0.5)
    np.testing.assert_array_equal(out, np.broadcast_to([0, 0, 64], (3, 3, 3)))


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_maps_are_refused_by_name(bad, word):
    m = np.zeros((2, 2))
    m[0, 1] = bad
    for call in (
        lambda: render.normalize_map(m),
        lambda: render.overlay(np.zeros((2, 2), np.uint8), m),
        lambda: render.upsample_map(torch.from_numpy(m), 4),
    ):
        with pytest.raises(ValueError, match=f"{word} \\(1 of 4 values\\)"):
            call()


def test_per_map_shared_and_fixed_ranges():
    batch = np.array([[[0.0, 1.0], [2.0, 3.0]], [[0.0, 2.0], [4.0, 6.0]]])
    per_map = render.normalize_map(batch)
    np.testing.assert_allclose(per_map[0], per_map[1])  # both span [0, 1]
    np.testing.assert_allclose(per_map[0], [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
    shared = render.normalize_map(batch, "shared")
    np.testing.assert_allclose(shared[0], [[0, 1 / 6], [2 / 6, 3 / 6]], rtol=1e-6)
    fixed = render.normalize_map(batch[1], vmin=1.0, vmax=5.0)
    np.testing.assert_allclose(fixed, [[0, 0.25], [0.75, 1]])  # clipped at both ends
    assert render.overlay_info(batch)["caption"] == "per-map"
    info = render.overlay_info(batch, normalize="shared")
    assert info["caption"] == "shared [0, 6]" and info["ranges"] == [(0.0, 6.0)] * 2
    assert render.overlay_info(batch, vmin=0, vmax=1)["caption"] == "shared [0, 1]"
    assert render.overlay_info(batch, vmin=0)["caption"] == "per-map, from 0"
    with pytest.raises(ValueError, match="normalize mode"):
        render.normalize_map(batch, "global")
    with pytest.raises(ValueError, match="vmin must not exceed"):
        render.normalize_map(batch, vmin=2, vmax=1)


@pytest.mark.parametrize(("i", "j"), [(1, 2), (0, 0), (3, 3)])
def test_a_one_hot_cell_lights_its_own_pixel_block(i, j):
    cell = np.zeros((4, 4))
    cell[i, j] = 1.0
    up = render.upsample_map(cell, (16, 16))
    block = np.zeros((16, 16), bool)
    block[4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = True  # a stride-4 cell's pixels
    assert up.shape == (16, 16) and up.dtype == np.float32
    assert up[block].min() > up[~block].max()
    assert np.unravel_index(up.argmax(), up.shape) in list(zip(*np.nonzero(block)))


def test_upsampling_centres_cells_on_their_blocks_and_corner_mode_differs():
    ramp = np.arange(4.0)[None].repeat(2, axis=0)  # value = column index
    up = render.upsample_map(ramp, (2, 8))
    # pixel x (centre x + 0.5) sees the cell coordinate (x + 0.5) / 2 - 0.5, clamped at the ends
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    corners = render.upsample_map(ramp, (2, 8), stride_aligned=False)
    np.testing.assert_allclose(corners[0], np.linspace(0, 3, 8), rtol=1e-6)
    same = render.upsample_map(ramp, (2, 4))
    np.testing.assert_array_equal(same, ramp)
    batch = render.upsample_map(np.stack([ramp, 2 * ramp]), 8)
    assert batch.shape == (2, 8, 8)


def test_overlay_upsamples_a_small_map_to_the_image():
    image = np.zeros((8, 8), np.uint8)
    cell = np.zeros((2, 2))
    cell[1, 0] = 1.0
    out = render.overlay(image, cell, alpha=1.0)
    expected = render.colorize(render.upsample_map(render.normalize_map(cell), (8, 8)))
    np.testing.assert_array_equal(out, expected)
    red = (out == RED).all(axis=-1)
    assert red[4:, :4].any() and not red[:4].any() and not red[:, 4:].any()


def test_overlay_grid_places_cells_labels_and_captions():
    rng = np.random.default_rng(3)
    images = [rng.random((6, 5, 3)) for _ in range(3)]
    maps = rng.random((2, 3, 3, 3))
    bare = np.asarray(render.overlay_grid(images, maps, pad=4))
    assert bare.shape == (4 + 2 * (6 + 4), 4 + 3 * (5 + 4), 3)
    for r in range(2):
        for c in range(3):
            y, x = 4 + r * 10, 4 + c * 9
            np.testing.assert_array_equal(
                bare[y : y + 6, x : x + 5], render.overlay(images[c], maps[r, c])
            )
    rows, cols = ["plain", "+SE"], ["a", "b", "c"]
    captions = [["P=0.93", "P=0.50", None], ["P=0.10", "P=0.99", "P=0.42"]]
    grid = render.overlay_grid(images, maps, rows, cols, captions, scale=4)
    arr = np.asarray(grid)
    assert grid.mode == "RGB" and arr.shape[0] > 2 * 24 and arr.shape[1] > 3 * 20
    assert (arr[:, :10] < 128).any()  # row labels drawn in the left margin
    assert (arr[:8] < 128).any()  # column labels drawn along the top
    with pytest.raises(ValueError, match="rows of 3 maps"):
        render.overlay_grid(images, maps[:, :2])
    with pytest.raises(ValueError, match="row_labels name 3"):
        render.overlay_grid(images, maps, ["a", "b", "c"])
    with pytest.raises(ValueError, match="captions must be"):
        render.overlay_grid(images, maps, captions=[["x"] * 3])


def test_overlay_grid_shared_range_compares_across_cells():
    image = np.zeros((1, 2), np.uint8)
    low, high = np.array([[0.0, 1.0]]), np.array([[0.0, 2.0]])
    grid = render.overlay_grid([image], [[low], [high]], normalize="shared", alpha=1.0, pad=0)
    grid = np.asarray(grid)
    # one range [0, 2]: the first map's 1 sits mid-scale, the second map's 2 at the top
    mid = render.colorize(np.array([[0.5]]))[0, 0]
    np.testing.assert_array_equal(grid[0, 1], mid)
    np.testing.assert_array_equal(grid[1, 1], RED)
    np.testing.assert_array_equal(grid[0, 0], BLUE)


def test_stored_png_decodes_to_the_same_pixels_as_pillows():
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    for shape in [(1, 1, 3), (7, 5, 3), (64, 48, 3)]:
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        fast = render.png_bytes(arr, compress_level=0)
        slow = render.png_bytes(Image.fromarray(arr), compress_level=0)  # Pillow's encoder
        assert fast[:8] == b"\x89PNG\r\n\x1a\n"
        for data in (fast, slow):
            decoded = Image.open(io.BytesIO(data))
            decoded.load()  # checks every chunk's CRC and the zlib stream
            assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), arr)
    with pytest.raises(ValueError, match="compress_level"):
        render.png_bytes(arr, compress_level=10)


def test_colorize_picks_matplotlibs_colour_for_every_value():
    import matplotlib

    values = np.concatenate([np.linspace(0, 1, 1001), [0.0, 1.0, -1e-4, 1 + 1e-4]])
    values = np.clip(values, -1e-4, 1 + 1e-4).reshape(1, -1).astype(np.float32)
    got = render.colorize(values, "viridis")[0]
    cmap = matplotlib.colormaps["viridis"]
    expected = np.round(cmap(np.clip(values[0], 0, 1))[:, :3] * 255).astype(np.uint8)
    assert np.array_equal(got, expected)
