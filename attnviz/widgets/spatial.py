"""Explore spatial attention image by image: where CBAM looks, beside where Grad-CAM says.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018: each block's spatial
gate Ms = sigmoid(f7x7([AvgPool_c(F'); MaxPool_c(F')])) (eq. 3) re-weights every position
of the block's feature map, after the channel gate Mc (eq. 2) has re-weighted its
channels. The paper compares networks by Grad-CAM (Selvaraju et al., ICCV 2017) maps of
the last block and the target class's softmax score P (Fig. 4).

``SpatialExplorer`` shows, for one image and one CBAM block, Ms upsampled (stride-aligned)
and overlaid on the image, the same block's channel weights Mc as a bar chart, the
prediction with P, and the Grad-CAM map of a chosen class on a chosen layer (computed by
the grad-cam package through :func:`attnviz.cam.gradcam`). An overview mode shows every
block's Ms for a row of images at once (a blocks x images grid).

One forward pass per new image (under ``capture``) fills a cache of every block's Ms and
Mc and the class probabilities; each Grad-CAM is computed when first shown and cached per
(image, target class, layer). Moving a slider re-renders from the caches and updates the
PNG bytes of the same ``Image`` widgets. Built only from core ipywidgets 8 widgets.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .. import render
from .._compat import renamed_kwargs
from ..cam import default_target_layer, gradcam, resolve_layer
from ..capture import capture
from ..records import ChannelRecord, SpatialRecord
from ._base import App, ImageIndex, Opacity, as_list, check_images, display_images, redraw
from .pointer import PointerView

__all__ = ["SpatialExplorer"]

#: colormaps offered (matplotlib names)
COLORMAPS = ("jet", "inferno", "viridis", "magma", "turbo", "gray")
_PREDICTED = -1  # the target dropdown's value for "the predicted class"
_RANGES = {"per_map": {}, "fixed": {"vmin": 0.0, "vmax": 1.0}}


def _short(block: str) -> str:
    """``layer2.0.attention.spatial_gate`` -> ``layer2.0``: a row label for the overview."""
    for suffix in (".spatial_gate", ".attention"):
        if block.endswith(suffix) and len(block) > len(suffix):
            block = block[: -len(suffix)]
    return block


def _note(text: str, width: int = 200, height: int = 40) -> np.ndarray:
    """A small white image saying ``text`` (a panel with nothing to show)."""
    pil = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(pil).text((4, 4), text, fill=(90, 90, 90))
    return np.asarray(pil)


class SpatialExplorer(App, Opacity, ImageIndex):
    """Slide through images and CBAM blocks; compare the spatial gate Ms with Grad-CAM.

    Single mode: Ms of the chosen block over the image (colormap, opacity and range
    chosen in the app; the range is stated under the pictures), the block's channel
    weights Mc as bars, the Grad-CAM map of the target class on ``target_layer`` over the
    image, and a line with prediction, P, label and target. Overview mode: Ms of every
    block (rows) for a row of ``overview_count`` images around the chosen one (columns),
    drawn by :func:`attnviz.render.overlay_grid`.

    Args:
        model: a classifier (N x K logits) with CBAM, or any spatial attention that
            :func:`attnviz.capture` recognises.
        images: network inputs (N, C, H, W), C = 1 or 3, float.
        labels: optional N true labels (class indices or names).
        class_names: optional names of the classes, indexed by label and prediction.
        mean, std: per-channel normalisation to undo for display (x * std + mean); by
            default the images are shown as they are and must lie in [0, 1].
        target_layer: the layer Grad-CAM explains (module or name); default
            :func:`attnviz.cam.default_target_layer` (``layer4[-1]`` for ResNets).
        device: where the model runs (default: its parameters' device).
        scale: integer upscaling of the single-mode panels (default about 192 pixels wide).
        overview_count: images per overview row.

    Raises:
        ValueError: bad shapes, display values outside [0, 1], no spatial attention, a
            model whose output is not N x K logits, an unknown ``target_layer``.
        TypeError: integer images, a model that is not an ``nn.Module``.

    Every module's train/eval flag, every parameter's ``requires_grad`` and ``.grad`` are
    left as they were (forward passes run under ``capture`` in eval mode without
    gradients; Grad-CAM restores everything). Display it by leaving it last in a cell.

    Attributes:
        scale: integer upscaling of the single-mode panels.
        grid_scale: integer upscaling of each image of the overview grid.

    ``controls``: ``mode`` (single or overview), ``image``, ``block``, ``target``,
    ``cmap`` (colours), ``range`` (per-map or fixed [0, 1]), ``opacity``. ``panels``:
    ``cbam`` (Ms over the image), ``cam`` (Grad-CAM), ``gate`` (Mc's bars) in single mode,
    ``grid`` in overview mode (see :meth:`visible_pictures`).
    """

    _CONTROLS: ClassVar[dict[str, str]] = {
        "mode": "_mode",
        "image": "_image",
        "block": "_block",
        "target": "_target",
        "cmap": "_cmap",
        "range": "_range",
        "opacity": "_opacity",
    }

    @renamed_kwargs(cam_layer="target_layer")
    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: Sequence[Any] | None = None,
        class_names: Sequence[Any] | None = None,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        target_layer: str | nn.Module | None = None,
        device: str | torch.device | None = None,
        scale: int | None = None,
        overview_count: int = 6,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(overview_count, bool) or not isinstance(overview_count, int):
            raise ValueError(f"overview_count must be a positive int, got {overview_count!r}")
        if overview_count < 1:
            raise ValueError(f"overview_count must be a positive int, got {overview_count!r}")
        self.model = model
        self.images = check_images(images)
        n, _, h, w = self.images.shape
        self._shown = display_images(self.images, mean, std)
        self.labels = as_list(labels, "labels", n)
        self.class_names = None if class_names is None else list(class_names)
        layer = (
            default_target_layer(model)
            if target_layer is None
            else resolve_layer(model, target_layer)
        )
        self.target_layer = next(name for name, m in model.named_modules() if m is layer)
        self._layer = layer
        param = next(model.parameters(), None)
        self.device = (
            torch.device(device) if device is not None else getattr(param, "device", "cpu")
        )
        self.scale = render.check_scale(max(1, round(192 / max(h, w))) if scale is None else scale)
        self.grid_scale = max(1, round(96 / max(h, w)))
        self.overview_count = min(overview_count, n)
        self._forwards: dict[int, dict[str, Any]] = {}
        self._cams: dict[tuple[int, int, str], torch.Tensor] = {}
        self._charts: dict[tuple[int, str | None], np.ndarray] = {}
        self._forward([0])
        self._blocks = list(self._forwards[0]["maps"])
        self._build(n)
        self._redraw()

    # -- forward passes and caches --------------------------------------------------------
    def _forward(self, indices: Sequence[int]) -> None:
        """One forward pass of the images not cached yet; keep every block's Ms, Mc and P."""
        todo = [i for i in indices if i not in self._forwards]
        if not todo:
            return
        x = self.images[todo].to(self.device)
        with torch.no_grad(), capture(self.model, kinds=("spatial", "channel")) as rec:
            out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(todo):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model must return N x K class logits, got {shape}")
        spatial = {k: cast(SpatialRecord, r) for k, r in rec.items() if r.kind == "spatial"}
        if not spatial:
            raise ValueError(
                f"{type(self.model).__name__} ran no spatial attention (CBAM's spatial gate); "
                "SpatialExplorer shows spatial maps, ChannelExplorer shows channel weights"
            )
        channel = {k: cast(ChannelRecord, r) for k, r in rec.items() if r.kind == "channel"}
        probs = out.detach().float().softmax(dim=1).cpu()
        for j, i in enumerate(todo):
            self._forwards[i] = {
                "maps": {k: r.map[j].float() for k, r in spatial.items()},
                "weights": {k: r.weights[j].float() for k, r in channel.items()},
                "probs": probs[j],
                "image": render.upscale(self._shown[i], self.scale),
            }

    def _gradcam(self, index: int, target: int) -> torch.Tensor:
        """Grad-CAM of one image for one class on ``target_layer``, computed once."""
        key = (index, target, self.target_layer)
        if key not in self._cams:
            x = self.images[index : index + 1]
            self._cams[key] = gradcam(self.model, x, self._layer, [target])[0]
        return self._cams[key]

    def _channel_block(self, block: str) -> str | None:
        """The channel gate of the same attention module as spatial ``block`` (CBAM's Mc)."""
        parent = block.rsplit(".", 1)[0] if "." in block else ""
        for name in self._forwards[self.index]["weights"]:
            if (name.rsplit(".", 1)[0] if "." in name else "") == parent:
                return name
        return None

    def _chart(self, index: int, block: str | None) -> np.ndarray:
        key = (index, block)
        if key not in self._charts:
            if block is None:
                self._charts[key] = _note("no channel gate in this block")
            else:
                heights = self._forwards[index]["weights"][block].double().numpy().copy()
                lo, hi = min(0.0, float(heights.min())), max(1.0, float(heights.max()))
                self._charts[key] = render.bar_chart(heights, lo, hi)[0]
        return self._charts[key]

    # -- widgets ---------------------------------------------------------------------------
    def _build(self, n: int) -> None:
        k = len(self._forwards[0]["probs"])
        targets = [("predicted", _PREDICTED)] + [(f"{c}: {self._name(c)}", c) for c in range(k)]
        self._mode = widgets.ToggleButtons(options=["single", "overview"], value="single")
        self._image = widgets.IntSlider(value=0, min=0, max=n - 1, description="image")
        self._block = widgets.Dropdown(
            options=[(_short(b), b) for b in self._blocks],
            value=self._blocks[-1],
            description="block",
        )
        self._target = widgets.Dropdown(options=targets, value=_PREDICTED, description="target")
        self._cmap = widgets.Dropdown(options=list(COLORMAPS), value="jet", description="colours")
        self._range = widgets.Dropdown(
            options=[("per-map", "per_map"), ("fixed [0, 1]", "fixed")], description="range"
        )
        self._opacity = widgets.FloatSlider(
            value=0.5, min=0, max=1, step=0.05, description="opacity"
        )
        self._cbam_png = PointerView(mode="png", scale=self.scale)
        self._gate_png = widgets.Image(format="png")
        self._cam_png = widgets.Image(format="png")
        self._grid_png = widgets.Image(format="png")
        self._info = widgets.HTML()
        self.log = widgets.Output()
        self._single = widgets.HBox([self._cbam_png, self._cam_png, self._gate_png])
        self._overview = widgets.HBox([self._grid_png], layout=widgets.Layout(display="none"))
        self.root = widgets.VBox(
            [
                widgets.HBox([self._mode, self._image]),
                widgets.HBox([self._block, self._target]),
                widgets.HBox([self._cmap, self._range, self._opacity]),
                self._single,
                self._overview,
                self._info,
                self.log,
            ]
        )
        # stable handles for browser tests and user CSS
        self.root.add_class("attnviz-spatial-explorer")
        self._image.add_class("attnviz-image")
        self._cbam_png.add_class("attnviz-cbam")
        self._cbam_png.observe(self._guard(lambda _c: self._redraw()), names=["hover", "click"])
        self._image.observe(self._guard(self._on_image), names="value")
        self._mode.observe(self._guard(self._on_mode), names="value")
        for w in (self._block, self._target, self._cmap, self._range, self._opacity):
            w.observe(self._guard(lambda _change: self._redraw()), names="value")

    def _on_image(self, change: dict) -> None:
        self._forward(self._overview_indices() if self.mode == "overview" else [change["new"]])
        self._redraw()

    def _on_mode(self, change: dict) -> None:
        single = change["new"] == "single"
        self._single.layout.display = None if single else "none"
        self._overview.layout.display = "none" if single else None
        if not single:
            self._forward(self._overview_indices())
        self._redraw()

    # -- state -----------------------------------------------------------------------------
    @property
    def block(self) -> str:
        """The spatial-attention record shown (e.g. ``layer3.0.attention.spatial_gate``)."""
        return self._block.value

    @block.setter
    def block(self, name: str) -> None:
        if name not in self._blocks:
            raise ValueError(f"block must be one of {self._blocks}, got {name!r}")
        self._block.value = name

    @property
    def mode(self) -> str:
        """``"single"`` or ``"overview"``; settable."""
        return self._mode.value

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in ("single", "overview"):
            raise ValueError(f"mode must be 'single' or 'overview', got {value!r}")
        self._mode.value = value

    @property
    def target(self) -> int | None:
        """The class Grad-CAM explains; None follows the prediction. Settable."""
        return None if self._target.value == _PREDICTED else self._target.value

    @target.setter
    def target(self, value: int | None) -> None:
        k = len(self._forwards[self.index]["probs"])
        if value is not None and not (isinstance(value, int) and 0 <= value < k):
            raise ValueError(f"target must be None or a class in [0, {k - 1}], got {value!r}")
        self._target.value = _PREDICTED if value is None else value

    def _overview_indices(self) -> list[int]:
        """``overview_count`` consecutive images starting at the chosen one (or ending at N)."""
        n = len(self.images)
        start = min(self.index, n - self.overview_count)
        return list(range(start, start + self.overview_count))

    def _range_kwargs(self) -> dict[str, float]:
        return dict(_RANGES[self._range.value])

    def current(self) -> dict[str, Any]:
        """The numbers shown.

        Returns:
            ``index``, ``block``, ``mode``, ``map`` (Ms of the image and block, h x w),
            ``range`` (the caption of its normalisation, e.g. ``"per-map"``),
            ``channel_block`` and ``channel_weights`` (Mc, C; None without a channel
            gate), ``label``, ``prediction`` and ``probability`` (P of the prediction),
            ``target`` (the class Grad-CAM explains) and ``target_probability``,
            ``target_layer``, ``cmap``, ``opacity``; in single mode ``gradcam`` (H x W in
            [0, 1], grad-cam's per-image scaling); in overview mode ``overview``
            (``indices``, ``blocks``, ``maps`` rows of h x w maps, ``row_labels``,
            ``col_labels``) exactly as drawn.
        """
        index, block = self.index, self.block
        f = self._forwards[index]
        probs = f["probs"]
        prediction = int(probs.argmax())
        target = prediction if self.target is None else self.target
        channel_block = self._channel_block(block)
        state = {
            "index": index,
            "block": block,
            "mode": self.mode,
            "map": f["maps"][block].clone(),
            "range": render.overlay_info(f["maps"][block], **self._norm())["caption"],
            "channel_block": channel_block,
            "channel_weights": None if channel_block is None else f["weights"][channel_block],
            "label": None if self.labels is None else self.labels[index],
            "prediction": prediction,
            "probability": float(probs[prediction]),
            "target": target,
            "target_probability": float(probs[target]),
            "target_layer": self.target_layer,
            "cmap": self._cmap.value,
            "opacity": self._opacity.value,
        }
        if self.mode == "single":
            state["gradcam"] = self._gradcam(index, target).clone()
        else:
            state["overview"] = self._overview_spec()
        return state

    def _norm(self) -> dict[str, Any]:
        return {"normalize": "per_map", **self._range_kwargs()}

    def _overview_spec(self) -> dict[str, Any]:
        indices = self._overview_indices()
        self._forward(indices)
        cols = []
        for i in indices:
            probs = self._forwards[i]["probs"]
            k = int(probs.argmax())
            cols.append(f"#{i}: {self._name(k)}, P={float(probs[k]):.2f}")
        return {
            "indices": indices,
            "blocks": list(self._blocks),
            "maps": [[self._forwards[i]["maps"][b] for i in indices] for b in self._blocks],
            "row_labels": [_short(b) for b in self._blocks],
            "col_labels": cols,
        }

    # -- drawing ---------------------------------------------------------------------------
    def _name(self, label: Any) -> str:
        if (
            self.class_names is not None
            and isinstance(label, int)
            and 0 <= label < len(self.class_names)
        ):
            label = self.class_names[label]
        return str(label)

    def overview_image(self) -> Image.Image:
        """The overview grid (blocks x images) for the chosen image, as a PIL image."""
        spec = self._overview_spec()
        return render.overlay_grid(
            self._shown[spec["indices"]],
            spec["maps"],
            spec["row_labels"],
            spec["col_labels"],
            alpha=self._opacity.value,
            cmap=self._cmap.value,
            scale=self.grid_scale,
            **self._norm(),
        )

    def under_pointer(self, state: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The values at the image pixel under the pointer (hovered, else last clicked) on
        the block's map: ``xy``, ``cell`` ((i, j) of Ms's h x w grid, floor(y h / H),
        floor(x w / W)), ``value`` (Ms there) and ``gradcam`` (Grad-CAM at the pixel);
        None when nothing is pointed at or in overview mode. ``state``: :meth:`current`,
        if already computed."""
        xy = self._cbam_png.pointed
        if xy is None or self.mode != "single":
            return None
        s = self.current() if state is None else state
        x, y = xy
        hh, ww = self._shown.shape[-2:]
        h, w = s["map"].shape
        i, j = min(y * h // hh, h - 1), min(x * w // ww, w - 1)
        cam = s["gradcam"]
        return {
            "xy": (x, y),
            "cell": (i, j),
            "value": float(s["map"][i, j]),
            "gradcam": float(cam[y * cam.shape[0] // hh, x * cam.shape[1] // ww]),
        }

    def _html(self, s: dict) -> str:
        parts = [f"<b>{html.escape(_short(s['block']))}</b>"]
        if s["mode"] == "single":
            h, w = s["map"].shape
            parts.append(f"M<sub>s</sub> {h}&times;{w}, {html.escape(s['range'])}")
        else:
            parts.append(f"every block's M<sub>s</sub>, {html.escape(s['range'])}")
        if s["label"] is not None:
            parts.append(f"label {html.escape(self._name(s['label']))}")
        parts.append(
            f"prediction {html.escape(self._name(s['prediction']))} (P={s['probability']:.2f})"
        )
        if s["mode"] == "single":
            parts.append(
                f"Grad-CAM on {html.escape(s['target_layer'])} for "
                f"{html.escape(self._name(s['target']))} (P={s['target_probability']:.2f})"
            )
        at = self.under_pointer(s)
        if at is not None:
            parts.append(
                f"at ({at['xy'][0]}, {at['xy'][1]}): M<sub>s</sub> = {at['value']:.3g} "
                f"(cell {at['cell'][0]}, {at['cell'][1]}), Grad-CAM = {at['gradcam']:.3g}"
            )
        return "<span style='font-family:monospace'>" + " &middot; ".join(parts) + "</span>"

    @redraw
    def _redraw(self) -> None:
        s = self.current()
        alpha, cmap = s["opacity"], s["cmap"]
        if s["mode"] == "single":
            image = self._forwards[s["index"]]["image"]
            cbam = render.overlay(image, s["map"], alpha=alpha, cmap=cmap, **self._norm())
            cam = render.overlay(image, s["gradcam"], alpha=alpha, cmap=cmap, vmin=0, vmax=1)
            self._show(self._cbam_png, cbam)
            self._show(self._cam_png, cam)
            self._show(self._gate_png, self._chart(s["index"], s["channel_block"]))
        else:
            self._show(self._grid_png, self.overview_image())
        self._info.value = self._html(s)

    # -- display and clean-up --------------------------------------------------------------
    def _release(self) -> None:
        self._cams, self._charts = {}, {}
