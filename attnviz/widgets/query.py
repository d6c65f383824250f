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

The query pixel is chosen by clicking the picture (hovering previews a pixel without
choosing it), or with the two sliders, which follow the clicks. The picture is a
:class:`~attnviz.widgets.pointer.PointerView`: one forward pass per image (under
:func:`attnviz.capture`) packs every block's rows (float16) into the page, which draws the
pointed pixel's map itself, so a click shows new pixels within a frame, with no kernel
round trip. For transformers a head-by-block grid (bertviz's model view, for images)
shows the chosen query's attention in every block and head; clicking a cell opens it
large. :meth:`QueryExplorer.export_html` writes all of it into one offline HTML file.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import ipywidgets as widgets
import torch
from torch import nn

from .. import render
from ..capture import capture
from ..maps import rollout_map, upsample
from ..records import LocalAttentionRecord, SelfAttentionRecord
from ..render.pointer import CELL_COLOR as CELL_COLOR  # the colours drawn, for scripts
from ..render.pointer import CROSSHAIR_COLOR as CROSSHAIR_COLOR
from ..render.pointer import PREVIEW_COLOR as PREVIEW_COLOR
from ..render.pointer import WINDOW_COLOR as WINDOW_COLOR
from ..render.pointer import pack_attention
from ..running import single_threaded
from ._base import (
    App,
    BlockChoice,
    ImageIndex,
    Opacity,
    check_images,
    display_images,
    redraw,
)
from .export import ExportedPage, pointer_page, timed
from .pointer import PointerView

__all__ = ["QueryExplorer"]

#: what the panel shows, by "show" value (named tokens: "where the <token> token looks")
_SHOWS = {
    "query": "where the query looks",
    "received": "where the whole image looks",
    "rollout": "attention rollout (all blocks)",
}
_CMAP = "inferno"


def _show_label(value: str) -> str:
    return _SHOWS.get(value, f"where the {value} token looks")


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

    The query is chosen by clicking the picture (hovering previews a pixel, drawn with a
    yellow crosshair, without choosing it) or with the x and y sliders, which follow the
    clicks. Each key is drawn as the block of pixels it covers (no smoothing), from the
    rows in float16. With the head-by-block grid on (the default for transformers), every
    block x head shows the chosen query's map (the first column is the mean over heads);
    clicking a cell shows that block and head large. "show" also offers each named token
    (class token, registers) as the query, and the rollout. The model's train/eval flags
    are left as they were (forward passes run in eval mode under ``torch.no_grad()``).
    ``.root`` is the ``VBox``.

    ``controls``: ``image``, ``block``, ``opacity``, ``x`` and ``y`` (the query pixel's
    sliders), ``show`` (what the panel shows), ``head`` (dropdowns) and ``grid`` (the
    head grid's checkbox). ``panels``: ``map`` (a :class:`PointerView`; ``pictures()``
    adds ``"heads"``, the grid, while it is on).
    """

    _CONTROLS: ClassVar[dict[str, str]] = {
        "image": "_image",
        "block": "_block",
        "opacity": "_opacity",
        "x": "_x",
        "y": "_y",
        "show": "_what",
        "head": "_head",
        "grid": "_grid",
    }
    #: the most bytes of attention rows sent to the page per image (float16); beyond it
    #: each query row keeps its largest weights (see attnviz.render.pointer)
    pack_bytes: int = 64 * 2**20

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
    def _forward(self, index: int) -> tuple[dict[str, SelfAttentionRecord], dict[str, str]]:
        """One forward pass of image ``index``: the self-attention records with queries and
        keys on the image, and why the others cannot be shown."""
        x = self.images[index : index + 1].to(self.device)
        with torch.no_grad(), capture(self.model, kinds="self") as rec:
            self.model(x)
        # kinds="self": every record is a SelfAttentionRecord; shown: those whose queries
        # and keys lie on the image (not class attention's single query, not tokens no
        # layout places, which are listed below the panel)
        blocks, unplaced = {}, {}
        for name, r in cast("dict[str, SelfAttentionRecord]", dict(rec.items())).items():
            try:
                r.query_size, r.key_size  # noqa: B018 (raises where there is no grid)
                blocks[name] = r
            except ValueError as e:
                unplaced[name] = str(e)
        if not blocks:
            why = "; ".join(f"{n}: {w}" for n, w in unplaced.items())
            raise ValueError(
                "no self-attention block ran in the forward pass with queries on the image"
                + (f" ({why})" if why else "")
            )
        return blocks, unplaced

    def _load(self, index: int) -> None:
        """One forward pass of image ``index``; keep every self-attention record."""
        blocks, self.unplaced = self._forward(index)
        self._cache = {
            "index": index,
            "blocks": blocks,
            "image": render.to_uint8_rgb(self._shown[index]),
        }

    def export_html(  # type: ignore[override]
        self,
        path: str | os.PathLike | None = None,
        *,
        images: Sequence[int] | None = None,
        max_bytes: int = 10 * 10**6,
        title: str | None = None,
    ) -> ExportedPage:
        """One self-contained HTML file of this explorer: click and hover, blocks, heads,
        named tokens, the head grid, no kernel, nothing fetched.

        Holds, for each chosen image, the photo and every block's rows packed as float16
        (:func:`attnviz.render.pointer.pack_attention`), drawn by the live widget's own
        script, so the same clicks give the same pixels. Whole rows where they fit in
        ``max_bytes``; else each query row keeps its largest weights (as many as fit;
        the page says how many) while the named tokens' rows stay whole.

        Args:
            path: where to write it (``.html``, atomically); None: only return it.
            images: indices of the images to include (default all).
            max_bytes: the file's budget in bytes (default 10 MB).
            title: the page's title.

        Returns:
            an :class:`~attnviz.widgets.export.ExportedPage`.
        """
        indices = list(range(len(self.images))) if images is None else [int(i) for i in images]
        if not indices or not all(0 <= i < len(self.images) for i in indices):
            raise ValueError(f"images must be indices in [0, {len(self.images) - 1}]")
        view = self._map_png
        h, w = self.image_size

        def make() -> str:
            photos = [render.to_uint8_rgb(self._shown[i]).tobytes() for i in indices]
            # base64 grows data by 4/3; leave room for the script and page
            room = (max_bytes - 4 * sum(map(len, photos)) // 3 - 150_000) * 3 // 4
            if room <= 0:
                raise ValueError(
                    f"max_bytes={max_bytes} leaves no room for the rows: raise it or export "
                    "fewer images"
                )
            entries: list[dict[str, Any]] = []
            for i, photo in zip(indices, photos):
                blocks = self._cache["blocks"] if i == self.index else self._forward(i)[0]
                pack = pack_attention(blocks, self.image_size, max_bytes=room // len(indices))
                entries.append(
                    {"label": f"image {i}", "photo": photo, "size": [h, w], "pack": pack}
                )
            state = {
                k: getattr(view, k)
                for k in ("block", "head", "show", "query", "alpha", "grid", "thumb", "scale")
            }
            state["mode"] = "attention"
            if state["block"] not in [b["name"] for b in entries[0]["pack"].meta["blocks"]]:
                state["block"] = entries[0]["pack"].meta["blocks"][0]["name"]
            return pointer_page(title or "attnviz query explorer", entries, state, view.lut)

        with single_threaded():
            grid_h = len(self._cache["blocks"]) * (view.thumb * h // w + 3)
            height = 140 + max(h * self.scale, grid_h if view.grid else 0)
            return timed(make, path, height)

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
        transformer = any(r.prefix for r in self._cache["blocks"].values())
        self._grid = widgets.Checkbox(value=transformer, description="head-by-block grid")
        self._map_png = PointerView(cmap=_CMAP)
        self._send_pack()
        self._info = widgets.HTML()
        self.log = widgets.Output()
        self.root = widgets.VBox(
            [
                widgets.HBox([self._image, self._block, self._opacity]),
                widgets.HBox([self._x, self._y]),
                widgets.HBox([self._what, self._head, self._grid]),
                self._map_png,
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
        self._grid.observe(self._guard(lambda _change: self._redraw()), names="value")
        # what the page changed (a click on the picture or the grid): the controls follow
        self._map_png.observe(self._guard(self._on_page), names=["query", "block", "head"])

    def _send_pack(self) -> None:
        """Pack the image's rows for the page (float16, at most ``pack_bytes``)."""
        pack = pack_attention(self._cache["blocks"], self.image_size, max_bytes=self.pack_bytes)
        self._map_png.show_attention(self._cache["image"], pack, self.scale)

    def _on_page(self, change: dict) -> None:
        view = self._map_png
        with self._hold():
            h, w = self.image_size
            self._x.value, self._y.value = min(view.query[0], w - 1), min(view.query[1], h - 1)
            if view.block in self._cache["blocks"]:
                self._block.value = view.block
            head = None if view.head < 0 else view.head
            if head in [v for _, v in self._head.options]:
                self._head.value = head

    def _block_options(self) -> list[tuple[str, str]]:
        out = []
        for name, r in self._cache["blocks"].items():
            (hq, wq), (hk, wk) = r.query_size, r.key_size
            out.append((f"{name} ({hq}x{wq} -> {hk}x{wk})", name))
        return out

    def _what_options(self) -> list[tuple[str, str]]:
        shows = ["query", "received"]
        tokens: list[str] = []
        for r in self._cache["blocks"].values():
            tokens += [t for t in r.prefix if t not in tokens]
        shows += tokens
        if "cls" in tokens:
            shows.append("rollout")
        return [(_show_label(k), k) for k in shows]

    def _head_options(self) -> list[tuple[str, int | None]]:
        heads = max(r.heads for r in self._cache["blocks"].values())
        return [("mean over heads", None)] + [(f"head {h}", h) for h in range(heads)]

    def _on_image(self, change: dict) -> None:
        block = self.block
        self._load(change["new"])
        options = self._block_options()
        with self._hold():
            if options != [tuple(o) for o in self._block.options]:
                self._block.options = options
                if block in self._cache["blocks"]:
                    self._block.value = block
            self._send_pack()

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
        elif what == "rollout":
            key_map = rollout_map(list(self._cache["blocks"].values()))[0]
        elif what in r.prefix:
            key_map = r.token_attention(what, head=head)[0]
        else:  # a token this block lacks (another block has it): nothing to show here
            key_map = torch.zeros(hk, wk)
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
    def _html(self, s: dict) -> str:
        m = s["key_map"]
        if s["show"] == "query":
            what = f"query pixel ({s['query'][0]}, {s['query'][1]}) &rarr; cell {s['cell']}"
        else:
            what = _show_label(s["show"])
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
        view = self._map_png
        with view.hold_sync():
            view.block, view.show = s["block"], s["show"]
            view.head = -1 if self.head is None else self.head
            view.query = list(s["query"])
            view.alpha = round(255 * self.opacity)
            view.grid = bool(self._grid.value)
        self._info.value = self._html(s)

    # -- display and clean-up ------------------------------------------------------------
    def _release(self) -> None:
        self._cache = {"blocks": {}}
