"""Point and share, in a real browser: click and hover on the query explorer in JupyterLab,
the head grid, and the exported page opened from disk with the network cut off.

Pixels are read from the canvases themselves (``getImageData``), not from screenshots, and
compared byte for byte with :func:`attnviz.render.pointer.draw_panel` / ``draw_grid`` on
the rows the kernel packed, and with the exported page after the same interactions.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from labtools import CHROMIUM, LabBrowser, LabServer, open_and_run
from nbfixtures import write_notebook
from PIL import Image

from attnviz import capture
from attnviz.render.pointer import AttentionPack, PointerState, draw_grid, draw_panel

pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI needs Chromium at {CHROMIUM} (.ci/run installs it)")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

SIZE, SCALE = 64, 4
MODEL = """
import torch, timm
torch.manual_seed(0)
model = timm.create_model(
    "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, depth=3, num_heads=3,
    embed_dim=48, reg_tokens=2, no_embed_class=True,
).eval()
images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
"""
NOTEBOOK = (
    MODEL
    + """
import json, pathlib
from attnviz.widgets import QueryExplorer
app = QueryExplorer(model, images, scale=4)
view = app.panels["map"]
pathlib.Path("pack.json").write_text(json.dumps(view.meta))
pathlib.Path("pack.bin").write_bytes(view.data)
pathlib.Path("photo.bin").write_bytes(view.image)
page = app.export_html("page.html")
app.root
"""
)


STN_NOTEBOOK = """
import torch
from attnviz.widgets import STNInspector
thetas = torch.tensor([[0.5, 0.0, 0.2], [0.0, 0.5, -0.1]]).expand(1, 2, 2, 3)
app = STNInspector(torch.rand(2, 1, 16, 16), thetas, scale=8)
app.root
"""


def _model():
    space: dict = {}
    exec(MODEL, space)
    return space["model"], space["images"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_notebook(root / "pointer.ipynb", NOTEBOOK)
    write_notebook(root / "stn.ipynb", STN_NOTEBOOK)
    server = LabServer(root, tmp_path_factory.mktemp("jupyter-home"))
    browser = None
    try:
        browser = LabBrowser(tmp_path_factory.mktemp("chromium-profile"))
        yield server, browser, root
    finally:
        if browser is not None:
            browser.close()
        server.close()
    assert not browser.blocked, f"requests tried to leave 127.0.0.1: {browser.blocked}"


def _pixels(frame, selector: str) -> np.ndarray:
    """The canvas's own pixels (H, W, 3), read in the page."""
    h, w, data = frame.evaluate(
        """(sel) => { const c = document.querySelector(sel);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return [c.height, c.width, Array.from(d)]; }""",
        selector,
    )
    return np.asarray(data, dtype=np.uint8).reshape(h, w, 4)[..., :3]


def _dataset(frame, selector: str) -> dict:
    return frame.evaluate(
        "(sel) => Object.assign({}, document.querySelector(sel).dataset)", selector
    )


MAIN, GRID = "canvas.attnviz-pointer-main", "canvas.attnviz-pointer-heads"


def _point(page, selector: str, u: int, v: int, click: bool = True) -> None:
    box = page.locator(selector).first.bounding_box()
    x, y = box["x"] + u + 0.5, box["y"] + v + 0.5
    if click:
        page.mouse.click(x, y)
    else:
        page.mouse.move(x, y)


def _wait(frame, selector: str, key: str, value: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = _dataset(frame, selector)
        if data.get(key) == value:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} {key}={data.get(key)!r}, expected {value!r}")
        time.sleep(0.1)


def _grid_point(meta, block: int, column: int, thumb: int = 48) -> tuple[int, int]:
    """A pixel inside the grid cell of block index ``block`` and column ``column``."""
    th = thumb * SIZE // SIZE
    return 3 + column * (thumb + 3) + thumb // 2, 3 + block * (th + 3) + th // 2


# the five scripted interactions: (what, where, what the main canvas then shows)
STEPS = [
    ("click", (41, 163)),  # image pixel (10, 40)
    ("hover", (201, 30)),  # previews (50, 7) without choosing it
    ("grid", (2, 2)),  # block 2, head 1 (column 0 is the mean)
    ("click", (130, 90)),  # (32, 22)
    ("show", "reg1"),  # where the first register looks
]


def _run_steps(page, frame, show_select: str, sync=None) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for what, where in STEPS:
        if what == "click":
            _point(page, MAIN, *where)
            x, y = where[0] // SCALE, where[1] // SCALE
            _wait(frame, MAIN, "query", f"{x},{y}")
            _wait(frame, MAIN, "preview", "0")
        elif what == "hover":
            _point(page, MAIN, *where, click=False)
            _wait(frame, MAIN, "preview", "1")
        elif what == "grid":
            page.mouse.move(0, 0)  # leave the picture: the preview ends
            _wait(frame, MAIN, "preview", "0")
            _point(page, GRID, *_grid_point(None, *where))
            _wait(frame, MAIN, "block", "blocks.2.attn")
            _wait(frame, MAIN, "head", "1")
        else:
            label = f"where the {where} token looks"  # the label both pages show
            page.locator(show_select).first.select_option(label=label)
            _wait(frame, MAIN, "show", where)
        if sync is not None:
            sync(what, where)
        out.append((_pixels(frame, MAIN), _pixels(frame, GRID)))
    return out


def test_click_hover_and_the_head_grid_live_then_the_exported_page_shows_the_same(lab, tmp_path):
    server, browser, root = lab
    page = browser.context.new_page()
    open_and_run(page, server, "pointer.ipynb")
    page.locator(MAIN).first.wait_for()
    pack = AttentionPack(
        json.loads((root / "pack.json").read_text()), (root / "pack.bin").read_bytes()
    )
    photo = np.frombuffer((root / "photo.bin").read_bytes(), np.uint8).reshape(SIZE, SIZE, 3)
    model, images = _model()
    with torch.no_grad(), capture(model, kinds="self") as rec:
        model(images[:1])
    explorer = page.locator(".attnviz-query-explorer").first
    readout = explorer.locator(".attnviz-query-x .widget-readout").first
    state = PointerState(block="blocks.0.attn", query=(SIZE // 2, SIZE // 2))

    def check(what, where):
        nonlocal state
        if what == "click":
            state.query, state.preview = (where[0] // SCALE, where[1] // SCALE), None
            # the kernel follows the click: the x slider shows the clicked pixel
            deadline = time.monotonic() + 30
            while readout.inner_text().strip() != str(state.query[0]):
                assert time.monotonic() < deadline, readout.inner_text()
                time.sleep(0.1)
            # the row drawn is the record's row of the clicked pixel (float16)
            r = rec[state.block]
            cell = r.query_cell(state.query, (SIZE, SIZE))
            row = pack.row(state.block, state.head, "query", cell[0] * 8 + cell[1])
            want = r.key_row(state.query, (SIZE, SIZE), head=state.head)[0].flatten().numpy()
            np.testing.assert_allclose(row, want, atol=2e-3, rtol=1e-2)
        elif what == "hover":
            state.preview = (where[0] // SCALE, where[1] // SCALE)
            # a preview chooses nothing: the slider still shows the chosen pixel
            time.sleep(0.5)
            assert readout.inner_text().strip() == str(state.query[0])
        elif what == "grid":
            state.preview, state.block, state.head = None, "blocks.2.attn", 1
            selects = explorer.locator("select")
            deadline = time.monotonic() + 30
            while "blocks.2.attn" not in selects.nth(0).evaluate("s => s.value"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        else:
            state.show = where

    live = _run_steps(page, page, ".attnviz-query-show select", sync=check)
    # the live canvases are the rule's pixels on the kernel's rows
    expected_state = PointerState(block="blocks.0.attn", query=(SIZE // 2, SIZE // 2))
    for (what, where), (main, grid) in zip(STEPS, live):
        if what == "click":
            expected_state.query, expected_state.preview = (where[0] // 4, where[1] // 4), None
        elif what == "hover":
            expected_state.preview = (where[0] // 4, where[1] // 4)
        elif what == "grid":
            expected_state.preview, expected_state.block, expected_state.head = (
                None,
                "blocks.2.attn",
                1,
            )
        else:
            expected_state.show = where
        np.testing.assert_array_equal(main, draw_panel(photo, pack, expected_state, SCALE))
        np.testing.assert_array_equal(grid, draw_grid(photo, pack, expected_state))
    page.close()

    # the exported page, from disk: the context refuses (and lists) every request that is
    # not for 127.0.0.1; the page makes none but its own file's
    exported = root / "page.html"
    offline = browser.context.new_page()
    requests: list[str] = []
    offline.on("request", lambda r: requests.append(r.url))
    offline.goto(exported.as_uri())
    offline.locator(MAIN).first.wait_for()
    shown = _run_steps(offline, offline, "select.attnviz-show")
    assert requests == [exported.as_uri()], requests
    for (what, _), (a, b) in zip(STEPS, zip(live, shown)):
        np.testing.assert_array_equal(a[0], b[0], err_msg=f"main panel after {what}")
        np.testing.assert_array_equal(a[1], b[1], err_msg=f"head grid after {what}")
    offline.close()
    size = exported.stat().st_size
    assert size < 1_000_000, f"{size} bytes"


# -- frame pages: the STN inspector and the channel explorer ------------------------------
def _stn():
    from attnviz.widgets import STNInspector

    g = torch.Generator().manual_seed(0)
    thetas = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 4, 2, 3).clone()
    thetas[1:, :, :, :2] *= 0.6
    thetas[2, :, 0, 2] = 0.2
    images = torch.rand(4, 1, 16, 16, generator=g)
    return STNInspector(images, thetas, epochs=[1, 5, 10], scale=4), None


def _channels():
    from attnviz import shipped
    from attnviz.widgets import ChannelExplorer

    test = shipped.test_data("resnet10_se")
    model = shipped.load("resnet10_se")
    app = ChannelExplorer(model, test.images[:2], labels=test.labels[:2].tolist())
    return app, {"block": ["layer1.0.attention", "layer2.0.attention"]}


def _set_range(page, name: str, index: int) -> None:
    page.evaluate(
        """([name, i]) => { const el = document.querySelector('input.attnviz-' + name);
        el.value = i; el.dispatchEvent(new Event('input')); }""",
        [name, index],
    )


def _shown(page) -> dict[str, bytes]:
    """The pictures on show, as the screen shows them: stored small, drawn k times larger."""
    srcs = page.evaluate(
        """() => Object.fromEntries(Array.from(document.querySelectorAll('#panels img'))
        .filter((img) => img.style.display !== 'none')
        .map((img) => [img.alt, [img.src, Number(img.dataset.factor)]]))"""
    )
    out = {}
    for name, (src, k) in srcs.items():
        small = _pixels_of(base64.b64decode(src.split(",", 1)[1]))
        out[name] = small.repeat(k, 0).repeat(k, 1)
    return out


def _pixels_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("make", [_stn, _channels], ids=["stn", "channels"])
def test_a_frame_page_shows_what_the_app_showed_for_the_same_controls(make, lab, tmp_path):
    _, browser, _ = lab
    app, values = make()
    exported = app.export_html(tmp_path / "frames.html", values=values)
    assert exported.path.stat().st_size == exported.nbytes
    names = list(type(app)._EXPORT)
    page = browser.context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(exported.path.as_uri())
    rng = np.random.default_rng(0)
    for _ in range(5):  # five settings of the controls, outermost first
        for name in names:
            widget = app.controls[name]
            offered = (
                [v if not isinstance(v, tuple) else v[1] for v in widget.options]
                if hasattr(widget, "options")
                else list(range(widget.min, widget.max + 1))
            )
            offered = (values or {}).get(name, offered)
            i = int(rng.integers(len(offered)))
            widget.value = offered[i]
            _set_range(page, name, i)
        shown, live = _shown(page), app.pictures()
        visible = app.visible_pictures()
        assert sorted(shown) == sorted(visible)
        for name in visible:
            np.testing.assert_array_equal(shown[name], _pixels_of(live[name]))
        parsed = "(h) => { const d = document.createElement('div'); d.innerHTML = h; "
        parsed += "return d.innerHTML }"
        assert page.inner_html("#info") == page.evaluate(parsed, app.info)
    assert requests == [exported.path.as_uri()], requests
    page.close()
    app.close()


def test_the_export_survives_nbconvert_and_still_answers_clicks(lab, tmp_path):
    from nbconvert import HTMLExporter

    from attnviz.nbrun import execute_notebook

    _, browser, _ = lab
    source = write_notebook(
        tmp_path / "shared.ipynb",
        MODEL
        + "\nfrom attnviz.widgets import QueryExplorer\n"
        + "QueryExplorer(model, images[:1], scale=4).export_html()\n",
    )
    nb = execute_notebook(source, {}, timeout=300, output=tmp_path / "run.ipynb", cwd=tmp_path)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    out = tmp_path / "shared.html"
    out.write_text(body, encoding="utf-8")
    page = browser.context.new_page()
    blocked = len(browser.blocked)
    page.goto(out.as_uri())
    frame = page.frame_locator("iframe.attnviz-export").first
    canvas = frame.locator(MAIN).first
    canvas.wait_for()
    inner = next(f for f in page.frames if f != page.main_frame)
    before = _pixels(inner, MAIN)
    canvas.click(position={"x": 201, "y": 30})
    _wait(inner, MAIN, "query", "50,7")
    after = _pixels(inner, MAIN)
    changed = (before != after).any(-1)
    # the crosshair and the cell box moved to (50, 7): pixels changed around it
    assert changed[20:40, 190:215].any() and changed.mean() > 0.05
    page.close()
    # nbconvert's own template links require.js, MathJax and the widget manager from CDNs
    # (refused here); nothing else asked for the network: the exported frame needs none
    outside = re.sub(r"<iframe[^>]*srcdoc=\"[^\"]*\"", "", body)  # the page, not the export
    tried = browser.blocked[blocked:]
    assert tried and all(url.split("?")[0] in outside for url in tried), tried
    del browser.blocked[blocked:]


def test_hovering_the_stn_input_marks_where_the_point_lands_in_the_crop(lab):
    """A kernel-drawn picture reports the hovered image pixel: the kernel marks it, finds
    where it lands in the crop (theta's inverse) and says so in the table."""
    server, browser, _ = lab
    page = browser.context.new_page()
    open_and_run(page, server, "stn.ipynb")
    picture = page.locator("img.attnviz-pointer-png").first
    picture.wait_for()
    box = picture.bounding_box()
    assert (box["width"], box["height"]) == (128, 128)  # 16 x 16 pixels, 8 times larger
    # input pixel (10, 6): normalised (0.3125, -0.1875); theta's inverse takes it to
    # ((0.3125 - 0.2) / 0.5, (-0.1875 + 0.1) / 0.5) = (0.225, -0.175): crop (9.8, 6.6)
    page.mouse.move(box["x"] + 10 * 8 + 4, box["y"] + 6 * 8 + 4)
    table = page.locator(".attnviz-stn-inspector table").first
    deadline = time.monotonic() + 30
    while "in the crop" not in table.inner_text():
        assert time.monotonic() < deadline, table.inner_text()
        time.sleep(0.1)
    text = table.inner_text()
    assert "(10.5, 6.5)" in text and "(9.8, 6.6)" in text, text
    page.mouse.move(0, 0)  # the pointer leaves: the mark goes
    deadline = time.monotonic() + 30
    while "in the crop" in table.inner_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    page.close()
