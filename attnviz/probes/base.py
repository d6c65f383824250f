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

Once per capture it calls :meth:`Probe.attach` with the model (for hooks a probe needs on
it, e.g. to note the input size). A probe that must ask its module for the attention
defines two more methods, looked up when the capture starts: ``arguments(args, kwargs)``
returns the (args, kwargs) the module is called with instead, and ``result(output)`` what
the caller receives instead of the module's output (``nn.MultiheadAttention``: asked for
its per-head weights, which the caller gets only if it asked; see
:class:`attnviz.probes.tokens.MultiheadAttentionProbe`).

Either way the record holds the very tensor the module went on to use, not a re-derivation.
The checks compare the module's real output with its input combined with the recorded
attention, on a strided sample of positions (a few thousand numbers per call), so they cost
no second forward pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..records import Geometry, Record

__all__ = [
    "FUNCTIONS",
    "Emission",
    "Probe",
    "Refusal",
    "Sample",
    "Watch",
    "relative_error",
    "same_tensor",
    "sample",
    "spots",
    "sums_to_one",
]

#: torch functions a probe can watch, by family
FUNCTIONS: dict[str, frozenset[Callable[..., Any]]] = {
    "softmax": frozenset({torch.softmax, F.softmax, torch.Tensor.softmax}),
    "sigmoid": frozenset({torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid}),
    "matmul": frozenset({torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm}),
    "sdpa": frozenset({F.scaled_dot_product_attention}),
}


@dataclass
class Emission:
    """What one call of a module gave: record fields, metadata, geometry and checks.

    Attributes:
        fields: record field -> tensor (stored by the capture as detached copies).
        meta: facts about the attention that are no token geometry (the kernel read, its
            shape, HaloNet's blocks and halo, a transformer's input size).
        checks: the relations the attention must satisfy, added by :meth:`compare`,
            :meth:`check` and :meth:`check_range`; the capture evaluates them (unless
            ``verify=False``), keeps the worst error per relation over the calls and
            compares it with the dtype's tolerance when it ends.
        problem: why nothing can be recorded for this call (e.g. the gate never ran); the
            capture warns (or raises with ``verify="raise"``) and records nothing for it.
        record_type: the record class of these fields where one probe gives more than one
            (a fused kernel kept as its factors, or its whole matrix); None: the probe's
            own :attr:`Probe.record_type`.
        geometry: where a self-attention record's tokens lie on the image (grids, named
            tokens, places of windowed tokens, or why they are not placed), set on the
            record as ``record.geometry``; None: the record's stays as it is (for other
            kinds: always None).
    """

    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, str, Callable[[], Any], float, float]] = field(default_factory=list)
    problem: str | None = None
    record_type: type[Record] | None = None
    geometry: Geometry | None = None  # last: Emission's positional order is kept

    def compare(self, relation: str, pair: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """``pair()`` gives (actual, expected): the check is max |a - e| / max |e|."""
        self.checks.append((relation, "relative", pair, 0.0, 0.0))

    def compare_product(
        self, relation: str, terms: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> None:
        """``terms()`` gives (actual, base, factor): the check is
        max |actual - base * factor| / max |actual|, the product computed as the module
        computes it, so an exact record gives exactly 0."""
        self.checks.append((relation, "product", terms, 0.0, 0.0))

    def check(self, relation: str, error: Callable[[], torch.Tensor]) -> None:
        """``error()`` gives a 0-d tensor that is 0 when the relation holds exactly."""
        self.checks.append((relation, "absolute", error, 0.0, 0.0))

    def check_range(
        self, relation: str, values: Callable[[], torch.Tensor], low: float = 0.0, high: float = 1.0
    ) -> None:
        """Every one of ``values()`` must lie in [low, high] (e.g. a sigmoid's output)."""
        self.checks.append((relation, "range", values, low, high))


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

    # set per class by most probes, per instance by a few (GateProbe)
    kind: str = ""
    record_type: type[Record] = Record
    watch: frozenset[str] = frozenset()

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        self.keep_features = False
        self.factored = False  # capture(attention="factors"): keep a fused kernel's q and k
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

    def attach(self, root: nn.Module) -> list[Any]:
        """Called when the capture starts, with the model; returns hook handles to remove
        when it ends (e.g. a pre-hook that notes the input size). Most probes need none."""
        return []

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


def spots(size: int, n: int = 4) -> slice:
    """A strided slice that picks at most ``n`` evenly spread indices of ``size``."""
    return slice(None, None, max(1, math.ceil(size / n)))


class Sample:
    """A strided selection of a tensor's entries, the same for every tensor it is applied to.

    ``Sample.of(t)`` keeps at most 2 images, 16 channels and 4 x 4 positions of a
    B x ... x C x H x W tensor (dimensions between B and C whole): the entries a check
    compares, at most 512 per path, whatever the layer's size, so a check costs a few tens
    of microseconds. Applied to a broadcast factor (B x C x 1 x 1), size-1 dimensions stay
    whole, so it still lines up; ``drop(dim)`` selects alike in a tensor without that
    dimension. Each selection is one ``as_strided`` view, no copy.
    """

    def __init__(self, steps: tuple[int, ...]) -> None:
        self.steps = steps

    @classmethod
    def of(cls, t: torch.Tensor) -> Sample:
        return _sample_of(tuple(t.shape))

    def drop(self, dim: int) -> Sample:
        return Sample(self.steps[:dim] + self.steps[dim + 1 :])

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(None, None, s) for s in self.steps)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        size, stride = _strided(self.steps, tuple(t.shape), t.stride())
        return t.as_strided(size, stride, t.storage_offset())


def _step(size: int, n: int) -> int:
    return max(1, math.ceil(size / n))


@functools.lru_cache(maxsize=1024)
def _sample_of(shape: tuple[int, ...]) -> Sample:
    lead = (1,) * (len(shape) - 4)
    return Sample(
        (_step(shape[0], 2), *lead, _step(shape[-3], 16), _step(shape[-2], 4), _step(shape[-1], 4))
    )


@functools.lru_cache(maxsize=4096)
def _strided(
    steps: tuple[int, ...], shape: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """as_strided's size and stride for taking every ``steps``-th entry (size-1 dims whole)."""
    size, out = [], []
    for n, st, step in zip(shape, stride, steps):
        step = step if n > 1 else 1
        size.append(-(-n // step))
        out.append(st * step)
    return tuple(size), tuple(out)


def sample(t: torch.Tensor) -> Sample:
    """:meth:`Sample.of`: the entries of ``t`` (and of tensors shaped like it) a check reads."""
    return Sample.of(t)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """max |actual - expected| / max |expected|, as a 0-d tensor (no host sync).

    Computed in float64 for float64 inputs, otherwise float32; 0 for empty tensors.
    """
    acc = torch.float64 if torch.float64 in (actual.dtype, expected.dtype) else torch.float32
    if actual.numel() == 0 or expected.numel() == 0:
        return torch.zeros((), dtype=acc, device=actual.device)
    diff = torch.linalg.vector_norm(actual - expected, float("inf"), dtype=acc)
    return diff / torch.linalg.vector_norm(expected, float("inf"), dtype=acc).clamp_min(1e-30)


def sums_to_one(values: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """max |sum over ``dim`` - 1|, as a 0-d tensor."""
    s = values.detach().sum(dim=dim, dtype=torch.float64)
    if not s.numel():
        return torch.zeros((), device=values.device)
    return torch.linalg.vector_norm(s - 1, float("inf"))
