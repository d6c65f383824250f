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
    "find_attention_modules",
    "register",
    "register_attention",
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


def _register_builtins() -> None:
    from torchvision.ops import SqueezeExcitation as TVSqueezeExcitation

    from .modules import ChannelGate, SpatialGate, SpatialTransformer, SqueezeExcitation

    register(SqueezeExcitation, "channel", "gate")
    register(ChannelGate, "channel", "gate")
    register(SpatialGate, "spatial", "gate")
    register(SpatialTransformer, "transform", "theta")
    register(TVSqueezeExcitation, "channel", "scale_activation")


_register_builtins()
