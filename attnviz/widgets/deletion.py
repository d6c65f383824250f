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
from ..metrics.faithfulness import baseline_maps, perturbed
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
        # the baselines score_methods scored beside the methods (seed 0, as compare uses)
        self._baselines = baseline_maps(len(self.images), self.images.shape[-2:])
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

    def _shown(self) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
        """Per method (baselines included): its map of the current image, the image the
        current step shows the model, and the probability of the true class it gives."""
        name, i, kind = self._model.value, self._image.value, self._kind.value
        model = self.models[name]
        x = self.images[i : i + 1]
        out = []
        with inference(model):
            for method in self.comparison.scores[name].summary:
                m = self._maps(name, method)[i : i + 1]
                image = perturbed(x, m, self.fraction, kind=kind)
                prob = model(image.to(model_device(model))).softmax(1)[0, int(self.labels[i])]
                out.append((method, m[0], image[0], float(prob)))
        return out

    def current(self) -> dict[str, Any]:
        """The model, image, curve, fraction, and per method the probability of the true
        class the model gives the image shown (``shown``) and the curve's value there."""
        name, i, kind = self._model.value, self._image.value, self._kind.value
        scores = self.comparison.scores[name]
        rows = self._shown()
        recorded = {}
        if kind != "negative":  # the negative curve records accuracy, not probability
            for method, *_ in rows:
                recorded[method] = float(scores.curves[method][kind][i, self._step.value])
        return {
            "model": name,
            "image": i,
            "kind": kind,
            "fraction": self.fraction,
            "probability": {method: prob for method, _, _, prob in rows},
            "curve": recorded,
        }

    def _maps(self, name: str, method: str) -> torch.Tensor:
        found = self.comparison.maps[name]
        return found[method] if method in found else self._baselines[method]

    def _redraw(self) -> None:
        name, i, kind = self._model.value, self._image.value, self._kind.value
        x = self.images[i : i + 1]
        tiles, lines = [], []
        shown = self._shown()
        scale = max(1, self.side // x.shape[-1])
        original = render.to_uint8_rgb(x[0])
        for k, (method, m, image, prob) in enumerate(shown):
            heat = render.overlay(original, m)
            tiles += [render.upscale(heat, scale), render.upscale(image.clamp(0, 1), scale)]
            lines.append(f"row {k + 1}: {method}, P(true class) = {prob:.3f}")
        self._show(self._rows_png, render.montage(tiles, ncols=2, pad=4))
        what = {"deletion": "removed", "insertion": "inserted", "negative": "removed (least first)"}
        self._info.value = (
            f"<b>{html.escape(name)}</b>, image {i} (class {int(self.labels[i])}): "
            f"{self.fraction:.0%} of the pixels {what[kind]} in the order of each row's map "
            "(left: the map, right: what the model is shown)<br>"
            + "<br>".join(html.escape(line) for line in lines)
        )
