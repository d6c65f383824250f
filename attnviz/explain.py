"""One photo through one pretrained network: its attention, its prediction, its Grad-CAM.

The photo workflow that the photo explainer widget, ``attnviz overlay`` and the README's
comparison figure share:

    ex = explain(pretrained("vit_b_16"), "cat.jpg")
    ex.top(5)                       # [(class name, probability), ...]
    label, rgb = ex.picture()       # the default block's attention over the photo
    cam = ex.gradcam()              # Grad-CAM of the predicted class (grad-cam package)

One forward pass under :func:`attnviz.capture` records every attention module; each block
is drawn as :func:`attnviz.maps.attention_view` does (a spatial, context or
self-attention map as applied, a vision transformer's class-token attention, an SE
block's weighted activation), plus a vision transformer's attention rollout, and branch
attention (SKNet, ResNeSt) as the branch each channel chose
(:func:`attnviz.render.branch_choice`). Overlays are drawn on the centred region the
network sees (:func:`attnviz.photos.network_view`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import maps, render
from .cam import gradcam
from .capture import capture
from .photos import load_image, network_view, prepare
from .records import BranchRecord, Recording, SelfAttentionRecord
from .running import inference, model_device
from .zoo import Pretrained

__all__ = ["Explanation", "comparison_figure", "explain"]


@dataclass
class Explanation:
    """What :func:`explain` found for one photo (batch of one).

    Attributes:
        pre: the network.
        x: the network's input (1 x 3 x H x W, on the model's device).
        recording: every attention record of the forward pass.
        probs: class probabilities (CPU), or None for a network without classifier.
        views: block -> (label, 1 x h x w map), :func:`attnviz.maps.attention_views`.
        branches: block -> branch record (SKNet, ResNeSt).
        view: the region the network sees, at display size (RGB uint8).
        cams: the Grad-CAM maps computed so far, by class (filled by :meth:`gradcam`).
    """

    pre: Pretrained
    x: torch.Tensor
    recording: Recording
    probs: torch.Tensor | None
    views: dict[str, tuple[str, torch.Tensor]]
    branches: dict[str, BranchRecord]
    view: np.ndarray
    cams: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def blocks(self) -> list[str]:
        """Every block with a picture: the maps, then branch records."""
        return list(self.views) + list(self.branches)

    @property
    def default_block(self) -> str | None:
        """The last block with a map on the photo (the rollout only when nothing else)."""
        own = [n for n in self.views if n != maps.ROLLOUT]
        pool = own or self.blocks
        return pool[-1] if pool else None

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes: (index, name, probability); [] without classifier."""
        if self.probs is None:
            return []
        values, indices = self.probs.topk(min(k, self.probs.numel()))
        names = self.pre.class_names
        return [(i, names[i], p) for p, i in zip(values.tolist(), indices.tolist())]

    def heads(self, block: str) -> int:
        """How many heads ``block`` has (1 for everything but self-attention)."""
        r = self.recording.get(block)
        return r.heads if isinstance(r, SelfAttentionRecord) else 1

    def attention(self, block: str | None = None, head: int | None = None) -> tuple[str, Any]:
        """(label, map on the feature grid, h x w) of a block (default
        :attr:`default_block`) and head (None: the mean over heads); the map is None for
        a branch record, which has no map on the photo.

        Raises:
            ValueError: a block without a picture (the message lists those with one).
        """
        block = self.default_block if block is None else block
        if block in self.branches:
            return "branch choice per channel", None
        if block not in self.views:
            raise ValueError(f"no picture of block {block!r}; blocks: {self.blocks}")
        label, m = self.views[block][0], self.views[block][1][0]
        r = self.recording.get(block)
        if head is not None and isinstance(r, SelfAttentionRecord):
            if "cls" in r.prefix:
                return f"class-token attention, head {head}", r.token_attention("cls", head=head)[0]
            return f"attention received, head {head}", r.received(head=head)[0]
        return label, m

    def picture(
        self, block: str | None = None, head: int | None = None, *, alpha: float = 0.5
    ) -> tuple[str, np.ndarray]:
        """(label, RGB uint8 of :attr:`view`'s size): the block's attention over the photo,
        or its branch choice."""
        block = self.default_block if block is None else block
        label, m = self.attention(block, head)
        if m is None:
            r = self.branches[str(block)]
            w = r.weights[0].float().reshape(r.paths, -1)
            h, width = self.view.shape[:2]
            chart = render.branch_choice(w, width=width, row_height=max(4, h // r.paths))
            exact = Image.fromarray(chart).resize((width, h), Image.Resampling.NEAREST)
            return label, np.asarray(exact)
        return label, render.overlay(self.view, m, alpha=alpha)

    def head_grid(self, block: str | None = None, *, columns: int = 6) -> Image.Image:
        """Every head of a self-attention block over the photo, labelled (a ViT: where
        the class token looks in each head, the picture of the DINO paper).

        Raises:
            ValueError: a block that is not self-attention.
        """
        block = self.default_block if block is None else block
        r = self.recording.get(block) if block is not None else None
        if not isinstance(r, SelfAttentionRecord):
            own = [n for n, x in self.recording.items() if x.kind == "self"]
            raise ValueError(f"{block!r} is not a self-attention block; one of {own}")
        heads = [self.attention(block, h)[1] for h in range(r.heads)]
        rows = [heads[i : i + columns] for i in range(0, len(heads), columns)]
        n = min(columns, len(heads))
        rows[-1] += [torch.zeros_like(heads[0])] * (n - len(rows[-1]))  # blank cells
        labels = [
            [f"head {i + j}" if i + j < len(heads) else "" for j in range(n)]
            for i in range(0, len(heads), columns)
        ]
        return render.overlay_grid([self.view] * n, rows, captions=labels)

    def gradcam(self, target: int | None = None) -> torch.Tensor:
        """Grad-CAM (H x W in [0, 1]) of class ``target`` (default: the predicted class),
        computed by the grad-cam package; cached per class.

        Raises:
            ValueError: a network without classifier, or a class out of range.
        """
        if self.probs is None:
            raise ValueError(f"{self.pre.name} has no classifier: Grad-CAM needs class scores")
        t = int(self.probs.argmax()) if target is None else int(target)
        if not 0 <= t < self.probs.numel():
            raise ValueError(f"target must be a class index in [0, {self.probs.numel()}), got {t}")
        if t not in self.cams:
            self.cams[t] = gradcam(self.pre.model, self.x, targets=[t])[0]
        return self.cams[t]


def explain(pre: Pretrained, image: Any, *, display_side: int = 448) -> Explanation:
    """Run one photo through ``pre`` under :func:`attnviz.capture`.

    Args:
        pre: from :func:`attnviz.zoo.pretrained`.
        image: anything :func:`attnviz.photos.load_image` reads.
        display_side: longer side of the pictures.
    """
    photo = load_image(image)
    model = pre.model
    x = prepare(photo, pre.transforms).to(model_device(model))
    with inference(model), capture(model, features=True) as rec:
        logits = model(x)
    probs = logits.softmax(1)[0].float().cpu() if pre.classifier else None
    return Explanation(
        pre=pre,
        x=x,
        recording=rec,
        probs=probs,
        views=maps.attention_views(rec),
        branches={n: r for n, r in rec.items() if isinstance(r, BranchRecord)},
        view=render.to_uint8_rgb(network_view(photo, pre.transforms, max_side=display_side)),
    )


def _caption(ex: Explanation, family: str, label: str, block: str | None) -> list[str]:
    weights = "trained weights" if ex.pre.pretrained else "RANDOM WEIGHTS"
    top = ex.top(1)
    said = f"predicts {top[0][1]} (P={top[0][2]:.2f})" if top else "no classifier"
    return [f"{family}: {ex.pre.name} [{weights}]", said, f"{label}: {block or ''}"]


def _text_block(lines: list[str], width: int) -> Image.Image:
    """Lines of text wrapped to ``width`` pixels (PIL's default font, ~6 px a character)."""
    import textwrap

    chars = max(10, width // 6)
    wrapped = [w for line in lines for w in textwrap.wrap(line, chars) or [""]]
    canvas = Image.new("RGB", (width, 13 * len(wrapped) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(wrapped):
        draw.text((4, 2 + 13 * i), line, fill="black")
    return canvas


def comparison_figure(
    rows: list[tuple[str, Explanation]], *, side: int = 224, block: str | None = None
) -> Image.Image:
    """One row per family: the photo as the network sees it, its applied attention, and
    Grad-CAM of the predicted class; each row titled with the family, the model, whether
    its weights are trained, the class predicted and its probability, and the block shown.

    Args:
        rows: (family name, explanation) pairs.
        side: panel size in pixels.
        block: the block to draw (default: each explanation's :attr:`default_block`).
    """
    strips = []
    width = 3 * side + 8
    header = _text_block(
        ["network input | attention it applied | Grad-CAM of its prediction"], width
    )
    strips.append(np.asarray(header))
    for family, ex in rows:
        label, attention = ex.picture(block)
        cam = (
            render.overlay(ex.view, ex.gradcam())
            if ex.probs is not None
            else np.full_like(ex.view, 255)
        )
        # picture() and the overlay are the view's size: one height gives one width
        panels = [render.fit_height(p, side) for p in (ex.view, attention, cam)]
        strip = render.montage(panels, ncols=3, pad=4)
        title = np.asarray(
            _text_block(_caption(ex, family, label, block or ex.default_block), strip.shape[1])
        )
        strips += [title, strip, np.full((8, strip.shape[1], 3), 255, np.uint8)]
    width = max(s.shape[1] for s in strips)
    padded = [
        np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips
    ]
    return Image.fromarray(np.concatenate(padded))
