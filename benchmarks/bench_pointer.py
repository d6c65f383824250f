"""Click to new pixels: the query explorer's pointer view, offline and in JupyterLab.

``QueryExplorer`` shows a :class:`~attnviz.widgets.pointer.PointerView`, whose script
(attnviz/widgets/static/pointer.js) holds every block's attention rows and draws the
clicked pixel's map itself, with no kernel round trip. After each pointer-triggered draw
the script pushes ``{drawn, frame}`` onto ``window.__attnvizTimes``: milliseconds from the
event's ``timeStamp`` to the pixels written (``putImageData``) and to the next
``requestAnimationFrame`` (the frame that shows them). Target: 16 ms, one frame at 60 Hz.

(a) The exported page (``QueryExplorer.export_html``) of a ViT-B/16 with random weights on
two sample photos at 224 x 224, opened from file:// in Debian's headless Chromium with
every request but the file itself aborted (and counted); (b) the same explorer live in
JupyterLab (tests/labtools.py: a real server and browser, a notebook written into a
temporary folder). In both, the pointer is moved onto a new pixel (a hover draw, not
timed), then clicked there with Playwright's ``page.mouse.click``; each click's
``drawn`` and ``frame`` are read. Clicks land on distinct pixels spread over the canvas
(and over the 14 x 14 grid of query cells). First on the quiet machine, then again
beside two CPU-bound processes (``_common.Busy``).

(c) What exports weigh and take: the ViT-B/16 page with 1 and with 2 images (budget
10 MB), and the channel explorer of the shipped SE ResNet-10 on 4 test images.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import torch
from _common import Busy, Contention, _busy

import attnviz.shipped
from attnviz.photos import load_sample
from attnviz.widgets import ChannelExplorer, QueryExplorer

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
SIDE = 224  # ViT-B/16's input: a 14 x 14 grid of 16-pixel patches
SCALE = 2  # canvas pixels per image pixel: a 448 x 448 canvas
PHOTOS = ("astronaut", "chelsea")  # attnviz's sample photos
TARGET_MS = 16.0  # one frame at 60 Hz
BUDGET = 10 * 10**6  # export_html's default max_bytes
BUSY = 2  # CPU-bound neighbours in the contended runs
GOLDEN = (5**0.5 - 1) / 2

#: wraps putImageData so that the page counts how often the main canvas is drawn
_COUNT_DRAWS = """() => {
  if (window.__attnvizPutsWrapped) return;
  window.__attnvizPutsWrapped = true;
  window.__attnvizPuts = 0;
  const put = CanvasRenderingContext2D.prototype.putImageData;
  CanvasRenderingContext2D.prototype.putImageData = function (...args) {
    if (this.canvas.classList.contains('attnviz-pointer-main')) window.__attnvizPuts += 1;
    return put.apply(this, args);
  };
}"""
_RESET = "() => { window.__attnvizTimes = []; window.__attnvizPuts = 0; }"
_HAS_TIME = "() => (window.__attnvizTimes || []).length > 0"
_READ = """(canvas) => ({
  times: window.__attnvizTimes.slice(),
  puts: window.__attnvizPuts,
  draw_ms: Number(canvas.parentElement.parentElement.dataset.drawMs),
  query: canvas.dataset.query,
})"""


class _Neighbours:
    """CPU seconds used on the machine by processes this benchmark did not start.

    ``_common.Contention`` counts this process and the children it waited for; the
    browser's renderers and the Jupyter kernel are reaped by their own parents (or by
    init), so their CPU would read as a neighbour's. This samples the CPU times of this
    process and every descendant (Chromium and Playwright's driver, the Jupyter server
    and kernel, ``Busy``'s processes) every 0.2 s, and subtracts them from the machine's
    busy time. A process that exits between samples loses at most its last 0.2 s."""

    def __init__(self) -> None:
        import threading

        self._wall = time.perf_counter()
        self._busy = _busy(psutil.cpu_times())
        self._since = time.time()
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    born, t = p.create_time(), p.cpu_times()
            except psutil.Error:
                continue
            key, cpu = (p.pid, born), t.user + t.system
            # a process started during the benchmark counts from 0
            self._first.setdefault(key, cpu if born < self._since else 0.0)
            self._last[key] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def snapshot(self) -> tuple[float, float, float]:
        """(wall seconds, CPU seconds of this benchmark's processes, of the others) so far."""
        with self._lock:
            self._sample_locked()
            wall = time.perf_counter() - self._wall
            ours = sum(self._last[k] - self._first[k] for k in self._last)
            other = max(0.0, _busy(psutil.cpu_times()) - self._busy - ours)
        return wall, ours, other

    def measure(self) -> dict:
        self._stop.set()
        self._thread.join()
        wall, ours, other = self.snapshot()
        return {
            "wall": wall,
            "own_tree_cpu_seconds": ours,
            "other_cpu_seconds": other,
            "quiet": other <= 0.1 * wall,
        }


def _scripts() -> dict[str, str]:
    """The first 12 hex digits of the SHA-256 of each script the pages run."""
    import hashlib

    from attnviz.widgets.pointer import SCRIPT

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in sorted(SCRIPT.parent.glob("*.js"))
    }


def _labtools():
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import labtools

    return labtools


# -- the model and the images ---------------------------------------------------------------
def _vit_source() -> tuple[str, str]:
    """(a name, Python source of ``build()``: the ViT-B/16 with random weights)."""
    try:
        import timm  # noqa: F401

        return (
            "timm vit_base_patch16_224, random weights",
            "def build():\n"
            "    import timm\n"
            f"    torch.manual_seed({SEED})\n"
            "    return timm.create_model('vit_base_patch16_224', pretrained=False).eval()\n",
        )
    except ImportError:
        return (
            "torchvision vit_b_16, random weights",
            "def build():\n"
            "    import torchvision\n"
            f"    torch.manual_seed({SEED})\n"
            "    return torchvision.models.vit_b_16(weights=None).eval()\n",
        )


def _vit() -> torch.nn.Module:
    scope: dict = {"torch": torch}
    exec(_vit_source()[1], scope)
    return scope["build"]()


def _photos() -> torch.Tensor:
    """The sample photos, centre-cropped to a square and resized to 224 x 224, in [0, 1]."""
    out = []
    for name in PHOTOS:
        image = load_sample(name)
        w, h = image.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        image = image.crop(box).resize((SIDE, SIDE))
        out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


# -- clicking ---------------------------------------------------------------------------------
def _positions(n: int, width: int, height: int) -> list[tuple[int, int]]:
    """``n`` distinct canvas pixels spread over a width x height canvas (x evenly, y by the
    golden ratio), each in its own 32-pixel patch column where n <= 14."""
    out: list[tuple[int, int]] = []
    for k in range(n):
        x = int((k + 0.5) / n * width)
        y = int(((0.5 + k * GOLDEN) % 1.0) * height)
        while (x, y) in out:
            y = (y + 7) % height
        out.append((x, y))
    return out


def _stable_box(locator, settle: float = 10.0) -> dict:
    """The element's box once it has stopped moving (outputs above it render)."""
    locator.scroll_into_view_if_needed()
    deadline, box = time.monotonic() + settle, None
    while time.monotonic() < deadline:
        now = locator.bounding_box()
        if now is not None and now == box:
            return now
        box = now
        time.sleep(0.3)
    assert box is not None, "the canvas has no box"
    return box


def _click(page, canvas, x: float, y: float, rest: Callable[[], None]) -> dict:
    """Hover onto (x, y) (a preview draw, not timed), ``rest()``, then click there: the
    click's times."""
    page.mouse.move(x, y)
    with contextlib.suppress(Exception):  # the pixel may already be previewed: no draw
        page.wait_for_function(_HAS_TIME, timeout=5_000, polling="raf")
    rest()
    page.evaluate(_RESET)
    page.mouse.click(x, y)
    page.wait_for_function(_HAS_TIME, timeout=30_000, polling="raf")
    return page.evaluate(_READ, canvas.element_handle())


def _nothing() -> None:
    pass


def _clicks(
    page, n: int, settle: Callable[[], None] = _nothing, *, rest: bool = True
) -> list[dict]:
    """One untimed warm-up click, then ``n`` timed clicks on distinct pixels of the main
    canvas; ``settle()`` runs after each click and, with ``rest``, after each hover too
    (live: until the kernel has answered)."""
    canvas = page.locator("canvas.attnviz-pointer-main").first
    page.evaluate(_COUNT_DRAWS)
    box = _stable_box(canvas)
    w, h = int(box["width"]), int(box["height"])
    out = []
    for k, (u, v) in enumerate([(w // 2 + 1, h // 2 + 1), *_positions(n, w, h)]):
        r = _click(
            page, canvas, box["x"] + u + 0.5, box["y"] + v + 0.5, settle if rest else _nothing
        )
        qx, qy = (int(c) for c in r["query"].split(","))
        if abs(qx - u * SIDE // w) > 1 or abs(qy - v * SIDE // h) > 1:  # fractional box edges
            raise AssertionError(f"click at canvas pixel ({u}, {v}) chose {r['query']}")
        if k:
            out.append(
                {
                    "drawn_ms": r["times"][0]["drawn"],
                    "frame_ms": r["times"][0]["frame"],
                    "draw_ms": r["draw_ms"],
                    "draws": r["puts"],
                    "entries": len(r["times"]),
                }
            )
        settle()
    return out


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


#: the neighbour meter of the running benchmark (set by run())
_METER: _Neighbours | None = None


def _measured(where: str, condition: str, clicks: Callable[[], list[dict]]) -> dict:
    """The summary of ``clicks()`` with the share of a core neighbours used meanwhile."""
    before = _METER.snapshot() if _METER is not None else None
    row = _summary(where, condition, clicks())
    if before is not None and _METER is not None:
        after = _METER.snapshot()
        # the per-process and machine-wide clocks tick apart: a quiet row can read < 0
        row["neighbour_core_share"] = max(0.0, (after[2] - before[2]) / (after[0] - before[0]))
    return row


def _summary(where: str, condition: str, clicks: list[dict]) -> dict:
    drawn = [c["drawn_ms"] for c in clicks]
    frame = [c["frame_ms"] for c in clicks]
    once = [c["draw_ms"] for c in clicks]
    return {
        "where": where,
        "condition": condition,
        "clicks": len(clicks),
        "drawn_median_ms": statistics.median(drawn),
        "drawn_p90_ms": _p90(drawn),
        "frame_median_ms": statistics.median(frame),
        "frame_p90_ms": _p90(frame),
        "one_draw_median_ms": statistics.median(once),
        "draws_per_click": statistics.median(c["draws"] for c in clicks),
        "drawn_target_met": _p90(drawn) <= TARGET_MS,
        "frame_target_met": _p90(frame) <= TARGET_MS,
        "each": clicks,
    }


def _conditions(quick: bool) -> Iterator[tuple[str, contextlib.AbstractContextManager]]:
    yield "quiet", contextlib.nullcontext()
    if not quick:
        yield f"beside {BUSY} busy processes", Busy(BUSY)


# -- (a) the exported page ------------------------------------------------------------------
def _exported_clicks(path: Path, n: int, quick: bool) -> tuple[list[dict], list[str], float]:
    """Clicks on the exported page (file://, every other request aborted): the summaries,
    the requests that were not for the file, and the page's load seconds."""
    from playwright.sync_api import sync_playwright

    labtools = _labtools()
    url = path.resolve().as_uri()
    others: list[str] = []

    def route(r) -> None:  # page.on("request") below counts every request, aborted or not
        if r.request.url == url:
            r.continue_()
        else:
            r.abort()

    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=labtools.CHROMIUM, headless=True, args=labtools.FLAGS
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", route)
            page = context.new_page()
            page.on("request", lambda r: None if r.url == url else others.append(r.url))
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_function("() => !!window.attnvizModel")
            load = time.perf_counter() - start
            for condition, context_manager in _conditions(quick):
                with context_manager:
                    rows.append(_measured("exported page", condition, lambda: _clicks(page, n)))
            # what the head grid costs: the same clicks with it off (quiet)
            page.locator("input.attnviz-grid").uncheck()
            rows.append(
                _measured("exported page, head grid off", "quiet", lambda: _clicks(page, n))
            )
        finally:
            browser.close()
    return rows, others, load


# -- (b) live in JupyterLab -------------------------------------------------------------------
_NOTEBOOK = """
import torch
from attnviz.widgets import QueryExplorer

{build}
images = torch.load("images.pt")
explorer = QueryExplorer(build(), images, scale={scale})
explorer
"""


def _lab_clicks(images: torch.Tensor, n: int, quick: bool) -> tuple[list[dict], list[str], float]:
    """Clicks on the live explorer in JupyterLab: the summaries, the requests that tried to
    leave 127.0.0.1, and the seconds from opening the notebook to its cells' end."""
    labtools = _labtools()
    from nbfixtures import write_notebook

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="attnviz-bench-pointer-") as tmp:
        tmp = Path(tmp)
        root, home, profile = tmp / "served", tmp / "home", tmp / "profile"
        root.mkdir()
        torch.save(images, root / "images.pt")
        name = "pointer_bench.ipynb"
        write_notebook(root / name, _NOTEBOOK.format(build=_vit_source()[1], scale=SCALE))
        server = labtools.LabServer(root, home)
        browser = None
        try:
            browser = labtools.LabBrowser(profile)
            page = browser.context.new_page()
            start = time.perf_counter()
            labtools.open_and_run(page, server, name)
            run_s = time.perf_counter() - start
            page.locator("canvas.attnviz-pointer-main").first.wait_for()

            def settle() -> None:  # the kernel hears the click and sets its sliders
                time.sleep(0.2)
                page.wait_for_function(labtools._KERNEL_IDLE, arg=name, polling=100)

            for condition, context_manager in _conditions(quick):
                with context_manager:
                    rows.append(
                        _measured("live JupyterLab", condition, lambda: _clicks(page, n, settle))
                    )
            if not quick:
                # what the hover's round trip to the kernel costs a click that follows at once
                rows.append(
                    _measured(
                        "live JupyterLab, clicked right after the hover",
                        "quiet",
                        lambda: _clicks(page, n, settle, rest=False),
                    )
                )
                # what the head grid costs (its checkbox is a kernel-side control)
                page.get_by_text("head-by-block grid").first.click()
                page.locator(".attnviz-pointer-grid").first.wait_for(state="hidden")
                settle()
                rows.append(
                    _measured(
                        "live JupyterLab, head grid off", "quiet", lambda: _clicks(page, n, settle)
                    )
                )
            page.close()
        finally:
            if browser is not None:
                browser.close()
            server.close()
    return rows, list(browser.blocked), run_s


# -- (c) export sizes and times ---------------------------------------------------------------
def _kept(page_html: str) -> str:
    """What the page keeps of each query row (e.g. "whole rows of 197", "top 62 of 197")."""
    m = re.search(r"<script id='attnviz-data' type='application/json'>(.*?)</script>", page_html)
    assert m is not None
    blocks = json.loads(m.group(1))["images"][0]["meta"]["blocks"]
    k = {b["k"] for b in blocks}
    n = {b["key_size"][0] * b["key_size"][1] for b in blocks}
    ks = "/".join(map(str, sorted(k)))
    return f"whole rows ({ks} keys)" if k == n else f"largest {ks} of {max(n)} keys per row"


def _export_row(page: str, images: int, controls: str, make: Callable[[], object]) -> dict:
    start = time.perf_counter()
    try:
        exported = make()
    except ValueError as e:
        return {
            "page": page,
            "images": images,
            "controls": controls,
            "refused": str(e),
            "seconds": time.perf_counter() - start,
        }
    nbytes = exported.nbytes  # type: ignore[attr-defined]
    return {
        "page": page,
        "images": images,
        "controls": controls,
        "bytes": nbytes,
        "mib": nbytes / 2**20,
        "seconds": exported.seconds,  # type: ignore[attr-defined]
        "within_budget": nbytes <= BUDGET,
        "kept": _kept(exported.html) if "attnvizPointer" in exported.html else "",  # type: ignore[attr-defined]
    }


def _channel_exports(quick: bool) -> list[dict]:
    model = attnviz.shipped.load("resnet10_se")
    test = attnviz.shipped.test_data("resnet10_se")
    app = ChannelExplorer(model, test.images[:4], labels=test.labels[:4].tolist())
    page = "ChannelExplorer, shipped resnet10_se (64 x 64)"
    rows = []
    try:
        if not quick:
            default = ", ".join(app._EXPORT)
            rows.append(_export_row(page, 4, f"default ({default})", lambda: app.export_html()))
            rows.append(
                _export_row(
                    page,
                    4,
                    f"default ({default}), max_bytes=1e9",
                    lambda: app.export_html(max_bytes=10**9),
                )
            )
        rows.append(
            _export_row(
                page, 4, "image, block", lambda: app.export_html(controls=("image", "block"))
            )
        )
    finally:
        app.close()
    return rows


# -- the report --------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.1f}"


def run(quick: bool = False) -> dict:
    global _METER
    contention = Contention()
    neighbours = _METER = _Neighbours()
    scripts = _scripts()
    n = 8 if quick else 30
    vit_name = _vit_source()[0]
    images = _photos()
    vit = _vit()
    explorer = QueryExplorer(vit, images, scale=SCALE)
    with tempfile.TemporaryDirectory(prefix="attnviz-bench-pointer-") as tmp:
        page_path = Path(tmp) / "vit.html"
        exports = [
            _export_row(
                f"QueryExplorer, ViT-B/16 ({vit_name}), {SIDE} x {SIDE}",
                k,
                "all (blocks, heads, show, query, head grid)",
                functools.partial(explorer.export_html, page_path, images=list(range(k))),
            )
            for k in (1, 2)
        ]  # the 2-image page stays on disk for the clicks
        explorer.close()
        del explorer, vit
        page_rows, others, load_s = _exported_clicks(page_path, n, quick)
    lab_rows, blocked, lab_s = _lab_clicks(images, n, quick)
    exports += _channel_exports(quick)
    clicks = page_rows + lab_rows

    table = [
        f"| click to new pixels ({n} clicks) | machine | median drawn ms | p90 drawn ms "
        "| median frame ms | p90 frame ms | one draw() ms, median | main-canvas draws per "
        f"click | p90 drawn <= {TARGET_MS:.0f} ms | p90 frame <= {TARGET_MS:.0f} ms "
        "| neighbours, % of a core |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in clicks:
        table.append(
            f"| {r['where']} | {r['condition']} | {_fmt(r['drawn_median_ms'])} "
            f"| {_fmt(r['drawn_p90_ms'])} | {_fmt(r['frame_median_ms'])} "
            f"| {_fmt(r['frame_p90_ms'])} | {_fmt(r['one_draw_median_ms'])} "
            f"| {r['draws_per_click']:g} | {'yes' if r['drawn_target_met'] else '**no**'} "
            f"| {'yes' if r['frame_target_met'] else '**no**'} "
            f"| {r.get('neighbour_core_share', float('nan')):.0%} |"
        )
    table += [
        "",
        "| requests | count | must be |",
        "|---|---:|---:|",
        f"| exported page: requests not for the file itself (all aborted) | {len(others)} | 0 |",
        f"| live JupyterLab: requests that tried to leave 127.0.0.1 (aborted) | {len(blocked)} "
        "| 0 |",
        "",
        "| exported page | images | controls | bytes | MiB | export s | query rows kept "
        f"| <= {BUDGET / 1e6:.0f} MB |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for r in exports:
        if "refused" in r:
            table.append(
                f"| {r['page']} | {r['images']} | {r['controls']} | - | - | {r['seconds']:.1f} "
                f"| | **refused** (ValueError: {r['refused']}) |"
            )
        else:
            table.append(
                f"| {r['page']} | {r['images']} | {r['controls']} | {r['bytes']:,} "
                f"| {r['mib']:.2f} | {r['seconds']:.1f} | {r['kept']} "
                f"| {'yes' if r['within_budget'] else '**no**'} |"
            )
    notes = [
        f"Model: {vit_name} (no download), {PHOTOS[0]} and {PHOTOS[1]} from attnviz's sample "
        f"photos, centre-cropped and resized to {SIDE} x {SIDE}, in [0, 1] as they are; "
        f"QueryExplorer(model, images, scale={SCALE}): a {SIDE * SCALE} x {SIDE * SCALE} "
        "canvas, head-by-block grid on (the default for transformers: 12 blocks x 13 "
        "thumbnails of 64 x 64, redrawn with the main picture on every click).",
        f"Clicks: one untimed warm-up click, then {n} clicks at distinct canvas pixels spread "
        "over the canvas (x evenly, y by the golden ratio); before each, the pointer is moved "
        "onto the pixel (its hover draw is waited for and not counted), then "
        "page.mouse.click. 'drawn': event.timeStamp to putImageData done; 'frame': to the "
        "next requestAnimationFrame (window.__attnvizTimes, pushed by pointer.js); p90 by "
        "linear interpolation. Target: 16 ms, one frame at 60 Hz. 'drawn' is what the "
        "script controls; 'frame' adds the wait for the browser's frame clock (up to one "
        "frame, by where in the frame the click falls), so it can pass 16 ms when 'drawn' "
        "is a few ms. 'one draw() ms': the el.dataset.drawMs pointer.js records for "
        "its last draw(); 'main-canvas draws per click': putImageData calls on the main "
        "canvas between the click and its time entry (counted by wrapping putImageData). "
        "Every click's chosen pixel is checked against the pixel clicked. 'neighbours': CPU "
        "that processes this benchmark did not start used while the row's clicks ran, in "
        "% of one core (the last note says how it is counted; under 10% is quiet).",
        f"Exported page: the 2-image ViT page opened from file:// in {_labtools().CHROMIUM} "
        f"(headless, Playwright), loaded in {load_s:.1f} s; every request but the file itself "
        "is aborted and counted. 'head grid off': the page's 'head grid' checkbox cleared, the "
        "same clicks again (quiet), to show what the grid costs.",
        f"Live JupyterLab: tests/labtools.py's LabServer and LabBrowser (kernel with "
        "OMP_NUM_THREADS=1), a notebook that builds the same ViT-B/16 and displays "
        f"QueryExplorer(model, images, scale={SCALE}) (rows packed whole: pack_bytes 64 MiB); "
        f"opening it and running all cells took {lab_s:.0f} s. After each hover and each click "
        "the benchmark waits until the kernel is idle again (the page sends the query, and "
        "in png mode the hovered pixel, to the kernel, which sets its sliders), so the "
        "pointer rests on the pixel before the click. 'clicked right after the hover': no "
        "wait after the hover, so whatever the hover sets off (a message to the kernel if "
        "the script sends one, JupyterLab's handling of it, the kernel's answer to the "
        "previous click) may run beside the click's draws. 'head grid off': the explorer's "
        "'head-by-block grid' checkbox cleared."
        + (" (Both skipped with --quick.)" if quick else ""),
        f"Contended: the same clicks beside {BUSY} CPU-bound Python processes "
        f"(benchmarks/_common.Busy) on this {os.cpu_count()}-core machine"
        + (" (skipped with --quick)." if quick else "."),
        "Exports: ExportedPage.nbytes and .seconds (returned by export_html, written to a "
        "temporary file). The ViT pages hold each image's photo and every block's rows as "
        "float16 within max_bytes (default 10 MB); 'query rows kept' says whether whole rows "
        "fit. The channel explorer's page holds one frame per combination of its export "
        "controls (3 PNG panels each, compress level 9); 'default' is ChannelExplorer's own "
        "choice, with export_html's default max_bytes, then with max_bytes raised to show "
        "the size it needs; 'image, block' is a choice that fits"
        + (" (only that one with --quick)." if quick else "."),
    ]
    state = neighbours.measure()
    _METER = None
    changed = [k for k, v in _scripts().items() if scripts.get(k) != v]
    notes.append(
        "Scripts (SHA-256, first 12 hex digits): "
        + ", ".join(f"{k} {v}" for k, v in scripts.items())
        + (
            f". **{', '.join(changed)} changed during the run**: rows may mix versions, rerun."
            if changed
            else ", unchanged during the run."
        )
    )
    wall, other = state["wall"], state["other_cpu_seconds"]
    notes += [
        f"Neighbours: processes this benchmark did not start used {other:.1f} CPU-seconds "
        f"during these {wall:.0f} s ({other / wall:.0%} of one core; its own browser, Jupyter "
        f"server and kernel and busy processes used {state['own_tree_cpu_seconds']:.0f}): "
        + (
            "the machine was quiet."
            if state["quiet"]
            else "a neighbour competed for the cores, so the timings are slowed: rerun on a "
            "quiet machine."
        ),
        "run.py's machine-state line and the note below (benchmarks/_common.Contention) "
        "count only this process and the children it waited for: Chromium's renderers and "
        "the Jupyter kernel are reaped by their own parents, so their CPU (most of the "
        "difference between the two lines) reads as a neighbour's there and can mark this "
        "benchmark contended on a quiet machine; the line above is the one to read. "
        + contention.note(),
    ]
    return {
        "title": "Click to new pixels: the pointer view offline and in JupyterLab; export sizes",
        "table": "\n".join(table),
        "rows": {
            "clicks": clicks,
            "exported_page_other_requests": others,
            "lab_blocked_requests": blocked,
            "exported_page_load_seconds": load_s,
            "lab_open_and_run_seconds": lab_s,
            "exports": exports,
        },
        "neighbours": state,
        "scripts": scripts,
        "scripts_changed_during_run": changed,
        "notes": notes,
    }
