"""Which modules' own code could start an attention kernel: read from their code, not run.

A capture follows every torch function call with a :class:`torch.overrides.TorchFunctionMode`
while a module that could compute attention runs (:mod:`attnviz.probes.kernels`). Every
call through the mode costs a few microseconds in Python; a CNN pays that on every
convolution although no convolution is attention. A kernel always starts with a call of
``softmax`` or ``scaled_dot_product_attention`` (what the tracker follows); so a module
whose own forward can call neither needs no mode while its own code runs, as long as no
softmax result is being followed (the capture keeps the mode on then).

:func:`starts_no_kernel` decides that from the module's code, conservatively: it reads the
names the forward's bytecode uses (``co_names``), and of every Python function it can
resolve from them (methods of the module, functions of its module's globals, functions of
``torch``, ``torch.nn.functional`` and ``torch.Tensor`` by name (torch's own Python
functions that start a kernel are named in :data:`KERNEL_NAMES`), nested functions, and
methods any class of the model defines), recursively. The module may start a kernel, and the
mode stays on, when any of these names is a softmax or the fused kernel, when a name leads
to something it cannot read (a table of functions such as Hugging Face's
``ALL_ATTENTION_FUNCTIONS``, a callable object, a function without Python code that is
not torch's own), or when a torch.nn softmax module runs inside it outside another
module's own frame. What it cannot see, and so does not claim: a callable handed to
``forward`` as an argument, or built from strings (``getattr(F, "soft" + "max")``); a
module type that does that can be read with the mode on by registering it, or by
``attnviz.probes.scan.ALWAYS.add(ModuleType)``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ALWAYS", "KERNEL_NAMES", "method_table", "starts_no_kernel"]

#: names whose call starts a kernel the tracker follows (softmax in all its spellings, the
#: fused kernel) or hides one (torch's own multi-head attention functions)
KERNEL_NAMES = frozenset(
    {
        "softmax",
        "_softmax",
        "softmin",
        "gumbel_softmax",
        "Softmax",
        "Softmin",
        "scaled_dot_product_attention",
        "multi_head_attention_forward",
        "MultiheadAttention",
    }
)

#: module types always followed with the mode on, whatever their code says
ALWAYS: set[type] = set()

_SOFTMAX_MODULES = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention)
_PLACES = (torch, F, torch.Tensor)
_DEPTH = 6  # function calls followed from a forward


def _code(obj: Any) -> types.CodeType | None:
    """The Python code an object runs when called, if it has any."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, functools.partial):
        return _code(obj.func)
    code = getattr(obj, "__code__", None)
    return code if isinstance(code, types.CodeType) else None


def _torch_own(func: Any) -> bool:
    """A function of torch itself: the ones of them that start a kernel are named in
    :data:`KERNEL_NAMES` (``F.multi_head_attention_forward``, ``F.gumbel_softmax``, ...)."""
    module = getattr(func, "__module__", None) or ""
    return module == "torch" or module.startswith("torch.")


def _harmless(value: Any) -> bool:
    """A name's value that runs no code of its own when used: data, modules, types."""
    return isinstance(
        value, (int, float, bool, str, bytes, type(None), torch.Tensor, torch.dtype, torch.device)
    ) or isinstance(value, (types.ModuleType, type, nn.Module))


@functools.lru_cache(maxsize=4096)
def _names(code: types.CodeType) -> frozenset[str]:
    """Every name a code object and the code objects nested in it use."""
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _names(const)
    return frozenset(out)


_METHODS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _class_methods(klass: type) -> tuple[tuple[str, Any], ...]:
    """The functions a class (and its bases outside torch.nn) defines, by name."""
    if klass in _METHODS:
        return _METHODS[klass]
    out = []
    for base in klass.__mro__:
        if base is object or base.__module__.startswith("torch.nn."):
            continue
        for name, value in vars(base).items():
            if isinstance(value, property):
                value = value.fget
            if _code(value) is not None:
                out.append((name, value))
    _METHODS[klass] = found = tuple(out)
    return found


def method_table(model: nn.Module | Iterable[nn.Module]) -> dict[str, list[Any]]:
    """Every function the classes of a model's modules define, by name: what a forward may
    call as ``self.attn.attention_map(x)`` (one table per capture). ``model``: the model,
    or its modules as ``model.modules()`` gave them."""
    modules = model.modules() if isinstance(model, nn.Module) else model
    table: dict[str, list[Any]] = {}
    for klass in {type(m) for m in modules}:
        for name, value in _class_methods(klass):
            table.setdefault(name, []).append(value)
    return table


class _Reader:
    """Follows a module's forward through the Python functions it calls."""

    def __init__(self, module: nn.Module, methods: dict[str, list[Any]]) -> None:
        self.module = module
        self.seen: set[types.CodeType] = set()
        self.methods = methods

    def starts(self, code: types.CodeType, globs: dict[str, Any], depth: int) -> bool:
        """Whether running ``code`` may call a softmax or the fused kernel."""
        if code in self.seen:
            return False
        self.seen.add(code)
        names = _names(code)
        if names & KERNEL_NAMES:
            return True
        if depth >= _DEPTH:
            return True  # too deep to follow: assume it may
        for name in names:
            for value in self._resolve(name, globs):
                if self._value_starts(value, depth):
                    return True
        return False

    def _resolve(self, name: str, globs: dict[str, Any]) -> list[Any]:
        """What ``name`` may stand for: the module's own attribute (read statically: no
        property runs), a global of the function, a method of the model's classes, a
        Python function of torch."""
        found = []
        for space in (self.module.__dict__, self.module._modules):
            if name in space:
                found.append(space[name])
        if name in globs:
            found.append(globs[name])
        found += self.methods.get(name, [])
        for place in _PLACES:
            value = getattr(place, name, None)
            if value is not None and _code(value) is not None:
                found.append(value)
        return found

    def _value_starts(self, value: Any, depth: int) -> bool:
        if _harmless(value):
            return False
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            items = value.values() if isinstance(value, dict) else value
            return any(not _harmless(v) for v in items)  # a table of functions: unknown
        code = _code(value)
        if code is not None:
            func = value.func if isinstance(value, functools.partial) else value
            func = getattr(func, "__func__", func)
            if _torch_own(func):
                return False  # torch's own Python functions start kernels by name only
            return self.starts(code, getattr(func, "__globals__", {}), depth + 1)
        if callable(value):
            # torch's and Python's own functions without Python code cannot start a
            # kernel but by their name (checked above); any other callable object: unknown
            owner = getattr(value, "__module__", None) or ""
            if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)):
                return False
            if owner.startswith(("torch", "builtins", "math", "operator", "functools")):
                return False
            call = type(value).__call__
            code = _code(call)
            if code is not None:
                return self.starts(code, getattr(call, "__globals__", {}), depth + 1)
            return True
        return False


def _softmax_inside(module: nn.Module, frames: Callable[[nn.Module], bool]) -> bool:
    """A torch.nn softmax module that runs in ``module``'s own frame (not inside a child
    that is a frame of its own)."""
    for child in module.children():
        if isinstance(child, _SOFTMAX_MODULES):
            return True
        if not frames(child) and _softmax_inside(child, frames):
            return True
    return False


def starts_no_kernel(
    module: nn.Module, frames: Callable[[nn.Module], bool], methods: dict[str, list[Any]]
) -> bool:
    """Whether ``module``'s own forward surely calls no softmax and no fused attention kernel
    (see the module docstring). ``frames(m)``: whether a descendant runs as a frame of its
    own (its own reading decides for it); ``methods``: :func:`method_table` of the model.
    False whenever in doubt."""
    if type(module) in ALWAYS:
        return False
    forward = module.__dict__.get("forward", type(module).forward)  # patched on the instance
    code = _code(forward)
    if code is None:
        return False
    if _softmax_inside(module, frames):
        return False
    func = getattr(forward, "__func__", forward)
    return not _Reader(module, methods).starts(code, getattr(func, "__globals__", {}), 0)
