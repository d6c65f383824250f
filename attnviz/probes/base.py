"""How capture reads one attention module: the :class:`Probe` protocol and its tools.

A probe is made for every recognised module when a capture starts. The capture calls

- :meth:`Probe.begin` when the module's forward starts (a forward pre-hook),
- :meth:`Probe.tap` with the arguments and output of each of the probe's :meth:`~Probe.taps`
  (forward hooks on submodules, e.g. the sigmoid ``gate`` of an SE block),
- :meth:`Probe.function` for every call of a watched torch function inside the module's
  forward (e.g. a functional ``softmax``), through a :class:`torch.overrides.TorchFunctionMode`
  that is active only while that module runs, in the capturing thread,
- :meth:`Probe.end` with the module's input and output, to turn what was seen into record
  fields and faithfulness checks.

Either way the record holds the very tensor the module went on to use, not a re-derivation.
The checks compare the module's real output with its input combined with the recorded
attention, on a strided sample of positions (a few thousand numbers per call), so they cost
no second forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..records import Record

__all__ = [
    "FUNCTIONS",
    "Emission",
    "Probe",
    "Refusal",
    "Watch",
    "out_of_range",
    "relative_error",
    "same_tensor",
    "spots",
    "sums_to_one",
]

#: torch functions a probe can watch, by family
FUNCTIONS: dict[str, frozenset[Callable[..., Any]]] = {
    "softmax": frozenset({torch.softmax, F.softmax, torch.Tensor.softmax}),
    "sigmoid": frozenset({torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid}),
    "matmul": frozenset({torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm}),
}


@dataclass
class Emission:
    """What one call of a module gave: record fields, metadata and checks.

    Attributes:
        fields: record field -> tensor (stored by the capture as detached copies).
        meta: facts about the attention's layout (grids, heads, windows).
        checks: ``(relation, function -> 0-d tensor)`` pairs, the relative error (or the
            violation) of each relation the attention must satisfy; the capture evaluates
            them unless ``verify=False``, keeps the largest error per relation and compares
            it with the dtype's tolerance.
        problem: why nothing can be recorded for this call (e.g. the gate never ran); the
            capture warns (or raises with ``verify="raise"``) and records nothing for it.
    """

    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, Callable[[], torch.Tensor]]] = field(default_factory=list)
    problem: str | None = None

    def check(self, relation: str, error: Callable[[], torch.Tensor]) -> None:
        """Add a check: ``error()`` is 0 when the relation holds exactly."""
        self.checks.append((relation, error))


@dataclass(frozen=True)
class Refusal:
    """A recognised module that capture will not record, and why."""

    name: str
    module_type: str
    reason: str


class Probe:
    """Reads one attention module of one capture.

    Subclasses set :attr:`kind` and :attr:`record_type`, list the submodules they tap and the
    function families they watch, and implement :meth:`end`.

    Attributes:
        name: the module's qualified name (the record's name).
        module: the attention module.
        keep_features: also emit ``features`` (set by ``capture(features=True)``).
        pieces: what the current call delivered, by tap key or function family.
    """

    kind: ClassVar[str] = ""
    record_type: ClassVar[type[Record]] = Record
    watch: frozenset[str] = frozenset()

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        self.keep_features = False
        self.pieces: dict[str, list[Any]] = {}

    def taps(self) -> dict[str, nn.Module]:
        """Submodules whose calls this probe sees, by key (each call: ``(args, output)``)."""
        return {}

    def begin(self) -> None:
        self.pieces = {}

    def tap(self, key: str, args: tuple, output: Any) -> None:
        self.pieces.setdefault(key, []).append((args, output))

    def function(self, family: str, args: tuple, kwargs: dict, output: Any) -> None:
        self.pieces.setdefault(family, []).append((args, kwargs, output))

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        raise NotImplementedError

    # helpers for subclasses -----------------------------------------------------------------
    def outputs(self, key: str) -> list[Any]:
        """The outputs delivered under ``key`` (a tap or a function family) in this call."""
        return [p[-1] for p in self.pieces.get(key, [])]

    def where(self) -> str:
        """Where the attention is read, for messages."""
        return "its attention"

    def missing(self) -> Emission:
        return Emission(
            problem=(
                f"{self.name} ({type(self.module).__name__}) ran, but {self.where()} was not "
                "computed in this call, so nothing was recorded; the registration may name "
                "a submodule or function this module does not use in its configuration"
            )
        )


class Watch(TorchFunctionMode):
    """Hands the calls of the probe's watched torch functions to the probe.

    Entered when the module's forward starts and left when it ends (forward hooks of the
    capture); torch function modes are per thread, so other threads are not seen.
    """

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe
        self.families = {f: fam for fam in probe.watch for f in FUNCTIONS[fam]}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        family = self.families.get(func)
        if family is not None:
            self.probe.function(family, args, kwargs, out)
        return out


def same_tensor(a: Any, b: Any) -> bool:
    """Whether ``b`` is ``a`` or a view of exactly the same numbers (same storage, layout)."""
    if a is b:
        return True
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def spots(size: int, n: int = 16) -> slice:
    """A strided slice that picks about ``n`` evenly spread indices of ``size``."""
    return slice(None, None, max(1, math.ceil(size / n)))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """max |actual - expected| / max |expected|, as a 0-d tensor (no host sync).

    Computed in float64 for float64 inputs, otherwise float32; 0 for empty tensors.
    """
    dtype = torch.float64 if torch.float64 in (actual.dtype, expected.dtype) else torch.float32
    if actual.numel() == 0 or expected.numel() == 0:
        return torch.zeros((), dtype=dtype, device=actual.device)
    a, e = actual.to(dtype), expected.to(dtype)
    scale = e.abs().amax().clamp_min(torch.finfo(dtype).tiny)
    return (a - e).abs().amax() / scale


def out_of_range(values: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """How far ``values`` leave [low, high], as a 0-d float32 tensor (0 when inside)."""
    v = values.detach().float()
    return torch.clamp(torch.stack([low - v.amin(), v.amax() - high]), min=0).amax()


def sums_to_one(values: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """max |sum over ``dim`` - 1|, as a 0-d tensor."""
    s = values.detach().sum(dim=dim, dtype=torch.float64)
    return (s - 1).abs().amax().float() if s.numel() else torch.zeros((), device=values.device)
