"""Browse the channels of a statistics file: the images that excite each one most and least."""

from __future__ import annotations

import html
import os
from typing import Any, ClassVar

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image

from .. import render
from ..stats import DatasetStats, fingerprint
from ._base import App

__all__ = ["ChannelGallery"]


def _check_same_data(stats: DatasetStats, dataset: Any) -> None:
    """Refuse a data set other than the one the statistics were computed on: the top-k
    are data set indices, so another data set would show other images under their
    weights. Compares the size, then the stored fingerprint (files, sizes and labels of an
    image folder or tar shards; else the first and last samples)."""
    stored = stats.meta.get("dataset", {})
    size, expected = stored.get("size"), stored.get("fingerprint")
    here = f"{type(dataset).__name__} {str(getattr(dataset, 'root', '') or '')!r}".rstrip(" '")
    there = f"{stored.get('kind', 'a data set')} {stored.get('root', '')!r}".rstrip(" '")
    if size is not None and len(dataset) != size:
        raise ValueError(
            f"the statistics were computed on {there} of {size} images, this data set "
            f"({here}) has {len(dataset)}: pass the same data set (same files, same order)"
        )
    if expected:
        seen = fingerprint(dataset)
        if seen != expected:
            raise ValueError(
                f"the statistics were computed on another data set: {there} (fingerprint "
                f"{expected[:12]}) is not {here} (fingerprint {seen[:12]}), though both "
                f"hold {len(dataset)} images. Pass the data set the statistics were "
                "computed on (same files, sizes, labels and order)"
            )


class ChannelGallery(App):
    """Pick a block and a channel of a :func:`attnviz.stats.dataset_stats` result; see the
    top-k images with the highest weight for that channel, the k with the lowest, and the
    channel's mean weight for every class (bars).

    Args:
        stats: a :class:`~attnviz.stats.DatasetStats` or the path of a statistics file.
        dataset: the data set the statistics were computed on (``dataset[i]`` is an image
            or ``(image, label)``; image tensors in [0, 1] or PIL images): the gallery
            reads only the images it shows.
        side: pixels per image tile.
        k: images per row (at most the file's top-k).
        block: the channel block shown first (default the file's last channel block).

    ``.current()`` gives the block, channel and the data set indices shown.
    ``controls``: ``block`` (dropdown), ``channel`` (slider). ``panels``: ``top``,
    ``bottom``, ``means``.

    Raises:
        ValueError: no channel block in the file, a data set other than the one the
            statistics were computed on (another size or fingerprint: both named), or a
            ``block`` the file does not hold.
    """

    _CONTROLS: ClassVar[dict[str, str]] = {"block": "_block", "channel": "_channel"}

    def __init__(
        self,
        stats: DatasetStats | str | os.PathLike,
        dataset: Any,
        *,
        side: int = 72,
        k: int | None = None,
        block: str | None = None,
    ) -> None:
        self.stats = stats if isinstance(stats, DatasetStats) else DatasetStats.load(stats)
        blocks = self.stats.channel_blocks
        if not blocks:
            raise ValueError("the statistics file holds no channel-attention block")
        if block is not None and block not in blocks:
            raise ValueError(f"block must be one of {blocks}, got {block!r}")
        _check_same_data(self.stats, dataset)
        self.dataset, self.side = dataset, side
        self._class_means = self.stats.channel_stats().mean  # block -> K x C, for the bars
        self.k = min(k or 10**9, len(self.stats.blocks[blocks[0]]["top_index"]))
        self.log = widgets.Output()
        self._block = widgets.Dropdown(
            options=blocks, value=blocks[-1] if block is None else block, description="block"
        )
        self._channel = widgets.IntSlider(
            0, 0, self._channels() - 1, description="channel", continuous_update=False
        )
        self._top_png = widgets.Image(format="png")
        self._bottom_png = widgets.Image(format="png")
        self._means_png = widgets.Image(format="png")
        self._info = widgets.HTML()
        self._block.observe(self._guard(lambda _: self._new_block()), "value")
        self._channel.observe(self._guard(lambda _: self._redraw()), "value")
        self.root = widgets.VBox(
            [
                widgets.HBox([self._block, self._channel]),
                widgets.HTML("<b>highest weight</b>"),
                self._top_png,
                widgets.HTML("<b>lowest weight</b>"),
                self._bottom_png,
                widgets.HTML("<b>mean weight per class</b>"),
                self._means_png,
                self._info,
                self.log,
            ]
        )
        self.root.add_class("attnviz-channel-gallery")
        self._channel.add_class("attnviz-gallery-channel")
        self._top_png.add_class("attnviz-gallery-top")
        self._redraw()

    def _channels(self) -> int:
        return int(self.stats.blocks[self._block.value]["mean"].shape[1])

    @property
    def block(self) -> str:
        """The channel block shown (a block of the statistics file); settable."""
        return self._block.value

    @block.setter
    def block(self, name: str) -> None:
        if name not in self.stats.channel_blocks:
            raise ValueError(f"block must be one of {self.stats.channel_blocks}, got {name!r}")
        self._block.value = name

    @property
    def channel(self) -> int:
        """The channel shown (0 .. C-1 of the block); settable."""
        return self._channel.value

    @channel.setter
    def channel(self, c: int) -> None:
        if not 0 <= c < self._channels():
            raise ValueError(f"channel must be in [0, {self._channels() - 1}], got {c}")
        self._channel.value = c

    def _new_block(self) -> None:
        self._channel.max = self._channels() - 1
        self._redraw()

    def _tile(self, i: int) -> np.ndarray:
        item = self.dataset[int(i)]
        image = item[0] if isinstance(item, (tuple, list)) else item
        arr = render.to_uint8_rgb(image.clamp(0, 1) if isinstance(image, torch.Tensor) else image)
        return np.asarray(Image.fromarray(arr).resize((self.side, self.side)))

    def current(self) -> dict[str, Any]:
        top_values, top = self.stats.top(self.block, self.channel)
        low_values, low = self.stats.top(self.block, self.channel, lowest=True)
        k = self.k
        return {
            "block": self.block,
            "channel": self.channel,
            "top": top[:k].tolist(),
            "top_weights": top_values[:k].tolist(),
            "bottom": low[:k].tolist(),
            "bottom_weights": low_values[:k].tolist(),
        }

    def _redraw(self) -> None:
        now = self.current()
        for key, widget in (("top", self._top_png), ("bottom", self._bottom_png)):
            self._show(widget, render.montage([self._tile(i) for i in now[key]], ncols=self.k))
        means = self._class_means[self.block][:, self.channel]
        chart, _ = render.bar_chart(np.nan_to_num(means.numpy(), nan=0.0), 0.0, 1.0)
        self._show(self._means_png, chart)
        names = self.stats.class_names
        best = int(torch.nan_to_num(means, nan=-1.0).argmax())
        self._info.value = html.escape(
            f"{self.block}, channel {self.channel}: highest weights "
            f"{', '.join(f'{w:.3f}' for w in now['top_weights'][:5])}; lowest "
            f"{', '.join(f'{w:.3f}' for w in now['bottom_weights'][:5])}; the class with the "
            f"highest mean weight: {names[best]} ({float(means[best]):.3f}). Bars: classes "
            f"0 to {len(names) - 1} ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
        )
