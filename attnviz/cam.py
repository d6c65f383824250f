"""Grad-CAM and relatives through the grad-cam package, leaving the model exactly as it was.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017: for class c and the activations A^k (k = 1..K channels) of a
layer, the weights are alpha^c_k = mean_ij dy^c / dA^k_ij (eq. 1) and the map is
L^c = ReLU(sum_k alpha^c_k A^k) (eq. 2). The CBAM paper (Woo et al., ECCV 2018, Fig. 4)
compares ResNet-50, +SE and +CBAM with these maps on the last block.

Every map here is computed by the ``grad-cam`` package (``pytorch_grad_cam``); this module
only makes it safe and fast to call:

- grad-cam's ``BaseCAM`` calls ``model.eval()`` and leaves it so, zeroes and accumulates
  parameters' ``.grad`` (``model.zero_grad()`` then ``loss.backward()``), and keeps hooks on
  the target layer until released. :func:`gradcam` saves every module's train/eval flag,
  every parameter's ``requires_grad`` and ``.grad`` (the very tensor), restores them in a
  ``finally`` and releases grad-cam's hooks (``activations_and_grads.release()``, what its
  ``__exit__`` does, without its ``__exit__``'s swallowing of ``IndexError``).
- The gradient that Grad-CAM needs, dy/dA, does not depend on any parameter before the
  target layer, yet a plain backward computes all their weight gradients. With
  ``freeze_before=True`` those parameters get ``requires_grad=False`` for the duration
  (measured on ResNet-18: the backward went from about 3x a forward to 1.1x); the maps
  are identical.

grad-cam is imported on first use (it pulls in OpenCV and SciPy, seconds of import time),
so importing :mod:`attnviz.cam` stays cheap.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .probes.tokens import token_layout
from .registry import find_attention_modules
from .running import inference, model_device

__all__ = [
    "CAM_METHODS",
    "default_target_layer",
    "gradcam",
    "resolve_layer",
    "softmax_scores",
    "token_reshape",
]

#: method name -> class name in ``pytorch_grad_cam``
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}


# -- layers ----------------------------------------------------------------------------------
def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule of ``model`` named ``layer`` (``"layer4.0.conv2"``), or ``layer`` itself.

    Args:
        model: the network.
        layer: a qualified submodule name, or a module that must be part of ``model``.

    Returns:
        The module.

    Raises:
        ValueError: no such submodule (the message lists the closest names and the
            model's top-level children), or a module that is not inside ``model``.
        TypeError: ``layer`` is neither a string nor a module.
    """
    if isinstance(layer, nn.Module):
        if any(m is layer for m in model.modules()):
            return layer
        raise ValueError(
            f"the target layer ({type(layer).__name__}) is not a submodule of this "
            f"{type(model).__name__}; pass one of its modules or a name such as "
            f"{_few([n for n, _ in model.named_modules() if n][-3:])}"
        )
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str) or an nn.Module, got {layer!r}")
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return model.get_submodule(layer)
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
    children = [n for n, _ in model.named_children()]
    hint = f"closest names: {_few(close)}; " if close else ""
    raise ValueError(
        f"{type(model).__name__} has no submodule {layer!r}; {hint}top-level children: "
        f"{_few(children)}; all names: [n for n, _ in model.named_modules()]"
    )


def _few(names: Sequence[str], n: int = 12) -> str:
    shown = ", ".join(repr(s) for s in names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}]"


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def default_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM usually explains: the last convolutional block.

    ResNets (torchvision's, :func:`attnviz.models.resnet`, ``SmallResNet``): ``layer4[-1]``,
    as grad-cam's README and the CBAM paper. Vision transformers: the first LayerNorm of
    the last block (torchvision ``encoder.layers[-1].ln_1``, timm ``blocks[-1].norm1``),
    as grad-cam's ViT tutorial; its tokens are laid on the patch grid by
    :func:`token_reshape`. Swin (torchvision, timm): its last stage, channels-last maps
    made channels-first by :func:`token_reshape`. Models with a ``features`` ``nn.Sequential``
    (VGG, MobileNet, EfficientNet, ``SmallCNN``): its last element that contains a
    convolution. Otherwise: the last ``nn.Conv2d`` in registration order that is not part of
    an attention module (a CBAM spatial gate's 2 -> 1 convolution explains nothing).

    Raises:
        ValueError: the model has no convolution; pass the layer explicitly.
    """
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Sequential) and len(layer4):
        return layer4[-1]
    swin = _channels_last_stages(model)
    if swin is not None:
        return swin[-1]
    vit = _vit_target_layer(model)
    if vit is not None:
        return vit
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        convs = [m for m in features if _has_conv(m)]
        if convs:
            return convs[-1]
    inside = {id(m) for _, a, _ in find_attention_modules(model) for m in a.modules()}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in inside]
    if not convs:
        raise ValueError(
            f"{type(model).__name__} has no Conv2d outside attention modules; pass "
            "target_layer (a module or its name, e.g. 'features.7')"
        )
    return convs[-1]


#: hierarchical transformers whose stages return B x H x W x C (channels last)
_CHANNELS_LAST = {
    "torchvision.models.swin_transformer.SwinTransformer": "features",
    "timm.models.swin_transformer.SwinTransformer": "layers",
    "timm.models.swin_transformer_v2.SwinTransformerV2": "layers",
}


def _channels_last_stages(model: nn.Module) -> nn.Sequential | None:
    """Swin's stages (torchvision ``features``, timm ``layers``), whose outputs are
    channels-last maps, or None for other models."""
    cls = type(model)
    attr = _CHANNELS_LAST.get(f"{cls.__module__}.{cls.__qualname__}")
    stages = getattr(model, attr, None) if attr else None
    return stages if isinstance(stages, nn.Sequential) and len(stages) else None


def _vit_target_layer(model: nn.Module) -> nn.Module | None:
    if token_layout(model) is None:
        return None
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(layers, nn.Sequential) and len(layers) and hasattr(layers[-1], "ln_1"):
        return cast(nn.Module, layers[-1].ln_1)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(blocks[-1], "norm1"):
        return cast(nn.Module, blocks[-1].norm1)
    return None


def token_reshape(model: nn.Module, image_size: Sequence[int] | None = None) -> Any:
    """grad-cam's ``reshape_transform`` for a vision transformer, or None for other models.

    Swin (torchvision's and timm's): its stages' channels-last maps (B x H x W x C) become
    B x C x H x W.

    Drops the model's named leading tokens (class, distillation, register tokens; see
    :func:`attnviz.token_layout`) and lays the patch tokens (B x N x C) on the patch grid
    as B x C x h x w, the layout Grad-CAM averages gradients over.

    Args:
        model: the network.
        image_size: (H, W) of its input, from which the patch grid follows (default: a
            square grid).
    """
    if _channels_last_stages(model) is not None:  # Swin: B x H x W x C -> B x C x H x W
        return lambda t: t.permute(0, 3, 1, 2) if t.dim() == 4 else t
    layout = token_layout(model)
    if layout is None:
        return None
    if image_size is not None:
        layout.image_size = (int(image_size[0]), int(image_size[1]))

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 3:
            return t
        grid, p = layout.grid(t.shape[1]), len(layout.prefix)
        if grid is None and layout.image_size is not None:  # patches only (CaiT's layers)
            h, w = (s // q for s, q in zip(layout.image_size, layout.patch))
            grid, p = ((h, w), 0) if h * w == t.shape[1] else (None, p)
        if grid is None:
            raise ValueError(
                f"{t.shape[1]} tokens do not fit {len(layout.prefix)} leading tokens "
                f"{list(layout.prefix)} and a patch grid"
            )
        return t[:, p:].reshape(t.shape[0], *grid, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


# -- the caller's state ----------------------------------------------------------------------
class _ModelState:
    """Every module's ``training`` flag and every parameter's ``requires_grad`` and ``.grad``."""

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        self.params = list(model.parameters())
        self.flags = [p.requires_grad for p in self.params]
        self.grads = [p.grad for p in self.params]

    def detach_grads(self) -> None:
        """Set every ``.grad`` to None, so nothing grad-cam does can reach the caller's tensors."""
        for p in self.params:
            p.grad = None

    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for p, flag, grad in zip(self.params, self.flags, self.grads):
            p.requires_grad_(flag)
            p.grad = grad


def _freeze_before(model: nn.Module, layer: nn.Module) -> list[Any]:
    """Pre-hooks that set ``requires_grad=False`` on parameters of modules run before ``layer``.

    The order is the true forward order, observed during the CAM's own forward pass (no
    extra pass): every module's forward pre-hook fires when it is called; until the target
    layer's pre-hook has fired, the module's own parameters (``recurse=False``) are frozen
    right before they are used. Registration order would be wrong for models whose
    ``forward`` calls modules in another order than ``__init__`` creates them. Freezing
    never changes the maps: dy/dA depends only on what runs after A, and the target's
    output is made to require grad if nothing before it does (:func:`_track_output`).
    Flags are restored by the caller (:class:`_ModelState`).
    """
    started = [False]

    def pre_hook(module: nn.Module, _args: Any) -> None:
        if module is model:
            started[0] = False  # a new forward pass (one per batch)
        if module is layer:
            started[0] = True
        elif not started[0]:
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)

    return [m.register_forward_pre_hook(pre_hook) for m in model.modules()]


def _track_output(_module: nn.Module, _args: Any, output: Any) -> Any:
    """Make the target layer's output a gradient leaf when nothing before it needs grad.

    Happens with a parameter-free target layer under ``freeze_before`` or with a frozen
    backbone; without it grad-cam would find no gradient. The values are unchanged.
    """
    if isinstance(output, torch.Tensor) and output.is_floating_point() and not output.requires_grad:
        return output.detach().requires_grad_()
    return None


def _check_classes(largest: int) -> Any:
    """A forward hook on the model refusing targets beyond its K outputs, before the backward."""

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 2 and largest >= output.shape[1]:
            raise ValueError(
                f"target class {largest} is not a class of the model's {output.shape[1]}-way output"
            )

    return hook


# -- inputs ----------------------------------------------------------------------------------
def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images must be (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be float network inputs, got {images.dtype}")
    return images.detach()


def _check_targets(targets: Any, n: int) -> list[int] | None:
    """None (the predicted class), one class index for all, or N class indices."""
    if targets is None:
        return None
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        return [int(targets)] * n
    t = torch.as_tensor(targets)
    if t.dim() != 1 or len(t) != n or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(
            f"targets must be None (the predicted class), one class index or {n} class "
            f"indices, got {targets!r}"
        )
    return [int(k) for k in t.tolist()]


def _check_batch(batch_size: int | None, n: int) -> int:
    if batch_size is None:
        return n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return batch_size


def _cam_class(method: str) -> type:
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {sorted(CAM_METHODS)}, got {method!r}")
    import pytorch_grad_cam  # here: seconds of import time, paid on first use only

    return getattr(pytorch_grad_cam, CAM_METHODS[method])


# -- maps ------------------------------------------------------------------------------------
def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: str | nn.Module | None = None,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    *,
    method: str = "gradcam",
    freeze_before: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Grad-CAM maps (or Grad-CAM++ / LayerCAM) of a batch, computed by the grad-cam package.

    grad-cam computes L^c (eq. 2 of the Grad-CAM paper) on the target layer's grid, scales
    each map to [0, 1] (its minimum to 0, its maximum to 1) and resizes it to the input's
    H x W with OpenCV's bilinear ``resize`` (pixel-centre aligned, as
    ``render.upsample_map``). Maps are computed in eval mode, as grad-cam does.

    The model comes back untouched: every module's train/eval flag, every parameter's
    ``requires_grad`` and ``.grad`` (the same tensor, or None) are restored, and no hook
    stays behind, also when an error is raised.

    Args:
        model: a classifier returning N x K logits.
        images: N x C x H x W network inputs (moved to the model's device batch by batch).
        target_layer: the layer whose activations A are explained: a module of ``model``
            or its qualified name (``"layer4.0"``); None: :func:`default_target_layer`.
        targets: the class c to explain: None (each image's predicted class), one class
            index for all images, or N indices; grad-cam's ``ClassifierOutputTarget``.
        method: ``"gradcam"``, ``"gradcam++"`` or ``"layercam"`` (:data:`CAM_METHODS`).
        freeze_before: set ``requires_grad=False`` on the parameters of every module that
            runs before the target layer for the duration (forward order, observed with
            pre-hooks in the same pass; see :func:`_freeze_before`). Identical maps, a
            cheaper backward.
        batch_size: images per forward/backward pass (None: all at once).

    Returns:
        N x H x W float32 CPU tensor in [0, 1].

    Raises:
        ValueError: bad images, targets, batch size, method or layer; a model without
            parameters; called under ``torch.inference_mode()``.
        TypeError: non-tensor or integer images.
    """
    images = _check_images(images)
    n = len(images)
    classes = _check_targets(targets, n)
    batch = _check_batch(batch_size, n)
    cam_class = _cam_class(method)
    layer = (
        default_target_layer(model) if target_layer is None else resolve_layer(model, target_layer)
    )
    if next(model.parameters(), None) is None:
        raise ValueError(f"{type(model).__name__} has no parameters; Grad-CAM needs a network")
    if torch.is_inference_mode_enabled():
        raise ValueError("gradcam() needs gradients: call it outside torch.inference_mode()")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    state, handles, cam = _ModelState(model), [], None
    try:
        state.detach_grads()
        handles.append(layer.register_forward_hook(_track_output))  # runs before grad-cam's
        if classes is not None:
            handles.append(model.register_forward_hook(_check_classes(max(classes))))
        if freeze_before:
            handles += _freeze_before(model, layer)
        out = []
        with torch.enable_grad():
            cam = cam_class(
                model=model,
                target_layers=[layer],
                reshape_transform=token_reshape(model, images.shape[-2:]),
            )
            for i in range(0, n, batch):
                chunk = None if classes is None else classes[i : i + batch]
                goals = None if chunk is None else [ClassifierOutputTarget(k) for k in chunk]
                out.append(torch.from_numpy(cam(input_tensor=images[i : i + batch], targets=goals)))
                cam.outputs = None  # grad-cam keeps the last output, and with it the graph
                state.detach_grads()  # this batch's parameter gradients: not the caller's
    finally:
        if cam is not None:
            cam.activations_and_grads.release()
        for h in handles:
            h.remove()
        state.restore()
    return torch.cat(out).float()


def softmax_scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """P of the target class: ``softmax(model(x))[c]``, the score the CBAM paper prints
    under each Grad-CAM picture (Fig. 4, "P = 0.96").

    Args:
        model: a classifier returning N x K logits; run in eval mode under ``no_grad``,
            every module's train/eval flag restored afterwards.
        images: N x C x H x W network inputs.
        targets: None (the predicted class, argmax of the logits), one index or N indices.
        batch_size: images per forward pass (None: all at once).

    Returns:
        N float32 probabilities (CPU).

    Raises:
        ValueError: bad shapes or targets, outputs that are not N x K logits.
    """
    images = _check_images(images)
    n = len(images)
    classes = _check_targets(targets, n)
    batch = _check_batch(batch_size, n)
    device = model_device(model)
    out = []
    with inference(model):
        for i in range(0, n, batch):
            logits = model(images[i : i + batch].to(device))
            out.append(_pick(logits, classes, i))
    return torch.cat(out)


def _pick(logits: Any, classes: list[int] | None, start: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"the model must return N x K logits, got {shape}")
    probs = logits.detach().float().softmax(dim=1).cpu()
    if classes is None:
        index = logits.detach().argmax(dim=1).cpu()
    else:
        index = torch.tensor(classes[start : start + len(logits)])
        bad = [k for k in index.tolist() if not 0 <= k < probs.shape[1]]
        if bad:
            raise ValueError(f"targets {bad} are not classes of a {probs.shape[1]}-way output")
    return probs.gather(1, index[:, None])[:, 0]
