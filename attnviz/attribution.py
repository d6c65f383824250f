"""Explanation maps with one interface, and the comparison that scores them side by side.

Every method turns a batch of images (and the class to explain) into one map per image
on a grid over the image, N x h x w; :func:`explain_maps` runs the methods a model
supports, :func:`compare` scores them with :func:`attnviz.metrics.score_methods`.

Methods (``t``: the explained token, the class token; ``A^b``: block b's attention,
heads x N x N, rows summing to one; ``y_c``: the logit of class c):

==========================  =====================================================  ========
method                      map                                                    backward
==========================  =====================================================  ========
attention (head mean)       ``mean_h A^L[h, t, patches]``: where the class token   no
                            looks in the last block (Caron et al., ICCV 2021)
attention (head k)          ``A^L[k, t, patches]``, one head                       no
attention (best head)       the block and head whose maps hold the most energy     no
                            on the object on *calibration* images (never the
                            test images), DINO's "best head"
attention rollout           row t of ``prod_b rownorm(I/2 + mean_h A^b / 2)``      no
                            (Abnar & Zuidema, ACL 2020)
attention received          ``mean_h mean_q A^L[h, q, patches]`` over the patch    no
                            queries: how much each patch is read
relevance (Chefer 2021)     row t of R, ``R = I``; per block                       yes
                            ``R += mean_h((dy_c/dA^b * A^b)^+) R`` (Chefer et al.,
                            "Generic Attention-model Explainability", ICCV 2021:
                            their rule for self-attention)
Grad-CAM                    ``ReLU(sum_k alpha_k A_k)``, ``alpha_k`` the mean of   yes
                            ``dy_c/dA_k`` (Selvaraju et al., ICCV 2017), computed
                            by the grad-cam package on the token grid (a ViT) or
                            the last convolutional block (a CNN)
CBAM spatial map            ``M_s`` of a CBAM block (Woo et al., ECCV 2018,        no
                            eq. 3), the map the block multiplied its input by
channel-weighted            ``sum_c s_c u_c`` of an SE block (Hu et al., CVPR      no
activation                  2018) or CBAM's channel gate: the channel weights
                            applied to the block's input, summed over channels
non-local received          ``mean_q A[q, :]`` of a non-local block (Wang et al.,  no
                            CVPR 2018): how much each position is read
==========================  =====================================================  ========

The gradient-weighted relevance reads each block's attention matrix with its gradient:
it is defined for transformers whose attention passes the matrix through an
``attn_drop`` module (attnviz's :class:`~attnviz.models.SmallViT`, timm's
``VisionTransformer`` family, whose fused kernel is switched off for the pass); other
models get a clear refusal.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from . import maps
from .cam import gradcam
from .capture import capture
from .metrics.faithfulness import (
    CENTRE,
    FRACTIONS,
    MethodScores,
    energy_in_mask,
    score_methods,
)
from .records import ChannelRecord, Recording, SelfAttentionRecord, SpatialRecord
from .running import inference, model_device

__all__ = [
    "METHODS",
    "Comparison",
    "Method",
    "calibrate",
    "compare",
    "explain_maps",
    "gradient_relevance",
    "methods_for",
]


@dataclass(frozen=True)
class Method:
    """One explanation method: its row title, where it is defined, its cost and source."""

    key: str
    title: str
    defined_for: str
    equation: str
    paper: str
    backward: bool = False


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method(
            "attention_mean",
            "attention (head mean)",
            "vision transformers with a class token",
            "mean_h A^L[h, cls, patches]",
            "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021",
        ),
        Method(
            "attention_head",
            "attention (head {head})",
            "vision transformers with a class token",
            "A^L[k, cls, patches]",
            "Caron et al., ICCV 2021",
        ),
        Method(
            "attention_best",
            "attention (best head: {choice})",
            "vision transformers with a class token, given calibration images",
            "A^b[k, cls, patches], (b, k) maximising energy in mask on calibration images",
            "Caron et al., ICCV 2021 (best head)",
        ),
        Method(
            "rollout",
            "attention rollout",
            "vision transformers with a class token",
            "row cls of prod_b rownorm(I/2 + mean_h A^b / 2)",
            "Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020",
        ),
        Method(
            "received",
            "attention received",
            "vision transformers",
            "mean_h mean_q A^L[h, q, patches] over patch queries",
            "(attention received; see Darcet et al., ICLR 2024, on high-norm tokens)",
        ),
        Method(
            "relevance",
            "relevance (Chefer 2021)",
            "vision transformers whose attention passes attn_drop",
            "R = I; R += mean_h((dy_c/dA^b * A^b)^+) R per block; row cls over patches",
            "Chefer et al., Generic Attention-model Explainability for Interpreting "
            "Bi-Modal and Encoder-Decoder Transformers, ICCV 2021",
            backward=True,
        ),
        Method(
            "gradcam",
            "Grad-CAM",
            "every classifier (token grid of a ViT, last block of a CNN)",
            "ReLU(sum_k mean(dy_c/dA_k) A_k)",
            "Selvaraju et al., Grad-CAM, ICCV 2017 (grad-cam package)",
            backward=True,
        ),
        Method(
            "cbam",
            "CBAM spatial map ({choice})",
            "networks with CBAM",
            "M_s = sigmoid(conv([avgpool_c F; maxpool_c F]))",
            "Woo et al., CBAM, ECCV 2018",
        ),
        Method(
            "se",
            "channel-weighted activation ({choice})",
            "networks with SE blocks or CBAM's channel gate",
            "sum_c s_c u_c",
            "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018",
        ),
        Method(
            "nonlocal",
            "non-local received ({choice})",
            "networks with a non-local block",
            "mean_q A[q, :]",
            "Wang et al., Non-local Neural Networks, CVPR 2018",
        ),
    )
}

_TOKENS = ("attention_mean", "attention_head", "attention_best", "rollout", "received")


def _token_blocks(rec: Recording) -> list[SelfAttentionRecord]:
    return [r for r in rec.values() if isinstance(r, SelfAttentionRecord) and r.prefix]


def _kind_blocks(rec: Recording, kind: str) -> list[str]:
    if kind == "cbam":
        return [n for n, r in rec.items() if isinstance(r, SpatialRecord)]
    if kind == "se":
        return [n for n, r in rec.items() if isinstance(r, ChannelRecord)]
    return [n for n, r in rec.items() if isinstance(r, SelfAttentionRecord) and not r.prefix]


def _attn_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules whose matrix passes an ``attn_drop`` module, in order."""
    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "attn_drop", None), nn.Module) and hasattr(m, "num_heads")
    ]


def methods_for(model: nn.Module, images: torch.Tensor) -> list[str]:
    """The keys of :data:`METHODS` defined for ``model`` (one captured forward of the
    first image tells which attention it has)."""
    with inference(model), capture(model) as rec:
        model(images[:1].to(model_device(model)))
    out: list[str] = []
    tokens = _token_blocks(rec)
    if tokens and "cls" in tokens[-1].prefix:
        out += list(_TOKENS)
        if _attn_modules(model):
            out.append("relevance")
    elif tokens:
        out.append("received")
    out.append("gradcam")
    out += [k for k in ("cbam", "se", "nonlocal") if _kind_blocks(rec, k)]
    return out


@contextlib.contextmanager
def _unfused(modules: Sequence[nn.Module]) -> Iterator[None]:
    """timm's attention with its fused kernel off (the matrix then passes attn_drop)."""
    saved = [(m, m.fused_attn) for m in modules if hasattr(m, "fused_attn")]
    try:
        for m, _ in saved:
            setattr(m, "fused_attn", False)  # noqa: B010 (a plain flag, not a module)
        yield
    finally:
        for m, v in saved:
            setattr(m, "fused_attn", v)  # noqa: B010


def gradient_relevance(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    token: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Chefer et al. (ICCV 2021) relevance of each patch for class ``targets``: B x h x w.

    One forward and one backward per batch: every block's attention A^b (B x heads x N x
    N, read where it enters ``attn_drop``) and its gradient G^b = dy_c/dA^b, then
    ``R = I``, ``R <- R + mean_h((G^b * A^b)^+) R`` for b = 1..L, and the map is row
    ``token`` of R over the patch tokens. The model's train/eval flags, parameters and
    their gradients are left as they were.

    Raises:
        ValueError: a model without attention through ``attn_drop`` modules.
    """
    modules = _attn_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention module with an attn_drop submodule: "
            "gradient-weighted relevance needs the attention matrix inside the graph "
            "(attnviz.models.SmallViT, timm's VisionTransformer); use rollout or Grad-CAM"
        )
    from .probes.tokens import token_layout

    layout = token_layout(model)
    prefix = len(layout.prefix) if layout is not None else 1
    device = model_device(model)
    outs = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        y = torch.as_tensor(targets[i : i + batch_size]).to(device)
        seen: list[torch.Tensor] = []

        def keep(_m: nn.Module, _i: Any, out: torch.Tensor, seen: list = seen) -> None:
            seen.append(out)

        hooks = [cast(nn.Module, m.attn_drop).register_forward_hook(keep) for m in modules]
        try:
            # every module's own train/eval flag comes back (model.train(flag) would set one
            # flag on all of them)
            with inference(model, grad=True), _unfused(modules):
                logits = model(x.requires_grad_(True))
                score = logits.gather(1, y[:, None]).sum()
                grads = torch.autograd.grad(score, seen)
        finally:
            for h in hooks:
                h.remove()
        n = seen[0].shape[-1]
        if any(a.shape != (len(x), a.shape[1], n, n) for a in seen):
            raise ValueError(
                "gradient-weighted relevance needs every block to attend over the same "
                f"{n} tokens (a plain ViT); got {[tuple(a.shape) for a in seen]}"
            )
        r = torch.eye(n, dtype=torch.float64, device=device).expand(len(x), n, n).clone()
        for a, g in zip(seen, grads):
            cam = (g.detach() * a.detach()).double().clamp_min(0).mean(dim=1)
            r = r + cam @ r
        row = r[:, token, prefix:].float().cpu()
        outs.append(row.reshape(len(x), *_patch_grid(layout, x.shape[-2:], n - prefix)))
    return torch.cat(outs)


def _patch_grid(layout: Any, size: Sequence[int], patches: int) -> tuple[int, int]:
    """(h, w) of the patch tokens: the input's size over the patch size, else a square."""
    if layout is not None:
        h, w = size[0] // layout.patch[0], size[1] // layout.patch[1]
        if h * w == patches:
            return h, w
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"cannot lay {patches} patch tokens on a grid; pass square images")
    return side, side


def _predictions(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The predicted class of each image (CPU), ``batch_size`` images per forward."""
    device = model_device(model)
    with inference(model):
        return torch.cat(
            [
                model(images[i : i + batch_size].to(device)).argmax(1).cpu()
                for i in range(0, len(images), batch_size)
            ]
        )


def _choice_title(method: str, choice: Any) -> str:
    m = METHODS[method]
    if method == "attention_best":
        block, head = choice
        return m.title.format(choice=f"{block}, head {head}")
    if method == "attention_head":
        return m.title.format(head=choice)
    return m.title.format(choice=choice)


def _record_maps(rec: Recording, method: str, choice: Any, head: int) -> tuple[str, torch.Tensor]:
    tokens = _token_blocks(rec)
    if method == "attention_mean":
        return METHODS[method].title, tokens[-1].token_attention("cls")
    if method == "attention_head":
        return _choice_title(method, head), tokens[-1].token_attention("cls", head=head)
    if method == "attention_best":
        block, k = choice
        r = rec[block]
        assert isinstance(r, SelfAttentionRecord)
        return _choice_title(method, choice), r.token_attention("cls", head=k)
    if method == "rollout":
        return METHODS[method].title, maps.rollout_map(tokens)
    if method == "received":
        return METHODS[method].title, tokens[-1].received()
    block = choice if choice is not None else _kind_blocks(rec, method)[-1]
    r = rec[block]
    title = _choice_title(method, block)
    if method == "cbam":
        assert isinstance(r, SpatialRecord)
        return title, r.map.float()
    if method == "se":
        return title, r.view()[1]
    assert isinstance(r, SelfAttentionRecord)
    return title, r.received()


def explain_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    methods: Sequence[str] | None = None,
    choices: Mapping[str, Any] | None = None,
    head: int = 0,
    batch_size: int = 64,
    timings: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Every requested method's maps of ``images``: title -> N x h x w (CPU, float32).

    Args:
        model: the classifier.
        images: N x C x H x W inputs.
        targets: the class each map explains (Grad-CAM, relevance); None: the predicted.
        methods: keys of :data:`METHODS` (default :func:`methods_for` the model, without
            ``attention_best`` unless ``choices`` has it).
        choices: method -> the block (or ``(block, head)`` for ``attention_best``) it
            reads, as :func:`calibrate` returns; default the last such block.
        head: the head of ``attention_head``.
        batch_size: images per forward.
        timings: if given, filled with map title -> seconds spent making it (the
            record-based maps share one captured forward: each is booked all of it).

    Raises:
        ValueError: a method not defined for the model (the message lists those that are).
    """
    available = methods_for(model, images)
    choices = dict(choices or {})
    if methods is None:
        methods = [m for m in available if m != "attention_best" or m in choices]
    bad = [m for m in methods if m not in available]
    if bad:
        raise ValueError(f"{bad} are not defined for {type(model).__name__}; it has {available}")
    if "attention_best" in methods and "attention_best" not in choices:
        raise ValueError("attention_best needs choices['attention_best'] from calibrate()")
    device = model_device(model)
    timings = {} if timings is None else timings
    if targets is None:
        targets = _predictions(model, images, batch_size)
    out: dict[str, torch.Tensor] = {}
    from_records = [m for m in methods if m not in ("relevance", "gradcam")]
    if from_records:
        start = time.perf_counter()
        per: dict[str, list[torch.Tensor]] = {}
        titles: dict[str, str] = {}
        for i in range(0, len(images), batch_size):
            with inference(model), capture(model, features="se" in methods) as rec:
                model(images[i : i + batch_size].to(device))
            for m in from_records:
                titles[m], t = _record_maps(rec, m, choices.get(m), head)
                per.setdefault(m, []).append(t.float().cpu())
        seconds = time.perf_counter() - start
        for m in from_records:
            out[titles[m]] = torch.cat(per[m])
            timings[titles[m]] = seconds
    for m in methods:
        start = time.perf_counter()
        title = METHODS[m].title
        if m == "relevance":
            out[title] = gradient_relevance(model, images, targets, batch_size=batch_size)
        elif m == "gradcam":
            out[title] = gradcam(model, images, targets=targets, batch_size=batch_size)
        else:
            continue
        timings[title] = time.perf_counter() - start
    return out


def calibrate(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, batch_size: int = 64
) -> dict[str, Any]:
    """The block (and head) each selectable method reads best on *calibration* images:
    the one whose maps hold the most energy on the object (:func:`energy_in_mask`).

    Use images the comparison does not score (training images): choosing on the test
    images would flatter the method. Returns ``{"attention_best": (block, head), "cbam":
    block, "se": block, "nonlocal": block}`` for the methods the model has.
    """
    device = model_device(model)
    energies: dict[tuple[str, Any], list[torch.Tensor]] = {}
    with inference(model):
        for i in range(0, len(images), batch_size):
            with capture(model, features=True) as rec:
                model(images[i : i + batch_size].to(device))
            m = masks[i : i + batch_size]
            for r in _token_blocks(rec):
                if "cls" in r.prefix:
                    for k in range(r.heads):
                        share = energy_in_mask(r.token_attention("cls", head=k), m)
                        energies.setdefault(("attention_best", (r.name, k)), []).append(share)
            for kind in ("cbam", "se", "nonlocal"):
                for name in _kind_blocks(rec, kind):
                    _, t = _record_maps(rec, kind, name, 0)
                    energies.setdefault((kind, name), []).append(energy_in_mask(t, m))
    best: dict[str, tuple[float, Any]] = {}
    for (kind, choice), shares in energies.items():
        v = float(torch.cat(shares).mean())
        if kind not in best or v > best[kind][0]:
            best[kind] = (v, choice)
    return {k: c for k, (_, c) in best.items()}


@dataclass
class Comparison:
    """Every model's methods scored on the same images (:func:`compare`).

    Attributes:
        scores: model -> :class:`~attnviz.metrics.faithfulness.MethodScores`.
        maps: model -> method title -> N x h x w maps.
        choices: model -> what :func:`calibrate` chose.
        cost: model -> method title -> seconds per image / seconds per image of one
            forward (the record-based methods share one captured forward).
        accuracy: model -> accuracy on the images.
    """

    scores: dict[str, MethodScores]
    maps: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    choices: dict[str, dict[str, Any]]
    cost: dict[str, dict[str, float]]
    accuracy: dict[str, float]

    def table(self, *, intervals: bool = True) -> str:
        """One Markdown table: a row per model and method (baselines included)."""
        parts = []
        for i, (model, s) in enumerate(self.scores.items()):
            lines = s.table(intervals=intervals, label="model: method").splitlines()
            rows = [f"| {model}: {line[2:]}" for line in lines[2:]]
            parts += (lines[:2] if i == 0 else []) + rows
        return "\n".join(parts)

    def winners(self, key: str) -> dict[str, str]:
        """model -> the method with the best mean on score ``key`` (baselines excluded)."""
        return {model: s.best(key) for model, s in self.scores.items()}

    def winners_table(self, keys: Sequence[str]) -> str:
        """Markdown: per model and score in ``keys``, the model's accuracy, the winning
        method (baselines excluded), its mean and the centre baseline's."""
        rows = ["| model | accuracy | score | best method | mean | centre baseline |"]
        rows.append("|---|---:|---|---|---:|---:|")
        for model, s in self.scores.items():
            for key in keys:
                best = s.best(key)
                rows.append(
                    f"| {model} | {self.accuracy[model]:.2%} | {s.title(key)} | {best} | "
                    f"{s.summary[best][key][0]:.3f} | {s.summary[CENTRE][key][0]:.3f} |"
                )
        return "\n".join(rows)


def compare(
    models: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    *,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    methods: Mapping[str, Sequence[str]] | None = None,
    tolerance: float = 4,
    fractions: Sequence[float] | None = None,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Explain the same images with every method of every model and score them all.

    Args:
        models: name -> classifier (eval mode).
        images, labels, masks: the test images, their classes (the class every map
            explains) and the objects' masks (N x H x W).
        calibration: (images, masks) on which :func:`calibrate` picks blocks and the best
            head; without it, the last block and no best head.
        methods: model name -> method keys (default: every method the model has).
        tolerance: of the pointing game, in pixels.
        fractions: of the perturbation curves (default 0, 0.1, ..., 1).
        batch_size: images per forward.
        progress: called with a line per model (e.g. ``print``).
    """
    steps = tuple(FRACTIONS if fractions is None else fractions)
    scores, all_maps, choices, cost, accuracy = {}, {}, {}, {}, {}
    for name, model in models.items():
        if progress is not None:
            progress(f"{name}: explaining {len(images)} images")
        chosen = calibrate(model, *calibration, batch_size=batch_size) if calibration else {}
        start = time.perf_counter()
        preds = _predictions(model, images, batch_size)
        forward = (time.perf_counter() - start) / len(images)
        timings: dict[str, float] = {}
        keys = None if methods is None else methods.get(name)
        found = explain_maps(
            model,
            images,
            labels,
            methods=keys,
            choices=chosen,
            batch_size=batch_size,
            timings=timings,
        )
        cost[name] = {t: timings[t] / len(images) / forward for t in found}
        if progress is not None:
            progress(f"{name}: scoring {len(found)} methods and 2 baselines")
        scores[name] = score_methods(
            found,
            masks,
            model=model,
            images=images,
            labels=labels,
            tolerance=tolerance,
            batch_size=8 * batch_size,
            fractions=steps,
        )
        all_maps[name], choices[name] = found, chosen
        accuracy[name] = float((preds == torch.as_tensor(labels)).double().mean())
    return Comparison(scores, all_maps, choices, cost, accuracy)
