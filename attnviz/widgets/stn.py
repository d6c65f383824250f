"""Explore what a spatial transformer samples, image by image and snapshot by snapshot.

Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015: A_theta (eq. 1)
maps the output grid onto the input, so each theta draws as a quadrilateral on the
input U, and V is the bilinear sample of U inside it (eq. 5). ``STNInspector``
shows both, with the decomposition of theta (``maps.decompose_theta``), for each
image and each saved training snapshot. Built only from core ipywidgets 8 widgets
and PNG images, so it renders in JupyterLab, VS Code and Colab, offline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import ipywidgets as widgets
import numpy as np
import torch

from .. import maps, render
from ..render.pointer import CROSSHAIR_COLOR, crosshair
from ._base import App, ImageIndex, as_list, check_images, redraw
from .pointer import PointerView

__all__ = ["STNInspector"]

_WINDOW = (0, 190, 255)  # a two-stage transformer's first-stage window

_ROWS = (  # (label, key in the decomposition, format)
    ("scale x", "scale_x", "{:.3f}"),
    ("scale y", "scale_y", "{:.3f}"),
    ("rotation", "rotation_deg", "{:.1f}°"),
    ("shear", "shear", "{:.3f}"),
    ("translation x", "tx", "{:+.3f}"),
    ("translation y", "ty", "{:+.3f}"),
    ("zoom", "zoom", "{:.2f}×"),
)


def _check_thetas(thetas: Any, n: int) -> torch.Tensor:
    thetas = torch.as_tensor(thetas).detach().cpu()
    if thetas.dim() == 3:
        thetas = thetas.unsqueeze(0)
    if thetas.dim() != 4 or tuple(thetas.shape[1:]) != (n, 2, 3):
        raise ValueError(
            f"thetas must be (E, N, 2, 3) (or (N, 2, 3) for one snapshot) with N = {n} "
            f"images, got {tuple(thetas.shape)}"
        )
    if not thetas.is_floating_point():
        raise TypeError(f"thetas must be a float tensor, got {thetas.dtype}")
    return thetas


def _mark(canvas: np.ndarray, xy: Sequence[float], scale: int) -> np.ndarray:
    """A crosshair (cyan over black) on the canvas pixel of image point (x, y)."""
    out = canvas.copy()
    crosshair(out, int(xy[0] * scale), int(xy[1] * scale), max(3, 2 * scale), CROSSHAIR_COLOR)
    return out


class STNInspector(App, ImageIndex):
    """Slide through images and training snapshots of an STN's A_theta.

    Left: the input U with the quadrilateral that A_theta samples
    (``render.QUAD_COLOR``) and the ground-truth box (``render.BOX_COLOR``); middle:
    the crop V re-sampled with that theta; right: theta's decomposition, the IoU of
    the quadrilateral with the box, the label and the prediction.

    Args:
        images: U, (N, C, H, W), float in [0, 1] (what the STN saw), C = 1 or 3.
        thetas: A_theta of each image at each of E snapshots, (E, N, 2, 3), or
            (N, 2, 3) for one snapshot.
        epochs: names of the E snapshots (default 0 .. E-1).
        labels: optional N true labels.
        predictions: optional (E, N) predicted labels.
        boxes: optional (N, 4) ground-truth boxes x0, y0, x1, y1 in pixels of ``images``.
        output_size: (H', W') of V; default the H x W it is sampled from (``source``
            when given, else ``images``).
        source: optional higher-resolution originals (N, C, Hs, Ws) in [0, 1] to
            sample V from (theta is resolution independent); the quadrilateral is
            still drawn on ``images``.
        scale: integer upscaling of the input panel.
        windows: a two-stage transformer's first-stage windows, shaped like ``thetas``
            (``record.window`` of :class:`~attnviz.records.TwoStageTransformRecord`):
            drawn too (blue), and the second stage's angle (the rotation that takes the
            window to theta) shown in the table.

    Raises:
        ValueError: shapes that do not match (images vs thetas, epochs, labels,
            predictions, boxes, source), values outside [0, 1], a bad scale or size.
        TypeError: integer images or thetas.

    Display it by leaving it last in a cell; ``.root`` is the ``VBox``.

    ``controls``: ``image``, ``snapshot`` (sliders), ``play`` (plays the snapshots;
    both disabled with one snapshot). ``panels``: ``input`` (U with the quadrilateral),
    ``crop`` (V), both clickable: hovering (or clicking) a pixel of either marks it and
    where it is in the other (:meth:`correspondence`; the table gives both points).
    ``info``: the table.
    """

    _CONTROLS: ClassVar[dict[str, str]] = {
        "image": "_image",
        "play": "_play",
        "snapshot": "_snapshot",
    }
    _EXPORT: ClassVar[tuple[str, ...]] = ("snapshot", "image")

    def __init__(
        self,
        images: torch.Tensor,
        thetas: torch.Tensor,
        *,
        epochs: Sequence[Any] | None = None,
        labels: Sequence[Any] | None = None,
        predictions: Any | None = None,
        boxes: torch.Tensor | None = None,
        output_size: Sequence[int] | int | None = None,
        source: torch.Tensor | None = None,
        scale: int = 4,
        windows: torch.Tensor | None = None,
    ) -> None:
        self.images = check_images(images, "images", unit_range=True)
        n, (h, w) = len(self.images), self.images.shape[-2:]
        self.thetas = _check_thetas(thetas, n)
        self.windows = None if windows is None else _check_thetas(windows, n)
        if self.windows is not None and self.windows.shape != self.thetas.shape:
            raise ValueError(
                f"windows must have the shape of thetas {tuple(self.thetas.shape)}, got "
                f"{tuple(self.windows.shape)}"
            )
        e = len(self.thetas)
        self.epochs = list(range(e)) if epochs is None else as_list(epochs, "epochs", e)
        self.labels = None if labels is None else as_list(labels, "labels", n)
        self.predictions = self._check_predictions(predictions, e, n)
        self.boxes = self._check_boxes(boxes, n)
        self.source = self._check_source(source, n)
        sampled = self.images if self.source is None else self.source
        size = sampled.shape[-2:] if output_size is None else output_size
        self.output_size = maps.as_size(size, "output_size")
        self.scale = render.check_scale(scale)
        self._crop_scale = max(1, round(h * self.scale / self.output_size[0]))
        self._input_size = (h, w)
        self._build(n, e)
        self._redraw()

    # -- validation ----------------------------------------------------------------------
    @staticmethod
    def _check_predictions(predictions: Any, e: int, n: int) -> list | None:
        if predictions is None:
            return None
        rows = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
        if e == 1 and len(rows) == n and not isinstance(rows[0], (list, tuple)):
            rows = [rows]
        if len(rows) != e or any(len(r) != n for r in rows):
            raise ValueError(f"predictions must be (E, N) = ({e}, {n}), one row per snapshot")
        return [list(r) for r in rows]

    @staticmethod
    def _check_boxes(boxes: Any, n: int) -> torch.Tensor | None:
        if boxes is None:
            return None
        boxes = torch.as_tensor(boxes).detach().cpu().double()
        if tuple(boxes.shape) != (n, 4):
            raise ValueError(f"boxes must be ({n}, 4) as x0, y0, x1, y1, got {tuple(boxes.shape)}")
        return boxes

    def _check_source(self, source: Any, n: int) -> torch.Tensor | None:
        if source is None:
            return None
        source = check_images(source, "source", unit_range=True)
        if len(source) != n or source.shape[1] != self.images.shape[1]:
            raise ValueError(
                f"source must hold the same {n} images with {self.images.shape[1]} channels, "
                f"got {tuple(source.shape)}"
            )
        return source

    # -- widgets -------------------------------------------------------------------------
    def _build(self, n: int, e: int) -> None:
        self._image = widgets.IntSlider(value=0, min=0, max=n - 1, description="image")
        options = [(str(label), k) for k, label in enumerate(self.epochs)]
        self._snapshot = widgets.SelectionSlider(
            options=options, value=0, description="snapshot", disabled=e == 1
        )
        self._play = widgets.Play(value=0, min=0, max=e - 1, interval=600, disabled=e == 1)
        self._link = widgets.link((self._play, "value"), (self._snapshot, "index"))
        self._input_png = PointerView(mode="png", scale=self.scale)
        self._crop_png = PointerView(mode="png", scale=self._crop_scale)
        self._table = widgets.HTML()
        self.log = widgets.Output()
        self.root = widgets.VBox(
            [
                widgets.HBox([self._image, self._play, self._snapshot]),
                widgets.HBox([self._input_png, self._crop_png, self._table]),
                self.log,
            ]
        )
        for w in (self._image, self._snapshot):
            w.observe(self._guard(lambda _change: self._redraw()), names="value")
        for panel in (self._input_png, self._crop_png):
            panel.observe(self._guard(lambda _change: self._redraw()), names=["hover", "click"])
        # stable handles for browser tests and user CSS
        self.root.add_class("attnviz-stn-inspector")
        self._snapshot.add_class("attnviz-snapshot")
        self._input_png.add_class("attnviz-input")

    # -- state ---------------------------------------------------------------------------
    @property
    def snapshot(self) -> int:
        """The snapshot shown (0 .. E-1, position in ``epochs``); settable."""
        return self._snapshot.value

    @snapshot.setter
    def snapshot(self, value: int) -> None:
        if not 0 <= value < len(self.thetas):
            raise ValueError(f"snapshot must be in [0, {len(self.thetas) - 1}], got {value}")
        self._snapshot.value = value

    @property
    def info(self) -> str:
        """The table shown beside the pictures now (HTML): theta's decomposition, IoU,
        label and prediction."""
        return str(self._table.value)

    def current(self) -> dict[str, Any]:
        """The numbers shown for the current image and snapshot.

        Returns:
            ``index``, ``snapshot``, ``epoch``, ``theta`` (2 x 3 tensor), ``corners``
            (4 x 2 tensor, ``maps.theta_corners``), ``decomposition`` (floats of
            ``maps.decompose_theta``, rotation in radians), ``iou`` (float, or None
            without boxes), ``label`` and ``prediction`` (None when not given); with
            ``windows``: ``window_corners`` (4 x 2) and ``angle`` (the second stage's
            rotation, radians), else None.
        """
        i, k = self.index, self.snapshot
        theta = self.thetas[k, i]
        parts = maps.decompose_theta(theta)
        corners = maps.theta_corners(theta, self._input_size)[0]
        iou = None
        if self.boxes is not None:
            iou = float(maps.polygon_iou(corners, self.boxes[i])[0])
        window_corners = angle = None
        if self.windows is not None:
            window = self.windows[k, i]
            window_corners = maps.theta_corners(window, self._input_size)[0]
            turn = torch.linalg.inv(window[:, :2].double()) @ theta[:, :2].double()
            angle = math.atan2(float(turn[1, 0]), float(turn[0, 0]))
        return {
            "window_corners": window_corners,
            "angle": angle,
            "index": i,
            "snapshot": k,
            "epoch": self.epochs[k],
            "theta": theta.clone(),
            "corners": corners,
            "decomposition": {key: float(v[0]) for key, v in parts.items()},
            "iou": iou,
            "label": None if self.labels is None else self.labels[i],
            "prediction": None if self.predictions is None else self.predictions[k][i],
        }

    @property
    def point(self) -> tuple[str, tuple[int, int]] | None:
        """The pixel pointed at (hovered, else last clicked): (``"input"`` or ``"crop"``,
        (x, y) in that picture's pixels), or None. Settable (e.g. ``("input", (5, 9))``,
        as a click would; None clears it)."""
        for name, view in (("input", self._input_png), ("crop", self._crop_png)):
            if len(view.hover) == 2:
                return name, (int(view.hover[0]), int(view.hover[1]))
        last = max((self._input_png, self._crop_png), key=lambda v: v.click[2])
        if last.click[2] > 0:
            name = "input" if last is self._input_png else "crop"
            return name, (int(last.click[0]), int(last.click[1]))
        return None

    @point.setter
    def point(self, value: tuple[str, Sequence[int]] | None) -> None:
        count = 1 + max(self._input_png.click[2], self._crop_png.click[2])
        if value is None:
            for view in (self._input_png, self._crop_png):
                view.hover, view.click = [], [0, 0, 0]
            return
        name, (x, y) = value
        if name not in ("input", "crop"):
            raise ValueError(f"point names 'input' or 'crop', got {name!r}")
        view = self._input_png if name == "input" else self._crop_png
        view.click = [int(x), int(y), count]

    def correspondence(self, state: dict | None = None) -> dict[str, Any] | None:
        """Where the pointed pixel is in both pictures: ``input`` (x, y) in input pixels
        and ``crop`` (u, v) in crop pixels (continuous; the pixel centre is +0.5), with
        ``inside`` (whether the input point lands inside the crop). The crop pixel's
        centre is sampled at ``theta @ (u_n, v_n, 1)`` (``align_corners=False``); an input
        point lands where the inverse takes it."""
        pointed = self.point
        if pointed is None:
            return None
        state = self.current() if state is None else state
        theta = state["theta"].double()
        (h, w), (ho, wo) = self._input_size, self.output_size
        name, (x, y) = pointed
        if name == "crop":
            u, v = x + 0.5, y + 0.5
            un = torch.tensor([2 * u / wo - 1, 2 * v / ho - 1], dtype=torch.float64)
            xn = theta[:, :2] @ un + theta[:, 2]
            xy = ((float(xn[0]) + 1) * w / 2, (float(xn[1]) + 1) * h / 2)
            uv = (u, v)
        else:
            xy = (x + 0.5, y + 0.5)
            xn = torch.tensor([2 * xy[0] / w - 1, 2 * xy[1] / h - 1], dtype=torch.float64)
            un = torch.linalg.solve(theta[:, :2], xn - theta[:, 2])
            uv = ((float(un[0]) + 1) * wo / 2, (float(un[1]) + 1) * ho / 2)
        inside = 0 <= uv[0] < wo and 0 <= uv[1] < ho
        return {"from": name, "input": xy, "crop": uv, "inside": inside}

    # -- drawing -------------------------------------------------------------------------
    def _render_input(self, state: dict) -> Any:
        canvas = render.draw_quad(self.images[state["index"]], state["corners"], scale=self.scale)
        if state["window_corners"] is not None:
            canvas = render.draw_quad(
                canvas, state["window_corners"], scale=self.scale, color=_WINDOW
            )
        if self.boxes is not None:
            canvas = render.draw_box(canvas, self.boxes[state["index"]], scale=self.scale)
        return canvas

    def _render_crop(self, state: dict) -> np.ndarray:
        sampled = self.images if self.source is None else self.source
        crop = maps.resample(sampled[state["index"]], state["theta"], self.output_size)
        return render.upscale(crop.clamp(0, 1), self._crop_scale)

    def _html(self, state: dict, link: dict | None = None) -> str:
        parts = state["decomposition"]
        parts = dict(parts, rotation_deg=math.degrees(parts["rotation"]))
        rows = [("snapshot", html.escape(str(state["epoch"])))]
        rows += [(label, fmt.format(parts[key])) for label, key, fmt in _ROWS]
        if state["angle"] is not None:
            rows.append(("second stage's turn", f"{math.degrees(state['angle']):.1f}°"))
        if state["iou"] is not None:
            rows.append(("IoU with box", f"{state['iou']:.3f}"))
        for key in ("label", "prediction"):
            if state[key] is not None:
                rows.append((key, html.escape(str(state[key]))))
        if link is not None:
            (x, y), (u, v) = link["input"], link["crop"]
            where = f"({u:.1f}, {v:.1f})" if link["inside"] else "outside the crop"
            rows.append(("input point", f"({x:.1f}, {y:.1f})"))
            rows.append(("in the crop", where))
        cells = "".join(
            f"<tr><td style='padding-right:1em'>{a}</td><td style='text-align:right'>{b}</td></tr>"
            for a, b in rows
        )
        return f"<table style='font-family:monospace'>{cells}</table>"

    @redraw
    def _redraw(self) -> None:
        state = self.current()
        link = self.correspondence(state)
        inp, crop = render.to_uint8_rgb(self._render_input(state)), self._render_crop(state)
        if link is not None:
            inp = _mark(inp, link["input"], self.scale)
            if link["inside"]:
                crop = _mark(render.to_uint8_rgb(crop), link["crop"], self._crop_scale)
        self._show(self._input_png, inp)
        self._show(self._crop_png, crop)
        self._table.value = self._html(state, link)

    # -- display and clean-up ------------------------------------------------------------
    def _release(self) -> None:
        if self._link is not None:
            self._link.unlink()
            self._link = None
