"""Every notebook in real JupyterLab, in headless Chromium: run all cells, move a slider,
and check on pixels that the picture changed where it should.

Needs Debian's Chromium (.ci/run installs it). Without it the tests are skipped on a
developer's machine and fail in CI (CI=true), so a missing browser never passes silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from labtools import (
    CHROMIUM,
    AppServer,
    LabBrowser,
    LabServer,
    copy_notebooks,
    move_slider,
    open_and_run,
    screenshot,
    wait_for_change,
)
from nbfixtures import write_notebook

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(
            f"CI needs Chromium at {CHROMIUM} for the browser tests (.ci/run installs it)"
        )
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def _fixture_notebook(path: Path, broken: bool) -> None:
    """A slider that moves a white square across a black image; ``broken``: the callback raises."""
    code = f"""
import io, ipywidgets as w, numpy as np
from PIL import Image

def png(x):
    a = np.zeros((40, 200, 3), np.uint8)
    a[10:30, x:x + 20] = 255
    buf = io.BytesIO(); Image.fromarray(a).save(buf, format="png"); return buf.getvalue()

img = w.Image(value=png(0), format="png")
img.add_class("fixture-image")
slider = w.IntSlider(0, 0, 9)
slider.add_class("fixture-slider")

def redraw(change):
    {"raise RuntimeError('broken callback')" if broken else "pass"}
    img.value = png(20 * change["new"])

slider.observe(redraw, names="value")
w.VBox([slider, img])
"""
    write_notebook(path, code)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    copy_notebooks(notebooks, root, {"QUICK": True})
    _fixture_notebook(root / "fixture_ok.ipynb", broken=False)
    _fixture_notebook(root / "fixture_broken.ipynb", broken=True)
    server = LabServer(root, tmp_path_factory.mktemp("jupyter-home"))
    browser = None
    try:
        browser = LabBrowser(tmp_path_factory.mktemp("chromium-profile"))
        yield server, browser
    finally:
        if browser is not None:
            browser.close()
        server.close()
    assert not browser.blocked, f"requests tried to leave 127.0.0.1: {browser.blocked}"


def _fixture_check(page, server, name):
    open_and_run(page, server, name)
    image = page.locator(".fixture-image").first
    before = screenshot(image)
    move_slider(page.locator(".fixture-slider").first, steps=2)
    after = wait_for_change(image, before, timeout=10)
    middle = after[after.shape[0] // 2]  # a row through the square, away from the element's edges
    return np.flatnonzero(middle.sum(-1) > 600)


def test_fixture_slider_moves_the_square_right(lab):
    server, browser = lab
    page = browser.context.new_page()
    cols = _fixture_check(page, server, "fixture_ok.ipynb")
    # the square moved from columns 0..19 to 40..59 of the 200-pixel-wide image
    scale = page.locator(".fixture-image").first.bounding_box()["width"] / 200
    assert cols.min() > 30 * scale and cols.max() < 70 * scale
    page.close()


def test_a_broken_callback_fails_the_check(lab):
    server, browser = lab
    page = browser.context.new_page()
    with pytest.raises(AssertionError, match="did not change"):
        _fixture_check(page, server, "fixture_broken.ipynb")
    page.close()


def _orange(a):
    """Pixels of render.QUAD_COLOR (255, 64, 0) / the channel explorer's marker, roughly."""
    return (a[..., 0] > 200) & (a[..., 1] > 30) & (a[..., 1] < 150) & (a[..., 2] < 80)


def test_01_spatial_transformer_snapshot_slider_moves_the_box(lab):
    server, browser = lab
    page = browser.context.new_page()
    open_and_run(page, server, "01_spatial_transformer.ipynb")
    app = page.locator(".attnviz-stn-inspector").first
    panel = app.locator(".attnviz-input img").first  # the picture in the clickable view
    before = screenshot(panel)
    move_slider(app.locator(".attnviz-snapshot").first, steps=5)
    after = wait_for_change(panel, before)
    # epoch 0 is the identity: the box is the image border; by epoch 5 it has moved inside
    h, w = before.shape[:2]
    inner = (slice(h // 10, h - h // 10), slice(w // 10, w - w // 10))
    assert _orange(before)[inner].sum() == 0
    assert _orange(after).sum() > 0 and not np.array_equal(_orange(after), _orange(before))
    page.close()


def _marker_moves_right(page):
    """The channel explorer: three steps right on the channel slider move the orange bar right."""
    app = page.locator(".attnviz-channel-explorer").first
    bars = app.locator(".attnviz-bars").first
    before = screenshot(bars)
    move_slider(app.locator(".attnviz-channel").first, steps=3)
    after = wait_for_change(bars, before)
    x_before = np.flatnonzero(_orange(before).any(0)).mean()
    x_after = np.flatnonzero(_orange(after).any(0)).mean()
    assert x_after > x_before, "the selected-channel marker should move right"


def test_02_channel_slider_moves_the_marker(lab):
    server, browser = lab
    page = browser.context.new_page()
    open_and_run(page, server, "02_squeeze_excitation.ipynb")
    _marker_moves_right(page)
    page.close()


def test_03_cbam_image_slider_changes_the_overlay(lab):
    server, browser = lab
    page = browser.context.new_page()
    open_and_run(page, server, "03_cbam.ipynb")
    app = page.locator(".attnviz-spatial-explorer").first
    panel = app.locator(".attnviz-cbam").first
    before = screenshot(panel)
    move_slider(app.locator(".attnviz-image").first)
    after = wait_for_change(panel, before)
    changed = np.abs(after - before).sum(-1) > 30
    assert changed.mean() > 0.2, "a new image should change most of the overlay panel"
    page.close()


def test_05_query_slider_moves_the_crosshair(lab):
    server, browser = lab
    page = browser.context.new_page()
    open_and_run(page, server, "05_self_attention.ipynb")
    app = page.locator(".attnviz-query-explorer").first
    panel = app.locator(".attnviz-query canvas.attnviz-pointer-main").first
    before = screenshot(panel)
    move_slider(app.locator(".attnviz-query-x").first, steps=8)
    after = wait_for_change(panel, before)

    assert np.median(_cyan_x(after)) > np.median(_cyan_x(before)), "the crosshair should move right"
    page.close()


def _cyan_x(a):
    """Columns holding the query explorer's crosshair colour, (0, 255, 255)."""
    return np.flatnonzero(((a[..., 0] < 80) & (a[..., 1] > 200) & (a[..., 2] > 200)).any(0))


def test_04_family_switch_query_slider_and_channels(lab):
    """Notebook 04: switching the family from vision transformers to SKNet replaces the
    attention overlay by the branch-choice chart; the ViT query slider moves the crosshair;
    the SE channel slider moves its marker."""
    server, browser = lab
    page = browser.context.new_page()
    open_and_run(page, server, "04_photos.ipynb")
    app = page.locator(".attnviz-photo-explainer").first
    panel = app.locator(".attnviz-photo-attention").first
    before = screenshot(panel)
    app.locator(".attnviz-family select").first.select_option("SKNet")
    after = wait_for_change(panel, before, timeout=120)

    def vertical_detail(a):  # the top band of a branch chart is constant down each column
        band = a[2 : a.shape[0] // 4].astype(float)
        return np.abs(np.diff(band, axis=0)).mean()

    assert vertical_detail(before) > 3 * vertical_detail(after), (
        "the photo overlay should give way to the branch chart's flat bands"
    )
    query = page.locator(".attnviz-query-explorer").first
    shown = query.locator(".attnviz-query canvas.attnviz-pointer-main").first  # not the grid
    start = screenshot(shown)
    move_slider(query.locator(".attnviz-query-x").first, steps=40)
    moved = wait_for_change(shown, start)
    assert np.median(_cyan_x(moved)) > np.median(_cyan_x(start)), "the crosshair should move right"
    _marker_moves_right(page)
    page.close()


@pytest.fixture(scope="module")
def voila(lab, tmp_path_factory):
    _, browser = lab  # the lab's browser: its teardown fails on any request off 127.0.0.1
    server = AppServer(tmp_path_factory.mktemp("app-home"))
    try:
        yield server.url, browser
    finally:
        server.close()


def test_app_shows_the_explorers_without_code_and_two_sliders_redraw(voila):
    """`attnviz app` (Voila): the STN inspector's snapshot slider moves the sampled box, and
    in the SE tab the channel slider moves the marker; no code on the page."""
    url, browser = voila
    page = browser.context.new_page()
    page.goto(url + "/")
    app = page.locator(".attnviz-stn-inspector").first
    app.wait_for(timeout=180_000)
    panel = app.locator(".attnviz-input").first
    before = screenshot(panel)
    move_slider(app.locator(".attnviz-snapshot").first, steps=3)
    after = wait_for_change(panel, before)
    assert not np.array_equal(_orange(after), _orange(before)), "the sampled box should move"
    page.locator(".lm-TabBar-tab", has_text="SE channels").first.click()
    page.locator(".attnviz-channel-explorer").first.wait_for(timeout=120_000)
    _marker_moves_right(page)
    assert "import" not in page.locator("body").inner_text(), "Voila should hide the code"
    page.close()
