"""Slide along the deletion (or insertion) curve: what each method's ranking removes from
an image, step by step, and what the model then believes."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, ClassVar

import ipywidgets as widgets
import torch
from torch import nn

from .. import render
from ..attribution import Comparison
from ..metrics.faithfulness import perturbed
from ..running import inference, model_device
from ._base import App, check_images

__all__ = ["DeletionExplorer"]


class DeletionExplorer(App):
    """One row per method of a :func:`attnviz.attribution.compare` result: the image with
    the fraction of its pixels the slider names removed in the order the method ranks
    them (the very images the deletion score fed the model), and the probability of the
    true class beside each.

    Args:
        comparison: what :func:`~attnviz.attribution.compare` returned.
        models: the same models by name.
        images, labels: the images and classes the comparison scored.
        model: the model shown first (default the comparison's first).
        side: pixels per tile.

    ``controls``: ``model`` (dropdown), ``image`` (slider), ``kind`` (deletion, insertion
    or negative perturbation), ``step`` (slider over the curve's fractions). ``panels``:
    ``rows`` (one tile per method and baseline). ``current()`` gives the fraction and each
    method's probability of the true class, as its curve recorded.

    Raises:
        ValueError: a model the comparison did not score, images of another count.
    """

    _CONTROLS: ClassVar[dict[str, str]] = {
        "model": "_model",
        "image": "_image",
        "kind": "_kind",
        "step": "_step",
    }
    _EXPORT: ClassVar[tuple[str, ...]] = ("model", "image", "kind", "step")

    def __init__(
        self,
        comparison: Comparison,
        models: Mapping[str, nn.Module],
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        model: str | None = None,
        side: int = 96,
    ) -> None:
        missing = [m for m in comparison.scores if m not in models]
        if missing:
            raise ValueError(f"pass the models the comparison scored; missing {missing}")
        self.images = check_images(images, unit_range=True)
        self.labels = torch.as_tensor(labels)
        first = next(iter(comparison.scores.values()))
        if len(self.images) != first.n:
            raise ValueError(
                f"the comparison scored {first.n} images, got {len(self.images)}: pass the same"
            )
        self.comparison, self.models, self.side = comparison, dict(models), side
        names = list(comparison.scores)
        if model is not None and model not in names:
            raise ValueError(f"model must be one of {names}, got {model!r}")
        self.log = widgets.Output()
        self._model = widgets.Dropdown(options=names, value=model or names[0], description="model")
        self._image = widgets.IntSlider(
            0, 0, len(self.images) - 1, description="image", continuous_update=False
        )
        self._kind = widgets.ToggleButtons(
            options=["deletion", "insertion", "negative"], value="deletion", description="curve"
        )
        fractions = first.fractions
        self._step = widgets.SelectionSlider(
            options=[(f"{f:.0%}", i) for i, f in enumerate(fractions)],
            value=min(1, len(fractions) - 1),
            description="removed",
            continuous_update=False,
        )
        self._rows_png = widgets.Image(format="png")
        self._info = widgets.HTML()
        for w in (self._model, self._image, self._kind, self._step):
            w.observe(self._guard(lambda _: self._redraw()), "value")
        self.root = widgets.VBox(
            [
                widgets.HBox([self._model, self._image]),
                widgets.HBox([self._kind, self._step]),
                self._rows_png,
                self._info,
                self.log,
            ]
        )
        self.root.add_class("attnviz-deletion-explorer")
        self._redraw()

    @property
    def fraction(self) -> float:
        """The fraction of pixels removed (inserted) at the current step."""
        return next(iter(self.comparison.scores.values())).fractions[self._step.value]

    def current(self) -> dict[str, Any]:
        """The model, image, curve, fraction, and per method the probability of the true
        class the model gives the image shown (``shown``) and the curve's value there."""
        name, i, kind = self._model.value, self._image.value, self._kind.value
        scores = self.comparison.scores[name]
        model = self.models[name]
        x = self.images[i : i + 1]
        shown, recorded = {}, {}
        with inference(model):
            for method in scores.summary:
                maps = self._maps(name, method)[i : i + 1]
                image = perturbed(x, maps, self.fraction, kind=kind)
                prob = model(image.to(model_device(model))).softmax(1)[0, int(self.labels[i])]
                shown[method] = float(prob)
                curve = scores.curves[method]["deletion" if kind == "negative" else kind]
                recorded[method] = float(curve[i, self._step.value])
        return {
            "model": name,
            "image": i,
            "kind": kind,
            "fraction": self.fraction,
            "probability": shown,
            "curve": recorded if kind != "negative" else {},
        }

    def _maps(self, name: str, method: str) -> torch.Tensor:
        found = self.comparison.maps[name]
        if method in found:
            return found[method]
        from ..metrics import center_prior
        from ..metrics.faithfulness import CENTRE, random_maps

        n, size = len(self.images), (self.images.shape[-2], self.images.shape[-1])
        if method == CENTRE:
            return center_prior(n, size)
        return random_maps(n, size)

    def _redraw(self) -> None:
        name, i, kind = self._model.value, self._image.value, self._kind.value
        x = self.images[i : i + 1]
        tiles, lines = [], []
        now = self.current()
        scale = max(1, self.side // x.shape[-1])
        original = render.to_uint8_rgb(x[0])
        for k, (method, prob) in enumerate(now["probability"].items()):
            m = self._maps(name, method)[i : i + 1]
            image = perturbed(x, m, self.fraction, kind=kind)
            heat = render.overlay(original, m[0])
            tiles += [render.upscale(heat, scale), render.upscale(image[0].clamp(0, 1), scale)]
            lines.append(f"row {k + 1}: {method}, P(true class) = {prob:.3f}")
        self._show(self._rows_png, render.montage(tiles, ncols=2, pad=4))
        what = {"deletion": "removed", "insertion": "inserted", "negative": "removed (least first)"}
        self._info.value = (
            f"<b>{html.escape(name)}</b>, image {i} (class {int(self.labels[i])}): "
            f"{self.fraction:.0%} of the pixels {what[kind]} in the order of each row's map "
            "(left: the map, right: what the model is shown)<br>"
            + "<br>".join(html.escape(line) for line in lines)
        )
