"""Pick a query pixel and see where it looks: self-attention (non-local blocks) image by image.

Wang et al., "Non-local Neural Networks", CVPR 2018: a non-local block's response at
position i is a weighted average of all positions j, y_i = sum_j A_ij g(x_j) (eq. 1), with
A = softmax(theta^T phi) for the embedded Gaussian (eq. 3). Row i of A is where query i
looks. ``QueryExplorer`` shows that row for the query cell under a chosen image pixel,
laid out on the key grid, upsampled to the image and overlaid on it, with the pixel
marked by a crosshair and its cell by a box (and, for HaloNet's local attention, the window
of keys the cell can see); "show" switches to the attention each position receives,
averaged over all queries. Multi-head attention (BoTNet, HaloNet, vision transformers) is
shown per head or averaged over heads. A vision transformer adds where its class token
looks (the DINO paper's picture) and the attention rollout through all blocks (Abnar and
Zuidema, 2020).

The query pixel is chosen with two sliders: core ``ipywidgets.Image`` sends no click
events, and click support would need a browser extension (ipyevents, ipycanvas), which
breaks offline and in some front ends. One forward pass per image (under
:func:`attnviz.capture`) fills a cache of every block's record; moving the query, the
block, the toggle or the opacity only re-renders from it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import render
from ..capture import capture
from ..maps import rollout_map, upsample
from ..records import LocalAttentionRecord, SelfAttentionRecord
from ._base import (
    App,
    BlockChoice,
    ImageIndex,
    Opacity,
    check_images,
    display_images,
    redraw,
)

__all__ = ["QueryExplorer"]

#: colours drawn over the map: the query pixel's crosshair (over a dark outline), the
#: query cell's box, and the box of the keys a local-attention query can see
CROSSHAIR_COLOR = (0, 255, 255)
CELL_COLOR = (255, 255, 255)
WINDOW_COLOR = (80, 200, 255)
#: what the panel shows, by "show" value
_SHOWS = {
    "query": "where the query looks",
    "received": "where the whole image looks",
    "cls": "where the class token looks",
    "rollout": "attention rollout (all blocks)",
}
_CMAP = "inferno"


def _crosshair(canvas: np.ndarray, cx: int, cy: int, arm: int) -> np.ndarray:
    """A crosshair centred on canvas pixel (cx, cy), 1 pixel wide with a dark outline."""
    out = canvas.copy()
    h, w = out.shape[:2]
    for colour, width in (((0, 0, 0), 1), (CROSSHAIR_COLOR, 0)):
        y0, y1 = max(cy - width, 0), min(cy + width + 1, h)
        x0, x1 = max(cx - width, 0), min(cx + width + 1, w)
        out[y0:y1, max(cx - arm, 0) : min(cx + arm + 1, w)] = colour
        out[max(cy - arm, 0) : min(cy + arm + 1, h), x0:x1] = colour
    return out


class QueryExplorer(App, Opacity, ImageIndex, BlockChoice):
    """Choose an image, a self-attention block and a query pixel; see where that pixel looks.

    The panel shows the image with the attention map overlaid (inferno, normalised to its
    own range; the line below gives the range and the uniform level 1 / K), the query
    pixel as a crosshair and the query cell (the feature-grid cell the pixel falls in,
    whose row of the matrix is shown) as a box. "where the whole image looks" switches to
    the attention each key receives, averaged over all queries (``record.received()``).

    Args:
        model: a network with self-attention that :func:`attnviz.capture` recognises
            (e.g. ``small_resnet(attention="nonlocal")``).
        images: network inputs (N, C, H, W), C = 1 or 3, float.
        mean, std: per-channel normalisation to undo for display (x * std + mean); by
            default the images are shown as they are and must lie in [0, 1].
        device: where the model runs (default: its parameters' device).
        scale: integer upscaling of the panel (default about 256 pixels wide).

    Raises:
        ValueError: bad shapes, display values outside [0, 1], no self-attention.
        TypeError: integer images, or ``model`` not an ``nn.Module``.

    The query is chosen with the x and y sliders (image pixels): core ipywidgets images
    send no clicks. The model's train/eval flags are left as they were (forward passes run
    in eval mode under ``torch.no_grad()``). ``.root`` is the ``VBox``.

    ``controls``: ``image``, ``block``, ``opacity``, ``x`` and ``y`` (the query pixel's
    sliders), ``show`` (what the panel shows) and ``head`` (dropdowns). ``panels``:
    ``map``.
    """

    _CONTROLS: ClassVar[dict[str, str]] = {
        "image": "_image",
        "block": "_block",
        "opacity": "_opacity",
        "x": "_x",
        "y": "_y",
        "show": "_what",
        "head": "_head",
    }

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        device: str | torch.device | None = None,
        scale: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.images = check_images(images)
        n, _, h, w = self.images.shape
        self.image_size = (h, w)
        self._shown = display_images(self.images, mean, std)
        param = next(model.parameters(), None)
        self.device = (
            torch.device(device) if device is not None else getattr(param, "device", "cpu")
        )
        self.scale = render.check_scale(max(1, round(256 / max(h, w))) if scale is None else scale)
        self._cache: dict[str, Any] = {}
        self._load(0)
        self._build(n)
        self._redraw()

    # -- capture and cache ---------------------------------------------------------------
    def _load(self, index: int) -> None:
        """One forward pass of image ``index``; keep every self-attention record."""
        x = self.images[index : index + 1].to(self.device)
        with torch.no_grad(), capture(self.model, kinds="self") as rec:
            self.model(x)
        # kinds="self": every record is a SelfAttentionRecord; shown: those whose queries
        # and keys lie on the image (not class attention's single query, not tokens no
        # layout places, which are listed below the panel)
        blocks, self.unplaced = {}, {}
        for name, r in cast("dict[str, SelfAttentionRecord]", dict(rec.items())).items():
            try:
                r.query_size, r.key_size  # noqa: B018 (raises where there is no grid)
                blocks[name] = r
            except ValueError as e:
                self.unplaced[name] = str(e)
        if not blocks:
            why = "; ".join(f"{n}: {w}" for n, w in self.unplaced.items())
            raise ValueError(
                "no self-attention block ran in the forward pass with queries on the image"
                + (f" ({why})" if why else "")
            )
        self._cache = {
            "index": index,
            "blocks": blocks,
            "image": render.to_uint8_rgb(self._shown[index]),
        }

    # -- widgets -------------------------------------------------------------------------
    def _build(self, n: int) -> None:
        h, w = self.image_size
        self._image = widgets.IntSlider(value=0, min=0, max=n - 1, description="image")
        self._block = widgets.Dropdown(options=self._block_options(), description="block")
        self._x = widgets.IntSlider(value=w // 2, min=0, max=w - 1, description="query x")
        self._y = widgets.IntSlider(value=h // 2, min=0, max=h - 1, description="query y")
        self._what = widgets.Dropdown(
            options=self._what_options(), value="query", description="show"
        )
        self._head = widgets.Dropdown(options=self._head_options(), value=None, description="head")
        self._opacity = widgets.FloatSlider(
            value=0.6, min=0, max=1, step=0.05, description="opacity"
        )
        self._map_png = widgets.Image(format="png")
        self._info = widgets.HTML()
        self.log = widgets.Output()
        self.root = widgets.VBox(
            [
                widgets.HBox([self._image, self._block, self._opacity]),
                widgets.HBox([self._x, self._y]),
                widgets.HBox([self._what, self._head]),
                widgets.HBox([self._map_png]),
                self._info,
                self.log,
            ]
        )
        # stable handles for browser tests and user CSS
        self.root.add_class("attnviz-query-explorer")
        self._x.add_class("attnviz-query-x")
        self._map_png.add_class("attnviz-query")
        self._image.observe(self._guard(self._on_image), names="value")
        self._head.add_class("attnviz-query-head")
        self._what.add_class("attnviz-query-show")
        for wid in (self._block, self._x, self._y, self._what, self._head, self._opacity):
            wid.observe(self._guard(lambda _change: self._redraw()), names="value")

    def _block_options(self) -> list[tuple[str, str]]:
        out = []
        for name, r in self._cache["blocks"].items():
            (hq, wq), (hk, wk) = r.query_size, r.key_size
            out.append((f"{name} ({hq}x{wq} -> {hk}x{wk})", name))
        return out

    def _what_options(self) -> list[tuple[str, str]]:
        shows = ["query", "received"]
        if any("cls" in r.prefix for r in self._cache["blocks"].values()):
            shows += ["cls", "rollout"]
        return [(_SHOWS[k], k) for k in shows]

    def _head_options(self) -> list[tuple[str, int | None]]:
        heads = max(r.heads for r in self._cache["blocks"].values())
        return [("mean over heads", None)] + [(f"head {h}", h) for h in range(heads)]

    def _on_image(self, change: dict) -> None:
        block = self.block
        self._load(change["new"])
        options = self._block_options()
        if options != [tuple(o) for o in self._block.options]:
            self._block.options = options  # may redraw with the first block ...
            if block in self._cache["blocks"]:
                self._block.value = block
        self._redraw()

    # -- state ---------------------------------------------------------------------------
    @property
    def query(self) -> tuple[int, int]:
        """The query pixel (x, y) in image pixels; settable (one redraw per slider)."""
        return self._x.value, self._y.value

    @query.setter
    def query(self, xy: Sequence[int]) -> None:
        x, y = (int(v) for v in xy)
        h, w = self.image_size
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"query must lie in the {w} x {h} image, got ({x}, {y})")
        self._x.value, self._y.value = x, y

    @property
    def received(self) -> bool:
        """Whether the map is the attention received (mean over queries); settable."""
        return self._what.value == "received"

    @received.setter
    def received(self, value: bool) -> None:
        self._what.value = "received" if value else "query"

    @property
    def show(self) -> str:
        """What the panel shows: ``"query"``, ``"received"``, and for a vision transformer
        ``"cls"`` (where the class token looks) or ``"rollout"``; settable."""
        return self._what.value

    @show.setter
    def show(self, value: str) -> None:
        allowed = [v for _, v in self._what.options]
        if value not in allowed:
            raise ValueError(f"show must be one of {allowed}, got {value!r}")
        self._what.value = value

    @property
    def head(self) -> int | None:
        """The head shown, or None for the mean over heads; settable."""
        return self._head.value

    @head.setter
    def head(self, value: int | None) -> None:
        allowed = [v for _, v in self._head.options]
        if value not in allowed:
            raise ValueError(f"head must be one of {allowed}, got {value!r}")
        self._head.value = value

    def record(self) -> SelfAttentionRecord:
        """The cached record (batch of one) of the block shown."""
        return self._cache["blocks"][self.block]

    def records(self) -> dict[str, SelfAttentionRecord]:
        """The cached records (batch of one) of every block offered for the image shown,
        by name, in the block dropdown's order (what the rollout combines)."""
        return dict(self._cache["blocks"])

    def current(self) -> dict[str, Any]:
        """The numbers shown.

        Returns:
            ``index``, ``block``, ``query`` ((x, y) pixel), ``cell`` ((i, j) on the query
            grid), ``query_size``, ``key_size``, ``received``, ``show`` and ``head`` (the
            choices), ``window`` (HaloNet: the keys the cell sees, (row0, col0, row1, col1)
            on the key grid; else None), ``key_map`` (on the key grid, Hk x Wk:
            ``record.key_row(query, image_size, head=head)[0]``, ``record.received(...)``,
            ``record.token_attention("cls", ...)`` or the rollout), ``map`` (``key_map``
            upsampled to the image, H x W float32), ``peak`` ((row, col) key cell of the
            largest weight) and ``uniform`` (1 / K, the weight of a query that looks
            everywhere alike).
        """
        r, what = self.record(), self.show
        head = self.head if self.head is None or self.head < r.heads else None
        hk, wk = r.key_size
        cell = r.query_cell(self.query, self.image_size)
        if what == "query":
            key_map = r.key_row(self.query, self.image_size, head=head)[0]
        elif what == "received":
            key_map = r.received(head=head)[0]
        elif what == "cls":
            key_map = r.token_attention("cls", head=head)[0]
        else:
            key_map = rollout_map(list(self._cache["blocks"].values()))[0]
        shown = upsample(key_map, self.image_size)
        peak = int(key_map.argmax())
        window = r.window(cell) if isinstance(r, LocalAttentionRecord) else None
        return {
            "index": self._cache["index"],
            "block": self.block,
            "query": self.query,
            "cell": cell,
            "query_size": r.query_size,
            "key_size": r.key_size,
            "received": self.received,
            "show": what,
            "head": head,
            "window": window if what == "query" else None,
            "map": shown,
            "key_map": key_map,
            "peak": (peak // wk, peak % wk),
            "uniform": 1.0 / (hk * wk),
        }

    # -- drawing -------------------------------------------------------------------------
    def _panel(self, s: dict) -> np.ndarray:
        image, k = self._cache["image"], self.scale
        blended = render.overlay(image, s["map"].numpy(), alpha=self._opacity.value, cmap=_CMAP)
        canvas = render.upscale(blended, k)
        if s["show"] != "query":
            return canvas
        (i, j), (hq, wq), (h, w) = s["cell"], s["query_size"], self.image_size
        picture = Image.fromarray(canvas)
        if s["window"] is not None:
            (hk, wk), (r0, c0, r1, c1) = s["key_size"], s["window"]
            box = (c0 * w / wk, r0 * h / hk, c1 * w / wk, r1 * h / hk)
            picture = render.draw_box(picture, box, scale=k, color=WINDOW_COLOR)
        box = (j * w / wq, i * h / hq, (j + 1) * w / wq, (i + 1) * h / hq)
        canvas = np.asarray(render.draw_box(picture, box, scale=k, color=CELL_COLOR))
        x, y = s["query"]
        return _crosshair(canvas, int((x + 0.5) * k), int((y + 0.5) * k), arm=max(3, 2 * k))

    def _html(self, s: dict) -> str:
        m = s["key_map"]
        if s["show"] == "query":
            what = f"query pixel ({s['query'][0]}, {s['query'][1]}) &rarr; cell {s['cell']}"
        else:
            what = _SHOWS[s["show"]]
        heads = (
            "rollout: heads averaged"
            if s["show"] == "rollout"
            else ("mean over heads" if s["head"] is None else f"head {s['head']}")
        )
        parts = [
            f"<b>{html.escape(s['block'])}</b>",
            what,
            heads,
            f"queries {s['query_size'][0]}x{s['query_size'][1]}, "
            f"keys {s['key_size'][0]}x{s['key_size'][1]}",
            f"peak at key cell {s['peak']}",
            f"range [{float(m.min()):.3g}, {float(m.max()):.3g}] (per map; uniform "
            f"{s['uniform']:.3g})",
        ]
        out = "<span style='font-family:monospace'>" + " &middot; ".join(parts) + "</span>"
        if self.unplaced:
            names = ", ".join(html.escape(n) for n in self.unplaced)
            out += f"<br><small>not shown here (no query grid on the image): {names}</small>"
        return out

    @redraw
    def _redraw(self) -> None:
        s = self.current()
        self._show(self._map_png, self._panel(s))
        self._info.value = self._html(s)

    # -- display and clean-up ------------------------------------------------------------
    def _release(self) -> None:
        self._cache = {"blocks": {}}
