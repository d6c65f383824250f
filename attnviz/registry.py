"""Which module types attnviz understands, and where their attention lives.

A registry entry says, for a module type, which *kind* of attention it applies
and which submodule's output is that attention::

    attnviz.register(timm.layers.SEModule, kind="channel", submodule="gate")

Kinds:

- ``"channel"``: one weight per channel, submodule output B x C (or B x C x 1 x 1);
- ``"spatial"``: one weight per position, output B x 1 x H x W (or B x H x W);
- ``"transform"``: a spatial transformer; submodule output theta (B x 2 x 3), and the
  module's own output is recorded as the transformed image;
- ``"self"``: self-attention; submodule output the attention matrix (B x Q x K).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

__all__ = [
    "KINDS",
    "AttentionSpec",
    "attention_layers",
    "find_attention_modules",
    "make_attention",
    "register",
    "register_attention",
    "register_layer",
    "registered",
    "spec_for",
    "unregister",
]

KINDS = ("channel", "spatial", "transform", "self")


@dataclass(frozen=True)
class AttentionSpec:
    """Where a module type's attention lives.

    Attributes:
        kind: one of :data:`KINDS`.
        submodule: dotted path, inside the module, of the submodule whose output is
            the attention (``""`` for the module itself).
    """

    kind: str
    submodule: str


_REGISTRY: dict[type, AttentionSpec] = {}


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def register(module_type: type, kind: str, submodule: str = "", *, overwrite: bool = False) -> type:
    """Teach :func:`attnviz.capture` a new attention module type.

    Args:
        module_type: the ``nn.Module`` subclass (subclasses of it match too).
        kind: ``"channel"``, ``"spatial"``, ``"transform"`` or ``"self"``.
        submodule: dotted path of the submodule whose output is the attention,
            e.g. ``"gate"``; ``""`` means the module's own output.
        overwrite: replace an existing entry instead of refusing it.

    Returns:
        ``module_type``, so this can be used as a decorator through
        :func:`register_attention`.

    Raises:
        TypeError: ``module_type`` is not an ``nn.Module`` subclass.
        ValueError: unknown kind, or the type is registered already.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(submodule, str):
        raise TypeError(f"submodule must be a dotted name (str), got {submodule!r}")
    if module_type in _REGISTRY and not overwrite:
        raise ValueError(
            f"{_qualname(module_type)} is registered already as {_REGISTRY[module_type]}; "
            "pass overwrite=True to replace it"
        )
    _REGISTRY[module_type] = AttentionSpec(kind, submodule)
    return module_type


def register_attention(kind: str, submodule: str = "") -> Callable[[type], type]:
    """Class decorator form of :func:`register`."""

    def decorate(module_type: type) -> type:
        return register(module_type, kind, submodule)

    return decorate


def unregister(module_type: type) -> None:
    """Forget a registered type (``KeyError`` if it is not registered)."""
    del _REGISTRY[module_type]


def registered(pattern: str = "*") -> dict[str, AttentionSpec]:
    """Registered types whose qualified name matches the glob ``pattern``."""
    return {
        _qualname(t): spec
        for t, spec in _REGISTRY.items()
        if fnmatch.fnmatchcase(_qualname(t), pattern)
    }


def spec_for(module: nn.Module) -> AttentionSpec | None:
    """The spec of ``module``'s type (nearest registered class in its MRO), or ``None``."""
    for t in type(module).__mro__:
        if t in _REGISTRY:
            return _REGISTRY[t]
    return None


def find_attention_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, AttentionSpec]]:
    """Yield ``(qualified name, module, spec)`` for every recognised module, in definition order."""
    for name, module in model.named_modules():
        spec = spec_for(module)
        if spec is not None:
            yield name, module, spec


# -- attention layers by name, for models that take ``attention="se"`` ----------------------
_LAYERS: dict[str, Callable[..., nn.Module]] = {}


def register_layer(
    name: str, factory: Callable[..., nn.Module], *, overwrite: bool = False
) -> Callable[..., nn.Module]:
    """Make an attention layer buildable by name, e.g. ``attention="se"`` in attnviz's models.

    Args:
        name: the name models accept.
        factory: called as ``factory(channels, **kwargs)`` (the channel count first, as
            timm's ``create_attn`` does), returning an ``nn.Module`` that keeps the shape.
        overwrite: replace an existing entry instead of refusing it.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable as factory(channels, **kwargs), got {factory!r}")
    if name in _LAYERS and not overwrite:
        raise ValueError(
            f"attention layer {name!r} exists already; pass overwrite=True to replace it"
        )
    _LAYERS[name] = factory
    return factory


def attention_layers() -> list[str]:
    """Names accepted by :func:`make_attention` (and by ``attention=`` in attnviz's models)."""
    return sorted(_LAYERS)


def make_attention(name: str | None, channels: int, **kwargs) -> nn.Module:
    """Build the attention layer ``name`` for ``channels`` channels (``None``: identity)."""
    if name is None:
        return nn.Identity()
    if name not in _LAYERS:
        raise ValueError(
            f"unknown attention {name!r}; known: {attention_layers()} (or None). "
            "Add one with attnviz.register_layer(name, factory)."
        )
    return _LAYERS[name](channels, **kwargs)


def _register_builtins() -> None:
    from torchvision.ops import SqueezeExcitation as TVSqueezeExcitation

    from .modules import ChannelGate, SpatialGate, SpatialTransformer, SqueezeExcitation

    register(SqueezeExcitation, "channel", "gate")
    register(ChannelGate, "channel", "gate")
    register(SpatialGate, "spatial", "gate")
    register(SpatialTransformer, "transform", "theta")
    register(TVSqueezeExcitation, "channel", "scale_activation")
    from .modules import CBAM, NonLocal

    register(NonLocal, "self", "attend")
    register_layer("se", SqueezeExcitation)
    register_layer("cbam", CBAM)
    register_layer("nonlocal", NonLocal)


_register_builtins()
