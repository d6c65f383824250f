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

import html
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import ipywidgets as widgets
import numpy as np
import torch
from torch import nn

from .. import render
from ..capture import capture
from ..records import ChannelRecord
from ._base import (
    App,
    BlockChoice,
    ImageIndex,
    Opacity,
    as_list,
    check_images,
    display_images,
    redraw,
)

__all__ = ["ChannelExplorer"]


# -- the app ---------------------------------------------------------------------------------
class ChannelExplorer(App, Opacity, ImageIndex, BlockChoice):
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

    ``controls``: ``image``, ``block``, ``opacity`` (sliders and dropdown), ``channel``
    (the slider; its ``description`` reads "rank" and its value is a rank while sorted),
    ``sort`` (toggle), ``highest`` and ``lowest`` (buttons). ``panels``: ``bars``,
    ``before``, ``after``.
    """

    _CONTROLS: ClassVar[dict[str, str]] = {
        "image": "_image",
        "block": "_block",
        "opacity": "_opacity",
        "channel": "_channel",
        "sort": "_sort",
        "highest": "_highest",
        "lowest": "_lowest",
    }
    _EXPORT: ClassVar[tuple[str, ...]] = ("image", "block", "channel")

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
        self.images = check_images(images)
        n, _, h, w = self.images.shape
        self._shown = display_images(self.images, mean, std)
        self.labels = as_list(labels, "labels", n)
        self.class_names = None if class_names is None else list(class_names)
        param = next(model.parameters(), None)
        self.device = (
            torch.device(device) if device is not None else getattr(param, "device", "cpu")
        )
        self.scale = render.check_scale(max(1, round(192 / max(h, w))) if scale is None else scale)
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
        records = {name: cast(ChannelRecord, r) for name, r in rec.items()}  # kinds="channel"
        blocks = {
            name: (r.weights[0].float(), r.features[0].float()) for name, r in records.items()
        }
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
            charts[block] = (*render.bar_chart(heights, lo, hi), heights)
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

    @redraw
    def _redraw(self) -> None:
        s = self.current()
        base, x0, _ = self._chart(s["block"])
        self._show(self._bars_png, render.mark_bar(base, x0, s["channel"]))
        lo, hi = s["scale"]
        image, alpha = self._cache["image"], self._opacity.value
        cmap = "coolwarm" if lo < 0 else "inferno"
        for png, fmap in ((self._before_png, s["before"]), (self._after_png, s["after"])):
            shown = render.overlay(image, fmap, alpha=alpha, cmap=cmap, vmin=lo, vmax=hi)
            self._show(png, shown)
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
