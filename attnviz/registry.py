"""Which module types attnviz understands, and where their attention lives.

A registry entry says, for a module type, which *kind* of attention it applies and where
capture reads it: the output of a submodule, or a torch function called in the module's
forward::

    attnviz.register_attention_type(timm.layers.SEModule, kind="channel", submodule="gate")
    attnviz.register_attention_type(MyLightGate, kind="channel", function="sigmoid")  # F.sigmoid

Kinds (:data:`KINDS`, one record class each in :mod:`attnviz.records`):

- ``"channel"``: one weight per channel; the attention is B x C (or B x C x 1 x 1,
  B x 1 x C) and the module's output is its input times it;
- ``"spatial"``: one weight per position, B x 1 x H x W (or B x H x W);
- ``"elementwise"``: one weight per channel and position, B x C x H x W;
- ``"axial"``: a gate applied along rows and along columns, computed by two calls of the
  same submodule (B x C x H x 1, then B x C x 1 x W);
- ``"branch"`` and ``"context"``: attention over paths (SKNet, ResNeSt) and global-context
  pooling (GCNet), read by module-specific probes;
- ``"transform"``: a spatial transformer, its submodule output theta (B x 2 x 3);
- ``"self"``: self-attention, the attention matrix (B x Q x K, B*heads x Q x K or
  B x heads x Q x K), from a submodule or a ``softmax`` in the forward.

Entries are keyed by the class, or by its qualified name as a string (so that the
entries for timm's layers cost nothing, and need no timm, until a model holds one).
Out of the box attnviz knows its own modules, torchvision's ``SqueezeExcitation``
and every attention layer of timm's ``create_attn`` (:func:`list_attention_types` lists them).

For a module whose attention needs more than a submodule or a function (several pieces, a
composition), write a :class:`attnviz.probes.Probe` and register it with ``probe=``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Union

from torch import nn

from .probes import (
    GateProbe,
    Probe,
    Refusal,
    SelfAttentionProbe,
    TransformProbe,
)
from .probes.base import FUNCTIONS
from .records import KINDS

__all__ = [
    "KINDS",
    "AttentionSpec",
    "attention_type",
    "find_attention_modules",
    "get_attention_layer",
    "list_attention_layers",
    "list_attention_types",
    "markdown_table",
    "refuse_attention_type",
    "register_attention_layer",
    "register_attention_type",
    "spec_for",
    "unregister_attention_type",
]

ProbeFactory = Callable[[str, nn.Module], Union[Probe, Refusal]]
ModuleType = Union[type, str]

_GATES = ("channel", "spatial", "elementwise", "axial")


@dataclass(frozen=True)
class AttentionSpec:
    """Where a module type's attention lives.

    Attributes:
        kind: one of :data:`KINDS` (a probe may decide per instance), or ``"refused"``.
        submodule: dotted path, inside the module, of the submodule whose output is the
            attention (``""``: none, or the module itself).
        function: a torch function family (``"sigmoid"``, ``"softmax"``) whose call in the
            module's forward computes the attention, when no submodule does.
        probe: a factory ``(name, module) -> Probe`` for attention that needs more.
        note: what the module is, for listings (paper, layer name).
        reason: for a refused type, why capture does not record it.
    """

    kind: str
    submodule: str = ""
    function: str | None = None
    probe: ProbeFactory | None = None
    note: str = ""
    reason: str = ""

    def make(self, name: str, module: nn.Module) -> Probe | Refusal:
        """The probe that reads ``module`` (or the refusal that says why not)."""
        if self.kind == "refused":
            return Refusal(name, type(module).__name__, self.reason)
        if self.probe is not None:
            return self.probe(name, module)
        if self.kind in _GATES:
            return GateProbe(
                name, module, self.kind, submodule=self.submodule, function=self.function
            )
        if self.kind == "transform":
            return TransformProbe(name, module, submodule=self.submodule)
        return SelfAttentionProbe(name, module, submodule=self.submodule, function=self.function)

    def where(self) -> str:
        """Where the attention is read, in words."""
        if self.kind == "refused":
            return "not recorded"
        if self.function:
            return f"`{self.function}` in `forward`"
        if self.submodule:
            return f"output of `{self.submodule}`"
        return "module-specific probe" if self.probe else "the module's output"


_REGISTRY: dict[ModuleType, AttentionSpec] = {}
_LOOKUP: dict[type, AttentionSpec | None] = {}  # spec_for's answers, cleared on every change


def _qualname(t: ModuleType) -> str:
    return t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}"


def _check_type(module_type: ModuleType) -> None:
    if isinstance(module_type, str):
        if "." not in module_type or not all(p.isidentifier() for p in module_type.split(".")):
            raise TypeError(
                f"a module type given by name must be a qualified class name such as "
                f"'timm.layers.squeeze_excite.SEModule', got {module_type!r}"
            )
    elif not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"module_type must be an nn.Module subclass or its qualified name, got {module_type!r}"
        )


def _add(module_type: ModuleType, spec: AttentionSpec, overwrite: bool) -> None:
    _check_type(module_type)
    key = _qualname(module_type) if isinstance(module_type, str) else module_type
    if not overwrite and (key in _REGISTRY or _qualname(module_type) in _REGISTRY):
        old = _REGISTRY.get(key) or _REGISTRY[_qualname(module_type)]
        raise ValueError(
            f"{_qualname(module_type)} is registered already as {old}; "
            "pass overwrite=True to replace it"
        )
    _REGISTRY[key] = spec
    _LOOKUP.clear()


def register_attention_type(
    module_type: ModuleType,
    kind: str,
    submodule: str = "",
    *,
    function: str | None = None,
    probe: ProbeFactory | None = None,
    note: str = "",
    overwrite: bool = False,
) -> ModuleType:
    """Teach :func:`attnviz.capture` a new attention module type.

    Args:
        module_type: the ``nn.Module`` subclass (subclasses of it match too), or its
            qualified name (``"package.module.Class"``), matched without importing it.
        kind: one of :data:`KINDS`.
        submodule: dotted path of the submodule whose output is the attention, e.g.
            ``"gate"``; ``""`` means the module's own output (or see ``function``).
        function: for attention computed by a function inside ``forward`` (e.g.
            ``torch.sigmoid(x)`` or ``x.softmax(-1)``): its family, ``"sigmoid"`` or
            ``"softmax"``. Capture records that call's output, the very tensor used.
        probe: for anything else, a factory ``(name, module) -> Probe``.
        note: a short description for listings.
        overwrite: replace an existing entry instead of refusing it.

    Returns:
        ``module_type``, so this can be used as a decorator through
        :func:`attention_type`.

    Raises:
        TypeError: ``module_type`` is not an ``nn.Module`` subclass (or qualified name).
        ValueError: unknown kind or function, a kind that needs a probe, both a submodule
            and a function, or the type is registered already.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(submodule, str):
        raise TypeError(f"submodule must be a dotted name (str), got {submodule!r}")
    if function is not None and function not in FUNCTIONS:
        raise ValueError(f"function must be one of {sorted(FUNCTIONS)}, got {function!r}")
    if submodule and function:
        raise ValueError(
            "give the submodule whose output is the attention, or the function, not both"
        )
    if probe is None and kind in ("branch", "context"):
        raise ValueError(f"kind {kind!r} is read by a probe: pass probe=(name, module) -> Probe")
    if probe is None and kind == "self" and not (submodule or function):
        raise ValueError(
            "self-attention needs submodule= (its output is the matrix) or function='softmax'"
        )
    _add(module_type, AttentionSpec(kind, submodule, function, probe, note), overwrite)
    return module_type


def refuse_attention_type(
    module_type: ModuleType, reason: str, *, note: str = "", overwrite: bool = False
) -> None:
    """Recognise a module type that applies no attention a map could honestly show.

    Capture lists such modules in ``Recording.refused`` with ``reason`` and never records
    them; asking for one by name is an error that gives the reason.
    """
    _add(module_type, AttentionSpec("refused", note=note, reason=reason), overwrite)


def attention_type(kind: str, submodule: str = "", **kwargs) -> Callable[[type], type]:
    """Class decorator form of :func:`register_attention_type`."""

    def decorate(module_type: type) -> type:
        register_attention_type(module_type, kind, submodule, **kwargs)
        return module_type

    return decorate


def unregister_attention_type(module_type: ModuleType) -> None:
    """Forget a registered type (``KeyError`` if it is not registered)."""
    if module_type in _REGISTRY:
        del _REGISTRY[module_type]
    else:
        del _REGISTRY[_qualname(module_type)]
    _LOOKUP.clear()


def list_attention_types(pattern: str = "*") -> dict[str, AttentionSpec]:
    """Registered types whose qualified name matches the glob ``pattern``."""
    return {
        _qualname(t): spec
        for t, spec in _REGISTRY.items()
        if fnmatch.fnmatchcase(_qualname(t), pattern)
    }


def spec_for(module: nn.Module) -> AttentionSpec | None:
    """The spec of ``module``'s type (nearest registered class in its MRO), or ``None``."""
    cls = type(module)
    if cls not in _LOOKUP:
        _LOOKUP[cls] = next(
            (
                spec
                for t in cls.__mro__
                if (spec := _REGISTRY.get(t) or _REGISTRY.get(_qualname(t))) is not None
            ),
            None,
        )
    return _LOOKUP[cls]


def find_attention_modules(
    model: nn.Module | Iterable[tuple[str, nn.Module]],
) -> Iterator[tuple[str, nn.Module, AttentionSpec]]:
    """Yield ``(qualified name, module, spec)`` for every recognised module, in definition order.

    ``model`` may also be what ``model.named_modules()`` gave, to walk the model once.
    """
    named = model.named_modules() if isinstance(model, nn.Module) else model
    for name, module in named:
        spec = spec_for(module)
        if spec is not None:
            yield name, module, spec


def markdown_table(errors: Mapping[str, float] | None = None, pattern: str = "*") -> str:
    """The registered types as a Markdown table, one row each.

    Columns: the qualified name, the kind, where capture reads the attention, the largest
    relative error of the faithfulness checks measured on an example model (``errors``,
    qualified name -> error, as ``make bench`` records them; "-" where none was measured)
    and a note.
    """
    lines = [
        "| module | kind | read from | largest check error | what it is |",
        "|---|---|---|---:|---|",
    ]
    for name, spec in sorted(list_attention_types(pattern).items()):
        err = (errors or {}).get(name)
        shown = "-" if err is None else ("0 (bit-exact)" if err == 0 else f"{err:.1e}")
        if spec.kind == "refused":
            shown = "not recorded"
        notes = spec.note + (f": {spec.reason}" if spec.reason else "")
        lines.append(f"| `{name}` | {spec.kind} | {spec.where()} | {shown} | {notes} |")
    return "\n".join(lines)


# -- attention layers by name, for models that take ``attention="se"`` ----------------------
_LAYERS: dict[str, Callable[..., nn.Module]] = {}


def register_attention_layer(
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


def list_attention_layers() -> list[str]:
    """Names accepted by :func:`get_attention_layer` (and by ``attention=`` in attnviz's models)."""
    return sorted(_LAYERS)


def get_attention_layer(name: str | None, channels: int, **kwargs) -> nn.Module:
    """Build the attention layer ``name`` for ``channels`` channels (``None``: identity)."""
    if name is None:
        return nn.Identity()
    if name not in _LAYERS:
        raise ValueError(
            f"unknown attention {name!r}; known: {list_attention_layers()} (or None). "
            "Add one with attnviz.register_attention_layer(name, factory)."
        )
    return _LAYERS[name](channels, **kwargs)


def _register_builtins() -> None:
    from .modules import (
        CBAM,
        ChannelGate,
        NonLocal,
        SpatialGate,
        SpatialTransformer,
        SqueezeExcitation,
        TwoStageTransformer,
    )
    from .probes.attention import TwoStageProbe
    from .probes.timm import register_timm
    from .probes.tokens import MultiheadAttentionProbe

    register_attention_type(SqueezeExcitation, "channel", "gate", note="SE (Hu et al., 2018)")
    register_attention_type(ChannelGate, "channel", "gate", note="CBAM's channel gate Mc")
    register_attention_type(SpatialGate, "spatial", "gate", note="CBAM's spatial gate Ms")
    register_attention_type(
        SpatialTransformer, "transform", "theta", note="STN (Jaderberg et al., 2015)"
    )
    register_attention_type(
        TwoStageTransformer,
        "transform",
        probe=TwoStageProbe,
        note="two-stage STN: window (scale, translation), then rotation",
    )
    register_attention_type(NonLocal, "self", "attend", note="non-local block (Wang et al., 2018)")
    register_attention_type(
        # by qualified name, so that importing attnviz does not import torchvision
        "torchvision.ops.misc.SqueezeExcitation",
        "channel",
        "scale_activation",
        note="MobileNetV3, EfficientNet, RegNetY",
    )
    register_timm(register_attention_type, refuse_attention_type)
    register_attention_type(
        nn.MultiheadAttention,
        "self",
        probe=MultiheadAttentionProbe,
        note="torch's multi-head attention (torchvision ViT): per-head weights",
    )
    register_attention_layer("se", SqueezeExcitation)
    register_attention_layer("cbam", CBAM)
    register_attention_layer("nonlocal", NonLocal)


_register_builtins()
