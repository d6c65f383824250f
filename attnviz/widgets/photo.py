"""Explain a photo with a pretrained attention network: top-5, Grad-CAM, attention maps.

The photo comes from a :class:`~attnviz.widgets.PhotoPicker` (sample photos or an
upload, no URL). One forward pass per photo records every attention module
(``capture(features=True)``) and draws each as :func:`attnviz.maps.attention_view` does:
a spatial, context or self-attention map as applied, an SE block as its weighted
activation sum_c s_c u_c (Hu et al., eq. 4), where the channels it emphasises fire.
Grad-CAM of the chosen class is computed by the ``grad-cam`` package on demand and
cached per class. Overlays are drawn on the region the network sees, at display
resolution, whatever the photo's size.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch

from .. import maps, render
from ..cam import gradcam
from ..capture import capture
from ..photos import network_view, prepare
from ..running import model_device
from ._base import App
from .upload import PhotoPicker

__all__ = ["PhotoExplainer"]


class PhotoExplainer(App):
    """Pick or upload a photo; see the top-5, Grad-CAM of a chosen class and attention maps.

    Args:
        pre: an :class:`attnviz.zoo.Pretrained` (model, transforms, class names).
        picker: the photo source (default: a :class:`PhotoPicker` over the sample photos).
        display_side: longer side of the pictures, in pixels.
        alpha: overlay opacity.

    ``.current()`` returns what is shown (top-5, target, block, the maps) for tests.
    """

    def __init__(
        self, pre: Any, *, picker: PhotoPicker | None = None, display_side: int = 320,
        alpha: float = 0.5,
    ) -> None:  # fmt: skip
        self.pre = pre
        self.picker = picker if picker is not None else PhotoPicker(preview_size=160)
        self.display_side, self.alpha = display_side, alpha
        self._cams: dict[int, torch.Tensor] = {}
        self._loading = False
        self._target = widgets.Dropdown(description="explain")
        self._block = widgets.Dropdown(description="attention")
        self._cam_png = widgets.Image(format="png")
        self._se_png = widgets.Image(format="png")
        self._info = widgets.HTML()
        self.log = widgets.Output()
        banner = "" if pre.pretrained else (
            "<b style='color:#b00'>Random weights</b>: this network was not loaded with "
            "pretrained weights, so its predictions and maps mean nothing yet."
        )  # fmt: skip
        self.root = widgets.VBox([
            widgets.HTML(banner), self.picker.root,
            widgets.HBox([self._target, self._block]),
            widgets.HBox([self._cam_png, self._se_png]), self._info, self.log,
        ])  # fmt: skip
        self.root.add_class("attnviz-photo-explainer")
        self._target.observe(self._guard(self._redraw_cam), names="value")
        self._block.observe(self._guard(self._redraw_se), names="value")
        self.picker.on_change(self._guard(lambda _image: self._load()))
        if self.picker.image is not None:
            self._load()

    # -- one forward per photo -----------------------------------------------------------
    def _load(self) -> None:
        image = self.picker.image
        model = self.pre.model
        self.x = prepare(image, self.pre.transforms).to(model_device(model))
        with torch.no_grad(), capture(model, features=True) as rec:
            logits = model(self.x)
        self.probs = logits.softmax(1)[0].cpu()
        self.views = maps.attention_views(rec)
        self.view = network_view(image, self.pre.transforms, max_side=self.display_side)
        self._cams = {}
        top = self.probs.topk(5)
        self.top5 = [
            (self.pre.class_names[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())
        ]
        self._loading = True  # option changes below must not redraw half-loaded state
        try:
            self._target.options = [(f"{n} ({p:.1%})", int(i)) for (n, p), i in
                                    zip(self.top5, top.indices.tolist())]  # fmt: skip
            self._target.value = int(top.indices[0])
            names = list(self.views)
            self._block.options = [(f"{n}: {self.views[n][0]}", n) for n in names]
            self._block.value = names[-1] if names else None
        finally:
            self._loading = False
        self._info.value = "<b>top-5</b>: " + ", ".join(
            f"{html.escape(n)} {p:.1%}" for n, p in self.top5
        )
        self._redraw_cam()
        self._redraw_se()

    # -- drawing ----------------------------------------------------------------------------
    def _overlay(self, m: torch.Tensor) -> np.ndarray:
        return render.overlay(self.view, m, alpha=self.alpha)

    def _redraw_cam(self, *_: Any) -> None:
        t = self._target.value
        if t is None or self._loading:
            return
        if t not in self._cams:
            self._cams[t] = gradcam(self.pre.model, self.x, targets=[t])[0]
        self._show(self._cam_png, self._overlay(self._cams[t]))

    def _redraw_se(self, *_: Any) -> None:
        if self._block.value is not None and not self._loading:
            self._show(self._se_png, self._overlay(self.views[self._block.value][1][0]))

    # -- state ------------------------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        t, b = self._target.value, self._block.value
        view = self.views.get(b)
        return {"top5": self.top5, "target": t, "block": b, "gradcam": self._cams.get(t),
                "map": None if view is None else view[1][0],
                "label": None if view is None else view[0]}  # fmt: skip

    def _release(self) -> None:
        self._cams = {}
