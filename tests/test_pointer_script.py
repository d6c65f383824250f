"""The browser's drawing rule without a browser: ``static/pointer.js`` run under Node.js
paints the same bytes as its numpy mirror (attnviz.render.pointer) and as the rule
written out by hand, ``(c A + p (255 - A) + 127) // 255`` per channel.

Node.js is required (CI installs it): without it these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from attnviz.render.pointer import _blend, _lut, _overlay
from attnviz.widgets.pointer import SCRIPT

TAIL = "export default { render };"

# reads {"cases": [...]} on stdin, paints each with pointer.js's own paint(), prints the RGB
HARNESS = """
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = input.cases.map((c) => {
  const px = new Uint8ClampedArray(4 * c.tw * c.th);
  paint(px, c.tw, Uint8Array.from(c.photo), c.h, c.w, Float64Array.from(c.row), c.hk, c.wk,
    Uint8Array.from(input.lut), c.alpha, 0, 0, c.tw, c.th);
  const rgb = [];
  for (let i = 0; i < px.length; i += 4) rgb.push(px[i], px[i + 1], px[i + 2]);
  return rgb;
});
process.stdout.write(JSON.stringify(out));
"""


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js ('node') is needed to run static/pointer.js outside a browser: "
            "apt-get install nodejs",
            pytrace=False,
        )
    return node


def _paint_in_node(cases: list[dict], lut: np.ndarray, tmp_path) -> list[np.ndarray]:
    source = SCRIPT.read_text(encoding="utf-8").rstrip()
    assert source.endswith(TAIL), f"{SCRIPT} must end with {TAIL!r}"
    harness = tmp_path / "paint.cjs"
    harness.write_text(source[: -len(TAIL)] + HARNESS, encoding="utf-8")
    payload = {"lut": lut.reshape(-1).tolist(), "cases": cases}
    done = subprocess.run(
        [_node(), str(harness)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    return [np.array(g, dtype=np.uint8).reshape(c["th"], c["tw"], 3) for g, c in zip(got, cases)]


def _by_hand(photo, row, hk, wk, lut, alpha, tw, th) -> np.ndarray:
    """The documented rule, pixel by pixel: picture pixel (u, v) shows image pixel
    (u w // tw, v h // th), in key cell (y hk // h, x wk // w), coloured by
    lut[min(255, floor(256 t))], blended as (c A + p (255 - A) + 127) // 255."""
    h, w = photo.shape[:2]
    lo, hi = row.min(), row.max()
    out = np.zeros((th, tw, 3), dtype=np.uint8)
    for v in range(th):
        for u in range(tw):
            y, x = v * h // th, u * w // tw
            m = row[(y * hk // h) * wk + x * wk // w]
            c = lut[min(255, int(np.floor((m - lo) / (hi - lo) * 256)))].astype(int)
            p = photo[y, x].astype(int)
            out[v, u] = (c * alpha + p * (255 - alpha) + 127) // 255
    return out


def test_pointer_js_blends_exactly_as_its_numpy_mirror_and_the_rule(tmp_path):
    """Every colour of the map (a 16 x 16 key grid over a 16 x 16 image: one key per pixel,
    values 0..255 giving colour indices 0..255) and a coarse grid drawn 2x larger, at
    opacities where rounding, not truncation, decides most pixels."""
    rng = np.random.default_rng(0)
    lut = _lut("inferno")
    cases, wanted = [], []
    for h, w, hk, wk, scale in ((16, 16, 16, 16, 1), (12, 20, 3, 5, 2)):
        photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        row = np.arange(hk * wk, dtype=np.float64) if hk == 16 else rng.random(hk * wk)
        tw, th = w * scale, h * scale
        for alpha in (0, 1, 77, 128, 200, 254, 255):
            cases.append(
                {
                    "photo": photo.reshape(-1).tolist(),
                    "row": row.tolist(),
                    "h": h,
                    "w": w,
                    "hk": hk,
                    "wk": wk,
                    "alpha": alpha,
                    "tw": tw,
                    "th": th,
                }
            )
            ys, xs = np.arange(th) // scale, np.arange(tw) // scale
            mirror = _overlay(photo[ys][:, xs], row, (hk, wk), (h, w), ys, xs, alpha, "inferno")
            hand = _by_hand(photo, row, hk, wk, lut, alpha, tw, th)
            np.testing.assert_array_equal(mirror, hand)  # the mirror states the rule
            wanted.append(hand)
    truncated = (lut[np.arange(256)].astype(int) * 77 + 200 * 178) // 255
    rounded = (lut[np.arange(256)].astype(int) * 77 + 200 * 178 + 127) // 255
    assert (truncated != rounded).any()  # the cases can tell rounding from truncation
    for case, got, want in zip(cases, _paint_in_node(cases, lut, tmp_path), wanted):
        where = f"alpha {case['alpha']}, {case['hk']} x {case['wk']} keys"
        np.testing.assert_array_equal(got, want, err_msg=f"pointer.js != numpy rule ({where})")


def test_pointer_js_blend_constants_give_the_numpy_rule_for_every_input():
    """Pure Python: the constants pointer.js blends with (the photo's term p (255 - A) +
    127, the colour's c A + 1, the division ((x + 1) * 257) >> 16) give the numpy
    mirror's (c A + p (255 - A) + 127) // 255 for every colour, pixel and opacity."""
    source = SCRIPT.read_text(encoding="utf-8")
    photo_terms = re.findall(r"photo\[p(?: \+ \d)?\] \* \(255 - alpha\)(?: \+ (\d+))?;", source)
    colour_terms = re.findall(r"lut\[3 \* idx\[k\](?: \+ \d)?\] \* alpha(?: \+ (\d+))?;", source)
    divisions = re.findall(
        r"\(\(colour\[c(?: \+ \d)?\] \+ B\[b(?: \+ \d)?\]\) \* (\d+)\) >> (\d+);", source
    )
    assert len(photo_terms) == len(colour_terms) == len(divisions) == 3, "one per channel"
    (rounding,) = {int(t or 0) for t in photo_terms}
    (plus,) = {int(t or 0) for t in colour_terms}
    ((times, shift),) = {(int(a), int(b)) for a, b in divisions}
    c, p = (a.reshape(-1) for a in np.meshgrid(np.arange(256), np.arange(256)))
    for alpha in range(256):
        js = ((c * alpha + plus + p * (255 - alpha) + rounding) * times) >> shift
        want = _blend(c, p, alpha).astype(np.int64)
        bad = np.flatnonzero(js != want)
        assert not len(bad), (
            f"pointer.js (+{rounding} on the photo, +{plus} on the colour, * {times} >> "
            f"{shift}) gives {js[bad[0]]} for c={c[bad[0]]}, p={p[bad[0]]}, A={alpha}; "
            f"numpy's rule (c A + p (255 - A) + 127) // 255 gives {want[bad[0]]}"
        )
