"""Exported pages and the rows packed for the browser, without a browser: what the page
holds is what the records hold (float16, top-k where the budget says), within budget."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from attnviz import capture
from attnviz.render.pointer import AttentionPack, PointerState, draw_panel, pack_attention
from attnviz.widgets import QueryExplorer, STNInspector


def _vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, depth=2, num_heads=2, embed_dim=32, reg_tokens=1)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def _records(model, size=32):
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), capture(model, kinds="self") as rec:
        model(x)
    return dict(rec.items())


def test_whole_rows_are_the_records_rows_in_float16():
    records = _records(_vit())
    pack = pack_attention(records, (32, 32))
    for name, r in records.items():
        b = pack.block(name)
        assert b["k"] == 16 and b["ioff"] is None and b["specials"] == ["cls", "reg1", "received"]
        for head in (None, 0, 1):
            m = r.head_matrix(head)[0]  # Q x K over the patches
            for cell in (0, 5, 15):
                want = m[cell].numpy().astype(np.float16).astype(np.float64)
                np.testing.assert_array_equal(pack.row(name, head, "query", cell), want)
            cls = r.token_attention("cls", head=head)[0].flatten().numpy().astype(np.float16)
            np.testing.assert_array_equal(pack.row(name, head, "cls"), cls.astype(np.float64))
            rec = r.received(head=head)[0].flatten().numpy().astype(np.float16)
            np.testing.assert_array_equal(pack.row(name, head, "received"), rec.astype(np.float64))
    assert pack.row(name, None, "no such token") is None
    assert pack.meta["rollout"]["keys"] == 16


def test_a_budget_keeps_each_query_rows_largest_weights_and_named_tokens_whole():
    records = _records(_vit())
    whole = pack_attention(records, (32, 32))
    budget = len(whole.data) // 2
    pack = pack_attention(records, (32, 32), max_bytes=budget)
    assert len(pack.data) <= budget
    k = pack.meta["blocks"][0]["k"]
    assert 1 <= k < 16
    r = records["blocks.1.attn"]
    row = r.head_matrix(1)[0, 7].numpy()
    got = pack.row("blocks.1.attn", 1, "query", 7)
    top = np.argsort(row)[::-1][:k]
    np.testing.assert_array_equal(np.flatnonzero(got), np.sort(top))  # the k largest, exactly
    np.testing.assert_array_equal(got[top], row[top].astype(np.float16).astype(np.float64))
    np.testing.assert_array_equal(
        pack.row("blocks.1.attn", 1, "cls"), whole.row("blocks.1.attn", 1, "cls")
    )
    # one key per row more than fits: refused, saying what to do
    with pytest.raises(ValueError, match="raise max_bytes"):
        pack_attention(records, (32, 32), max_bytes=100)


def test_the_panel_is_drawn_from_the_pointed_pixels_row():
    """The drawing rule: the clicked pixel's cell row, each key a block of pixels, the
    colour index floor(256 t) into inferno, blended as (c A + p (255 - A) + 127) // 255."""
    records = _records(_vit())
    pack = pack_attention(records, (32, 32))
    photo = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    state = PointerState(block="blocks.0.attn", head=None, query=(30, 1), alpha=200)
    panel = draw_panel(photo, pack, state, scale=2)
    row = pack.row("blocks.0.attn", None, "query", 3)  # pixel (30, 1): cell (0, 3)
    t = (row - row.min()) / (row.max() - row.min())
    from attnviz.render.heat import _colormap_lut

    colour = _colormap_lut("inferno")[np.minimum(255, np.floor(t * 256)).astype(int)]
    key = 1 * 4 + 1  # canvas pixel (20, 20) -> image (10, 10) -> key cell (1, 1)
    want = (colour[key].astype(int) * 200 + photo[10, 10].astype(int) * 55 + 127) // 255
    np.testing.assert_array_equal(panel[20, 20], want)
    assert tuple(panel[3, 61]) == (0, 255, 255)  # the crosshair at (30, 1) * 2 + 1


@pytest.mark.slow
def test_the_vit_b16_page_fits_ten_megabytes(tmp_path):
    """ViT-B/16 at 224, 2 images: 12 blocks x 13 head slots x 196 rows fit in 10 MB with
    each query row's largest weights; the class token's rows stay whole."""
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    app = QueryExplorer(vit_b_16(weights=None).eval(), torch.rand(2, 3, 224, 224), scale=1)
    page = app.export_html(tmp_path / "vit.html")
    assert page.nbytes == page.path.stat().st_size <= 10 * 10**6
    data = json.loads(re.search(r"id='attnviz-data'[^>]*>(.*?)</script>", page.html, re.S)[1])
    blocks = data["images"][1]["meta"]["blocks"]
    assert len(data["images"]) == 2 and len(blocks) == 12
    assert 8 <= blocks[0]["k"] < 196 and blocks[0]["specials"] == ["cls", "received"]
    assert "<script src" not in page.html and "default-src 'none'" in page.html
    app.close()


def test_an_exported_page_is_written_atomically_with_ordinary_permissions(tmp_path):
    """Pages go through the one door for files: a new file's usual mode, no temporary
    file left behind, and a path that is no .html refused before anything is written."""
    thetas = torch.eye(2, 3).expand(2, 3, 2, 3).clone()
    app = STNInspector(torch.rand(3, 1, 8, 8), thetas, scale=2)
    page = app.export_html(tmp_path / "p.html", values={"image": [0, 2]})
    mask = os.umask(0)
    os.umask(mask)
    assert page.path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["p.html"]
    with pytest.raises(ValueError, match=r"\.html"):
        app.export_html(tmp_path / "p.txt")
    with pytest.raises(ValueError, match=r"values\['image'\] must be some of"):
        app.export_html(values={"image": [7]})
    with pytest.raises(ValueError, match="controls must name"):
        app.export_html(controls=["nope"])
    assert not (tmp_path / "p.txt").exists()
    assert "<iframe" in page._repr_html_() and "sandbox='allow-scripts'" in page._repr_html_()
    app.close()


def test_a_pack_round_trips_through_json():
    pack = pack_attention(_records(_vit()), (32, 32))
    again = AttentionPack(json.loads(json.dumps(pack.meta)), pack.data)
    np.testing.assert_array_equal(
        again.row("blocks.0.attn", 0, "query", 3), pack.row("blocks.0.attn", 0, "query", 3)
    )


def test_an_export_over_budget_stops_at_once_and_leaves_the_app_as_it_was():
    """The budget is checked frame by frame: a page that cannot fit is refused after the
    first frames past it, not after drawing them all, and the sliders are put back."""
    thetas = torch.rand(6, 4, 2, 3)
    app = STNInspector(torch.rand(4, 3, 16, 16), thetas, scale=4)
    app.index, app.snapshot = 2, 3
    drawn = []
    app.controls["image"].observe(lambda c: drawn.append(c["new"]), names="value")
    with pytest.raises(ValueError, match=r"export fewer images or controls .*values="):
        app.export_html(max_bytes=10_000)
    # the pictures pass 10 kB within the first frames: images 0 and 1, then back to 2 (a
    # whole walk would move the image slider 6 x (4 + 1) = 30 times)
    assert drawn == [0, 1, 2]
    assert (app.index, app.snapshot) == (2, 3)
    app.close()


class _Metas(HTMLParser):
    """Every <meta> tag's attributes, and whether it came before the first <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.metas: list[dict] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "meta":
            self.metas.append({**dict(attrs), "before scripts": self.scripts == 0})
        elif tag == "script":
            self.scripts += 1


def _stn_page(path):
    thetas = torch.eye(2, 3).expand(2, 3, 2, 3).clone()
    app = STNInspector(torch.rand(3, 1, 8, 8), thetas, scale=2)
    page = app.export_html(path, values={"image": [0]})
    app.close()
    return page


def _pointer_page(path):
    app = QueryExplorer(_vit(), torch.rand(1, 3, 32, 32), scale=1)
    page = app.export_html(path)
    app.close()
    return page


@pytest.mark.parametrize("make", [_stn_page, _pointer_page], ids=["frames", "pointer"])
def test_an_exported_pages_content_security_policy_allows_no_request(make, tmp_path):
    """The exact policy: nothing by default, inline scripts and styles, data: and blob:
    pictures; no scheme (https:, http:), wildcard or host anywhere, not even 'self'."""
    page = make(tmp_path / "p.html")
    html = page.path.read_text(encoding="utf-8")
    assert html == page.html
    parser = _Metas()
    parser.feed(html)
    csp = [m for m in parser.metas if m.get("http-equiv", "").lower() == "content-security-policy"]
    assert len(csp) == 1 and csp[0]["before scripts"]
    directives = {}
    for part in csp[0]["content"].split(";"):
        name, *sources = part.split()
        assert name not in directives, f"{name} given twice"
        directives[name] = sources
    assert directives == {
        "default-src": ["'none'"],
        "script-src": ["'unsafe-inline'"],
        "style-src": ["'unsafe-inline'"],
        "img-src": ["data:", "blob:"],
    }
    allowed = {"'none'", "'unsafe-inline'", "data:", "blob:"}
    assert {s for sources in directives.values() for s in sources} <= allowed


def test_a_page_reaches_its_path_by_a_rename_from_its_own_folder(tmp_path, monkeypatch):
    """The page is written whole to a temporary file beside the target, then renamed over
    it (os.replace): a reader sees the old page or the new one, never half of one."""
    renames = []
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        renames.append((Path(src), Path(dst), Path(src).read_bytes()))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    thetas = torch.eye(2, 3).expand(2, 3, 2, 3).clone()
    app = STNInspector(torch.rand(3, 1, 8, 8), thetas, scale=2)
    target = tmp_path / "p.html"
    target.write_bytes(b"the old page")
    page = app.export_html(target, values={"image": [0]})
    app.close()
    assert [(src.parent, dst) for src, dst, _ in renames] == [(tmp_path, target)]
    ((src, _, written),) = renames
    assert src != target and not src.exists()
    assert written == target.read_bytes() == page.html.encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["p.html"]


def test_a_page_write_that_fails_leaves_the_old_page_whole(tmp_path, monkeypatch):
    """The disk fails while the new page is being written (fsync raises): the old page is
    still there byte for byte, the error reaches the caller, and no temporary file stays."""
    thetas = torch.eye(2, 3).expand(2, 3, 2, 3).clone()
    app = STNInspector(torch.rand(3, 1, 8, 8), thetas, scale=2)
    target = tmp_path / "p.html"
    old = b"<!doctype html><title>the old page</title>\n" * 100
    target.write_bytes(old)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    raised = None
    try:
        app.export_html(target, values={"image": [0]})
    except OSError as e:
        raised = e
    finally:
        app.close()
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["p.html"]
    assert raised is not None and raised.errno == 28
