"""Explore channel attention image by image: which channels a block excites, and what that does.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018: a block's excitation
s = sigmoid(W2 relu(W1 z)) (eq. 3) scales each channel of its input U, x~_c = s_c u_c
(eq. 4); CBAM's channel gate Mc (Woo et al., ECCV 2018, eq. 2) does the same.
``ChannelExplorer`` shows, for one image and one block, all C weights as a bar chart,
and for the chosen channel the map u_c before and s_c u_c after scaling, overlaid on
the image with one shared colour scale, so the scaling reads as a change of colour.

One forward pass per image (under ``capture(features=True)``) fills a cache of every
block's s and U; moving the channel slider, the block or the sort order only re-renders
from it. Built only from core ipywidgets 8 widgets and PNG images, so it renders in
JupyterLab, VS Code and Colab, offline.
"""

from __future__ import annotations

import contextlib
import html
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from .. import render
from ..capture import capture
from ._app import App, BlockChoice, ImageIndex
from ._png import show_png

__all__ = ["ChannelExplorer"]

_BAR = np.array([70, 110, 170], np.uint8)  # a bar
_PICK = np.array([230, 85, 13], np.uint8)  # the selected channel's bar
_PICK_BG = np.array([253, 226, 200], np.uint8)  # behind it, so a tiny weight still shows
_GRID = np.array([215, 215, 215], np.uint8)
_PLOT_H, _TOP, _BOTTOM, _LEFT, _RIGHT = 140, 8, 14, 30, 12
_TOLERANCE = 1e-3


def _lut(name: str) -> np.ndarray:
    return (
        (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    )


_SEQUENTIAL, _DIVERGING = _lut("inferno"), _lut("coolwarm")


# -- validation ------------------------------------------------------------------------------
def _per_channel(values: Any, name: str, c: int, default: float) -> torch.Tensor:
    if values is None:
        return torch.full((c, 1, 1), default)
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if len(t) not in (1, c):
        raise ValueError(f"{name} must give 1 or {c} per-channel values, got {len(t)}")
    return t.expand(c).reshape(c, 1, 1).clone()


def _display_images(images: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """x * std + mean, checked to lie in [0, 1]."""
    c = images.shape[1]
    shown = images * _per_channel(std, "std", c, 1.0) + _per_channel(mean, "mean", c, 0.0)
    lo, hi = float(shown.min()), float(shown.max())
    if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
        raise ValueError(
            f"images * std + mean must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; pass the "
            "normalisation's mean and std, e.g. mean=(0.485, 0.456, 0.406), "
            "std=(0.229, 0.224, 0.225)"
        )
    return shown.clamp(0, 1)


def _check_images(images: Any) -> torch.Tensor:
    t = torch.as_tensor(images).detach().cpu()
    if t.dim() != 4 or t.shape[1] not in (1, 3) or len(t) == 0:
        raise ValueError(
            f"images must be (N, C, H, W) with N >= 1, C = 1 or 3, got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise TypeError(f"images must be a float tensor of network inputs, got {t.dtype}")
    return t


def _as_list(values: Any, name: str, length: int) -> list | None:
    if values is None:
        return None
    out = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(out) != length:
        raise ValueError(f"{name} must hold {length} entries, got {len(out)}")
    return out


# -- pure drawing ----------------------------------------------------------------------------
def _bar_geometry(c: int) -> tuple[int, int]:
    """(bar width, gap) in pixels for C bars: about 512 pixels wide, at least 1 per bar."""
    width = max(1, min(10, 512 // c))
    return width, 1 if width >= 3 else 0


def _bar_chart(heights: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """All C bars in one colour, and the pixel column of each bar's first column."""
    c = len(heights)
    bw, gap = _bar_geometry(c)
    width = _LEFT + c * bw + _RIGHT
    img = np.full((_TOP + _PLOT_H + _BOTTOM, width, 3), 255, np.uint8)
    for level in (0.0, 0.5, 1.0):
        if lo <= level <= hi:
            img[_y(level, lo, hi), _LEFT - 4 :] = _GRID
    x0 = _LEFT + np.arange(c) * bw
    col = np.arange(width)
    bar = (col - _LEFT) // bw
    inside = (col >= _LEFT) & (bar < c) & ((col - _LEFT) % bw < bw - gap)
    bar = np.clip(bar, 0, c - 1)
    top = _y(np.maximum(heights, 0.0), lo, hi)[bar]
    bottom = _y(np.minimum(heights, 0.0), lo, hi)[bar]
    rows = np.arange(img.shape[0])[:, None]
    mask = inside[None, :] & (rows >= np.minimum(top, bottom)) & (rows <= np.maximum(top, bottom))
    img[mask] = _BAR
    _axis_labels(img, lo, hi, c)
    return img, x0


def _y(v: Any, lo: float, hi: float) -> Any:
    """Pixel row of value v (row of ``hi`` is _TOP, of ``lo`` is _TOP + _PLOT_H - 1)."""
    return np.rint(_TOP + (hi - np.asarray(v)) / (hi - lo) * (_PLOT_H - 1)).astype(int)


def _axis_labels(img: np.ndarray, lo: float, hi: float, c: int) -> None:
    """Weights on the left (0, 1 and the extremes), channel indices 0 and C-1 below."""
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    grey = (90, 90, 90)
    for level in sorted({lo, 0.0, hi} if lo < 0 else {0.0, 1.0, hi}):
        draw.text((2, int(_y(level, lo, hi)) - 5), f"{level:.2g}", fill=grey)
    bottom = _TOP + _PLOT_H + 1
    draw.text((_LEFT, bottom), "0", fill=grey)
    right = _LEFT + c * _bar_geometry(c)[0]
    draw.text((right, bottom), str(c - 1), fill=grey, anchor="ra")
    img[:] = np.asarray(pil)


def _mark(base: np.ndarray, x0: np.ndarray, channel: int) -> np.ndarray:
    """The chart with the selected channel's bar (and the column behind it) highlighted."""
    bw, gap = _bar_geometry(len(x0))
    out = base.copy()
    cols = slice(x0[channel], x0[channel] + max(bw - gap, 1))
    column = out[_TOP : _TOP + _PLOT_H, cols]
    is_bar = (column == _BAR).all(axis=-1)
    column[~is_bar] = _PICK_BG
    column[is_bar] = _PICK
    return out


def _overlay(
    image: np.ndarray, fmap: torch.Tensor, lo: float, hi: float, alpha: float
) -> np.ndarray:
    """``fmap`` (h x w) upsampled bilinearly to the image, coloured on [lo, hi], blended."""
    size = image.shape[:2]
    up = F.interpolate(fmap[None, None].float(), size=size, mode="bilinear", align_corners=False)
    unit = ((up[0, 0] - lo) / (hi - lo if hi > lo else 1.0)).clamp(0, 1)
    lut = _DIVERGING if lo < 0 else _SEQUENTIAL
    colour = lut[(unit * 255).round().to(torch.uint8).numpy()]
    return (image * (1 - alpha) + colour * alpha).round().astype(np.uint8)


# -- the app ---------------------------------------------------------------------------------
class ChannelExplorer(App, ImageIndex, BlockChoice):
    """Slide through images, blocks and channels of channel attention (SE, CBAM's Mc).

    Top: a bar chart of the C weights s of the chosen image and block (the selected
    channel in orange). Bottom: channel c's input map u_c and the scaled map s_c u_c,
    upsampled bilinearly to the image and overlaid on it with one colour scale shared by
    both (inferno on [0, max] for non-negative maps; coolwarm on [-m, m] otherwise), and
    a line with the block, channel, weight, rank, label and prediction.

    Args:
        model: a network with channel attention that :func:`attnviz.capture` recognises
            (SE blocks, torchvision ``SqueezeExcitation``, CBAM channel gates).
        images: network inputs (N, C, H, W), C = 1 or 3, float.
        labels: optional N true labels (class indices or names).
        class_names: optional names of the classes, indexed by label and prediction.
        mean, std: per-channel normalisation to undo for display (x * std + mean); by
            default the images are shown as they are and must lie in [0, 1].
        device: where the model runs (default: its parameters' device).
        scale: integer upscaling of the image panels (default about 192 pixels wide).

    Raises:
        ValueError: bad shapes, display values outside [0, 1], no channel attention.
        TypeError: integer images.

    The model's train/eval flags are left as they were (the forward passes run in eval
    mode under ``torch.no_grad()``). Display it by leaving it last in a cell; ``.root``
    is the ``VBox``.
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: Sequence[Any] | None = None,
        class_names: Sequence[Any] | None = None,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        device: str | torch.device | None = None,
        scale: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.images = _check_images(images)
        n, _, h, w = self.images.shape
        self._shown = _display_images(self.images, mean, std)
        self.labels = _as_list(labels, "labels", n)
        self.class_names = None if class_names is None else list(class_names)
        param = next(model.parameters(), None)
        self.device = (
            torch.device(device) if device is not None else getattr(param, "device", "cpu")
        )
        self.scale = render._check_scale(max(1, round(192 / max(h, w))) if scale is None else scale)
        self._holding = False
        self._cache: dict[str, Any] = {}
        self._load(0)
        self._build(n)
        self._redraw()

    # -- capture and cache ---------------------------------------------------------------
    def _load(self, index: int) -> None:
        """One forward pass of image ``index``; keep every block's s (C,) and U (C x h x w)."""
        x = self.images[index : index + 1].to(self.device)
        with torch.no_grad(), capture(self.model, kinds="channel", features=True) as rec:
            out = self.model(x)
        blocks = {name: (r.weights[0].float(), r.features[0].float()) for name, r in rec.items()}
        if not blocks:
            raise ValueError("no channel-attention block ran in the forward pass")
        self._cache = {
            "index": index,
            "blocks": blocks,
            "prediction": self._prediction(out),
            "image": render.upscale(self._shown[index], self.scale),
            "charts": {},
        }

    @staticmethod
    def _prediction(out: Any) -> tuple[int, float] | None:
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            return None
        k = int(out[0].argmax())  # of the logits: a softmax can round ties into being
        return k, float(out[0].float().softmax(0)[k])

    def _chart(self, block: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(base bar chart, bar x positions, heights drawn) of the cached image, per block."""
        charts = self._cache["charts"]
        if block not in charts:
            heights = self._cache["blocks"][block][0].double().numpy().copy()
            lo, hi = min(0.0, float(heights.min())), max(1.0, float(heights.max()))
            charts[block] = (*_bar_chart(heights, lo, hi), heights)
        return charts[block]

    # -- widgets -------------------------------------------------------------------------
    def _build(self, n: int) -> None:
        options = self._block_options()
        self._image = widgets.IntSlider(value=0, min=0, max=n - 1, description="image")
        self._block = widgets.Dropdown(options=options, description="block")
        self._channel = widgets.IntSlider(
            value=0, min=0, max=len(self._weights()) - 1, description="channel"
        )
        self._sort = widgets.ToggleButton(value=False, description="sort by weight")
        self._highest = widgets.Button(description="highest")
        self._lowest = widgets.Button(description="lowest")
        self._opacity = widgets.FloatSlider(
            value=0.6, min=0, max=1, step=0.05, description="opacity"
        )
        self._bars_png = widgets.Image(format="png")
        self._before_png = widgets.Image(format="png")
        self._after_png = widgets.Image(format="png")
        self._info = widgets.HTML()
        self.log = widgets.Output()
        self.root = widgets.VBox(
            [
                widgets.HBox([self._image, self._block, self._opacity]),
                widgets.HBox([self._channel, self._sort, self._highest, self._lowest]),
                widgets.HBox([self._bars_png]),
                widgets.HBox([self._before_png, self._after_png]),
                self._info,
                self.log,
            ]
        )
        # stable handles for browser tests and user CSS
        self.root.add_class("attnviz-channel-explorer")
        self._channel.add_class("attnviz-channel")
        self._bars_png.add_class("attnviz-bars")
        self._observe()

    def _observe(self) -> None:
        self._image.observe(self._guard(self._on_image), names="value")
        self._block.observe(self._guard(self._on_block), names="value")
        self._sort.observe(self._guard(self._on_sort), names="value")
        for w in (self._channel, self._opacity):
            w.observe(self._guard(lambda _change: self._redraw()), names="value")
        self._highest.on_click(self._guard(lambda _b: self._jump(highest=True)))
        self._lowest.on_click(self._guard(lambda _b: self._jump(highest=False)))

    def _guard(self, callback: Any) -> Any:
        """Run ``callback`` unless widgets are being set together; errors go to ``log``."""

        def run(arg: Any) -> None:
            if self._holding:
                return
            try:
                callback(arg)
            except Exception:  # shown in the app's Output, where the user is looking
                self.log.append_stderr(traceback.format_exc())

        return run

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        """Set several widgets without a redraw per widget; one redraw at the end."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        self._redraw()

    # -- callbacks -----------------------------------------------------------------------
    def _on_image(self, change: dict) -> None:
        channel = self.channel
        self._load(change["new"])
        with self._hold():
            self._sync_blocks()
            self._channel.max = len(self._weights()) - 1
            self._set_channel(min(channel, self._channel.max))

    def _block_options(self) -> list[tuple[str, str]]:
        return [(f"{k} ({len(s)} ch)", k) for k, (s, _) in self._cache["blocks"].items()]

    def _sync_blocks(self) -> None:
        """Offer the blocks that ran for this image (a model may skip some on some inputs)."""
        options = self._block_options()
        if options != [tuple(o) for o in self._block.options]:
            block = self.block
            self._block.options = options
            if block in self._cache["blocks"]:
                self._block.value = block

    def _on_block(self, change: dict) -> None:
        channel = self._channel_at(self._channel.value, change["old"])
        with self._hold():
            self._channel.max = len(self._weights()) - 1
            self._set_channel(min(channel, self._channel.max))

    def _on_sort(self, change: dict) -> None:
        channel = self._channel_at(self._channel.value, self.block, sort=change["old"])
        with self._hold():
            self._channel.description = "rank" if change["new"] else "channel"
            self._set_channel(channel)

    def _jump(self, highest: bool) -> None:
        w = self._weights()
        self.channel = int(w.argmax() if highest else w.argmin())

    # -- state ---------------------------------------------------------------------------
    def _weights(self, block: str | None = None) -> torch.Tensor:
        return self._cache["blocks"][block or self._block.value][0]

    def _order(self, block: str, sort: bool) -> torch.Tensor:
        """Channels in slider order: by index, or by descending weight (ties by index)."""
        w = self._weights(block)
        if not sort:
            return torch.arange(len(w))
        return torch.sort(w, descending=True, stable=True).indices

    def _channel_at(self, position: int, block: str, sort: bool | None = None) -> int:
        order = self._order(block, self._sort.value if sort is None else sort)
        return int(order[min(position, len(order) - 1)])

    def _set_channel(self, channel: int) -> None:
        order = self._order(self.block, self._sort.value)
        self._channel.value = int((order == channel).nonzero()[0, 0])

    @property
    def channel(self) -> int:
        """The channel shown (0 .. C-1, whatever the sort order); settable."""
        return self._channel_at(self._channel.value, self.block)

    @channel.setter
    def channel(self, value: int) -> None:
        c = len(self._weights())
        if not 0 <= value < c:
            raise ValueError(f"channel must be in [0, {c - 1}] for block {self.block}, got {value}")
        self._set_channel(value)

    def current(self) -> dict[str, Any]:
        """The numbers shown.

        Returns:
            ``index``, ``block``, ``channel``, ``weights`` (the C weights of the bar
            chart, a tensor), ``weight`` (s_c), ``rank`` (1 = highest weight), ``before``
            (u_c, h x w) and ``after`` (s_c u_c), ``scale`` ((low, high) of the shared
            colour scale), ``label`` and ``prediction`` (class index, None when unknown),
            ``probability`` of the prediction.
        """
        block, c, index = self.block, self.channel, self._cache["index"]
        weights, features = self._cache["blocks"][block]
        before = features[c].clone()
        after = before * weights[c]
        rank = int((self._order(block, True) == c).nonzero()[0, 0]) + 1
        pred = self._cache["prediction"]
        return {
            "index": index,
            "block": block,
            "channel": c,
            "weights": weights.clone(),
            "weight": float(weights[c]),
            "rank": rank,
            "before": before,
            "after": after,
            "scale": _shared_scale(before, after),
            "label": None if self.labels is None else self.labels[index],
            "prediction": None if pred is None else pred[0],
            "probability": None if pred is None else pred[1],
        }

    def bar_heights(self) -> torch.Tensor:
        """The heights of the bars drawn in the chart now (float64, C)."""
        return torch.from_numpy(self._chart(self.block)[2].copy())

    # -- drawing -------------------------------------------------------------------------
    def _name(self, label: Any) -> str:
        if (
            self.class_names is not None
            and isinstance(label, int)
            and 0 <= label < len(self.class_names)
        ):
            label = self.class_names[label]
        return html.escape(str(label))

    def _html(self, s: dict) -> str:
        c = len(s["weights"])
        parts = [
            f"<b>{html.escape(s['block'])}</b>",
            f"channel {s['channel']} of {c}",
            f"weight s<sub>c</sub> = {s['weight']:.4f}",
            f"rank {s['rank']} of {c}",
            f"colour scale [{s['scale'][0]:.3g}, {s['scale'][1]:.3g}] (shared)",
        ]
        if s["label"] is not None:
            parts.append(f"label {self._name(s['label'])}")
        if s["prediction"] is not None:
            parts.append(f"prediction {self._name(s['prediction'])} (p = {s['probability']:.2f})")
        return "<span style='font-family:monospace'>" + " &middot; ".join(parts) + "</span>"

    def _redraw(self) -> None:
        s = self.current()
        base, x0, _ = self._chart(s["block"])
        show_png(self._bars_png, render.png_bytes(_mark(base, x0, s["channel"])))
        lo, hi = s["scale"]
        image, alpha = self._cache["image"], self._opacity.value
        show_png(self._before_png, render.png_bytes(_overlay(image, s["before"], lo, hi, alpha)))
        show_png(self._after_png, render.png_bytes(_overlay(image, s["after"], lo, hi, alpha)))
        self._info.value = self._html(s)

    # -- display and clean-up ------------------------------------------------------------
    def _release(self) -> None:
        self._cache = {"blocks": {}}


def _shared_scale(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """[0, max] for non-negative maps, [-m, m] (m = max |value|) otherwise."""
    lo = min(float(before.min()), float(after.min()))
    hi = max(float(before.max()), float(after.max()))
    if lo >= 0:
        return 0.0, hi
    m = max(-lo, hi)
    return -m, m
