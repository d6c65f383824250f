"""Explain a photo with a pretrained attention network: top-5, Grad-CAM, attention maps.

The photo comes from a :class:`~attnviz.widgets.PhotoPicker` (sample photos or an
upload, no URL); the network from a :class:`ModelPicker` (a family of
:data:`attnviz.zoo.FAMILIES`, then one of its models) or a given
:class:`~attnviz.zoo.Pretrained`. One forward pass per photo records every attention
module (``capture(features=True)``) and draws each as :func:`attnviz.maps.attention_view`
does: a spatial, context or self-attention map as applied, a vision transformer's
class-token attention (per head or averaged) and its attention rollout, an SE block as its
weighted activation sum_c s_c u_c (Hu et al., eq. 4), and branch attention (SKNet,
ResNeSt) as the branch each channel chose. Grad-CAM of the chosen class is computed by the
``grad-cam`` package on demand and cached per class. Overlays are drawn on the region the
network sees, at display resolution, whatever the photo's size.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import ipywidgets as widgets

from .. import maps, render
from ..explain import explain
from ..zoo import FAMILIES, Family, Pretrained, load_or_random, pretrained
from ._base import App
from .upload import PhotoPicker

__all__ = ["ModelPicker", "PhotoExplainer"]

_RANDOM = (
    "<b style='color:#b00'>Random weights</b>: {name} was not loaded with pretrained "
    "weights ({why}), so its predictions and maps mean nothing yet."
)


class ModelPicker:
    """Choose a family of attention networks and one of its models; loads it.

    Models load through :func:`attnviz.zoo.pretrained` (torchvision's weights API, timm's
    pretrained loading, the official CBAM file), which download once and cache on disk.
    When trained weights cannot be had (offline and not cached, no file, or
    ``weights=None``), the model loads with random weights and :attr:`status` says so.

    Args:
        families: name -> :class:`~attnviz.zoo.Family` (default :data:`~attnviz.zoo.FAMILIES`).
        weights: ``"DEFAULT"`` (trained weights), ``None`` (random, no download), or a
            mapping model name -> weights (a file path, ...) for :func:`~attnviz.zoo.pretrained`.
        family, model: what to start with (default: the first family, its first model).
        loader: the loading function (default :func:`~attnviz.zoo.pretrained`).

    Attributes:
        pre: the loaded :class:`~attnviz.zoo.Pretrained` (None until one loaded).
        root: the widget.
    """

    def __init__(
        self,
        families: Mapping[str, Family] = FAMILIES,
        *,
        weights: str | Mapping[str, Any] | None = "DEFAULT",
        family: str | None = None,
        model: str | None = None,
        loader: Callable[..., Pretrained] = pretrained,
    ) -> None:
        if not families:
            raise ValueError("families must name at least one family of models")
        self.families, self.weights, self.loader = dict(families), weights, loader
        family = family if family is not None else next(iter(self.families))
        if family not in self.families:
            raise ValueError(f"no family {family!r}; families: {list(self.families)}")
        self.pre: Pretrained | None = None
        self.status = ""
        self._callbacks: list[Callable[[Pretrained], None]] = []
        self._family = widgets.Dropdown(
            options=list(self.families), value=family, description="family"
        )
        self._model = widgets.Dropdown(options=self.families[family].models, description="model")
        self._model.layout.width = "28em"
        if model is not None:
            if model not in self.families[family].models:
                raise ValueError(
                    f"{model!r} is not a model of {family}: {list(self.families[family].models)}"
                )
            self._model.value = model
        self._about = widgets.HTML()
        self.root = widgets.VBox([widgets.HBox([self._family, self._model]), self._about])
        self.root.add_class("attnviz-model-picker")
        self._family.add_class("attnviz-family")
        self._family.observe(self._on_family, names="value")
        self._model.observe(lambda _c: self._load(), names="value")
        self._load()

    @property
    def family(self) -> str:
        return self._family.value

    @property
    def model(self) -> str:
        return self._model.value

    def select(self, family: str, model: str | None = None) -> None:
        """Switch to ``family`` (and ``model``, default its first); loads it."""
        if family not in self.families:
            raise ValueError(f"no family {family!r}; families: {list(self.families)}")
        models = self.families[family].models
        if model is not None and model not in models:
            raise ValueError(f"{model!r} is not a model of {family}: {list(models)}")
        if family != self.family:
            self._family.value = family  # loads its first model
        if model is not None and model != self.model:
            self._model.value = model

    def on_change(self, callback: Callable[[Pretrained], None]) -> None:
        """Call ``callback(pre)`` whenever another model has loaded."""
        self._callbacks.append(callback)

    def _on_family(self, change: dict) -> None:
        models = self.families[change["new"]].models
        if tuple(self._model.options) != tuple(models):
            self._model.options = models  # selects the first, which loads it
        else:
            self._load()

    def _weights_for(self, name: str) -> Any:
        if isinstance(self.weights, Mapping):
            return self.weights.get(name, "DEFAULT")
        return self.weights

    def _load(self) -> None:
        name = self.model
        if name is None:
            return
        try:
            pre, why = load_or_random(name, self._weights_for(name), loader=self.loader)
        except ImportError as e:  # e.g. timm missing: nothing to load at all
            self.status = f"<b style='color:#b00'>{html.escape(str(e))}</b>"
            self._about.value = self.status
            return
        fam = self.families[self.family]
        self.status = (
            ""
            if pre.pretrained
            else _RANDOM.format(
                name=html.escape(name), why=html.escape((why or "weights=None")[:300])
            )
        )
        self._about.value = f"<i>{html.escape(fam.attention)}</i>; shown: {html.escape(fam.shows)}"
        self.pre = pre
        for callback in self._callbacks:
            callback(pre)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.root._repr_mimebundle_(**kwargs)


class PhotoExplainer(App):
    """Pick or upload a photo; see the top-5, Grad-CAM of a chosen class and attention maps.

    Args:
        pre: an :class:`attnviz.zoo.Pretrained` (model, transforms, class names), or a
            :class:`ModelPicker` to switch families and models in place.
        picker: the photo source (default: a :class:`PhotoPicker` over the sample photos).
        display_side: longer side of the pictures, in pixels.
        alpha: overlay opacity.

    A network without classifier (DINO) shows its attention only. ``.current()`` returns
    what is shown (top-5, target, block, head, the maps) for tests.

    ``controls``: ``target`` (the class Grad-CAM explains), ``block`` (the attention
    shown) and ``head`` (dropdowns). ``panels``: ``cam``, ``se`` (the attention map).
    """

    _CONTROLS: ClassVar[dict[str, str]] = {
        "target": "_target",
        "block": "_block",
        "head": "_head",
    }

    def __init__(
        self,
        pre: Pretrained | ModelPicker,
        *,
        picker: PhotoPicker | None = None,
        display_side: int = 320,
        alpha: float = 0.5,
    ) -> None:
        self.models = pre if isinstance(pre, ModelPicker) else None
        if self.models is not None and self.models.pre is None:
            raise ValueError(f"the model picker holds no model: {self.models.status}")
        self.pre: Pretrained = self.models.pre if self.models is not None else pre  # type: ignore[assignment]
        self.picker = picker if picker is not None else PhotoPicker(preview_size=160)
        self.display_side, self.alpha = display_side, alpha
        self._loading = False
        self._target = widgets.Dropdown(description="explain")
        self._block = widgets.Dropdown(description="attention")
        self._block.layout.width = "34em"
        self._head = widgets.Dropdown(description="head", options=[("mean", None)])
        self._cam_png = widgets.Image(format="png")
        self._se_png = widgets.Image(format="png")
        self._banner = widgets.HTML()
        self._info = widgets.HTML()
        self.log = widgets.Output()
        top = [self.models.root] if self.models is not None else []
        self.root = widgets.VBox(
            [
                *top,
                self._banner,
                self.picker.root,
                widgets.HBox([self._target, self._block, self._head]),
                widgets.HBox([self._cam_png, self._se_png]),
                self._info,
                self.log,
            ]
        )
        self.root.add_class("attnviz-photo-explainer")
        self._cam_png.add_class("attnviz-photo-cam")
        self._se_png.add_class("attnviz-photo-attention")
        self._head.add_class("attnviz-photo-head")
        self._target.observe(self._guard(self._redraw_cam), names="value")
        self._block.observe(self._guard(self._on_block), names="value")
        self._head.observe(self._guard(self._redraw_se), names="value")
        self.picker.on_change(self._guard(lambda _image: self._load()))
        if self.models is not None:
            self.models.on_change(self._guard(self._on_model))
        self._set_banner()
        if self.picker.image is not None:
            self._load()

    @property
    def banner(self) -> str:
        """The line above the pictures: which weights the model has (HTML)."""
        return str(self._banner.value)

    def _set_banner(self) -> None:
        if self.models is not None:
            self._banner.value = self.models.status
        else:
            self._banner.value = (
                ""
                if self.pre.pretrained
                else _RANDOM.format(name=html.escape(self.pre.name), why="none given")
            )

    def _on_model(self, pre: Pretrained) -> None:
        self.pre = pre
        self._set_banner()
        if self.picker.image is not None:
            self._load()

    # -- one forward per photo -----------------------------------------------------------
    def _load(self) -> None:
        self.ex = explain(self.pre, self.picker.image, display_side=self.display_side)
        top = self.ex.top(5)
        self.top5 = [(name, p) for _, name, p in top]
        self._loading = True  # option changes below must not redraw half-loaded state
        try:
            self._target.options = [(f"{n} ({p:.1%})", i) for i, n, p in top]
            self._target.value = top[0][0] if top else None
            self._target.disabled = not top
            labels = {n: v[0] for n, v in self.ex.views.items()}
            labels.update({n: "branch choice per channel" for n in self.ex.branches})
            self._block.options = [(f"{n}: {labels[n]}", n) for n in self.ex.blocks]
            self._block.value = self.ex.default_block
            self._set_heads()
        finally:
            self._loading = False
        if top:
            self._info.value = "<b>top-5</b>: " + ", ".join(
                f"{html.escape(n)} {p:.1%}" for n, p in self.top5
            )
        else:
            self._info.value = (
                f"{html.escape(self.pre.name)} has no classifier (a backbone): "
                "attention only, no predictions or Grad-CAM"
            )
        self._redraw_cam()
        self._redraw_se()

    def _set_heads(self) -> None:
        block = self._block.value
        heads = self.ex.heads(block) if block is not None and block != maps.ROLLOUT else 1
        options = [("mean", None)] + [(f"head {h}", h) for h in range(heads if heads > 1 else 0)]
        if [tuple(o) for o in self._head.options] != options:
            self._head.options = options
            self._head.value = None
        self._head.disabled = len(options) == 1

    def _on_block(self, *_: Any) -> None:
        if self._loading:
            return
        self._loading = True
        try:
            self._set_heads()
        finally:
            self._loading = False
        self._redraw_se()

    # -- drawing ----------------------------------------------------------------------------
    def _redraw_cam(self, *_: Any) -> None:
        t = self._target.value
        if self._loading:
            return
        if t is None:
            self._show(self._cam_png, self.ex.view)
            return
        self._show(
            self._cam_png, render.overlay(self.ex.view, self.ex.gradcam(t), alpha=self.alpha)
        )

    def _redraw_se(self, *_: Any) -> None:
        if self._block.value is None or self._loading:
            return
        _label, rgb = self.ex.picture(self._block.value, self._head.value, alpha=self.alpha)
        self._show(self._se_png, rgb)

    # -- state ------------------------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        t, b, head = self._target.value, self._block.value, self._head.value
        label, m = self.ex.attention(b, head) if b is not None else (None, None)
        return {
            "model": self.pre.name,
            "pretrained": self.pre.pretrained,
            "top5": self.top5,
            "target": t,
            "block": b,
            "head": head,
            "gradcam": self.ex.cams.get(t) if t is not None else None,
            "map": m,
            "label": label,
        }

    def select(
        self, *, block: str | None = None, head: int | None = None, target: int | None = None
    ) -> None:
        """Show another block, head or class (each must be among the dropdown's options)."""
        for wid, value, what in ((self._block, block, "block"), (self._target, target, "target")):
            if value is not None:
                allowed = [v for _, v in wid.options]
                if value not in allowed:
                    raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
                wid.value = value
        allowed = [v for _, v in self._head.options]
        if head not in allowed:
            raise ValueError(f"head must be one of {allowed}, got {head!r}")
        self._head.value = head

    def _release(self) -> None:
        if hasattr(self, "ex"):
            self.ex.cams.clear()
