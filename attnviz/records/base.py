"""What every record shares: :class:`Record`, the :class:`Recording` of one capture, the
:class:`Check` of a record's faithfulness and the :data:`KINDS` of attention."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._compat import renamed_kwargs

if TYPE_CHECKING:
    from .geometry import Geometry

__all__ = ["KINDS", "Check", "Record", "Recording"]

#: the kinds of attention a record can hold
KINDS = ("channel", "spatial", "elementwise", "axial", "branch", "context", "transform", "self")


class Record:
    """What one attention module applied, over every forward pass of a capture.

    Attributes:
        name: the module's qualified name in the model.
        module_type: the class name of the module.
        kind: one of :data:`KINDS`.
        meta: facts the module or its probe states about its attention that are no token
            geometry (the kernel that was read, its shape, heads folded from sequences, a
            transformer's input size); a self-attention record's token grids are in its
            typed ``geometry`` (:class:`~attnviz.records.Geometry`).
    """

    kind: ClassVar[str] = ""
    _main: ClassVar[str] = ""

    def __init__(self, name: str, module_type: str) -> None:
        self.name = name
        self.module_type = module_type
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._cache: dict[str, torch.Tensor] = {}
        self.meta: dict[str, Any] = {}

    def _describe(self, meta: Mapping[str, Any], geometry: Geometry | None = None) -> None:
        """Note what one call's probe stated: ``meta`` facts and, for self-attention, the
        token geometry (called by the capture for every recorded call)."""
        if geometry is not None:
            raise TypeError(f"{self.name}: {self.kind} attention has no token geometry")
        self.meta.update(meta)

    def _append(self, field: str, tensor: torch.Tensor) -> None:
        self._parts.setdefault(field, []).append(tensor)
        self._cache.clear()

    def _has(self, field: str) -> bool:
        return bool(self._parts.get(field))

    def _get(self, field: str) -> torch.Tensor:
        if field not in self._cache:
            parts = self._parts.get(field)
            if not parts:
                raise AttributeError(f"{self.name}: no {field!r} was recorded")
            shapes = {tuple(p.shape[1:]) for p in parts}
            if len(shapes) > 1:
                raise ValueError(
                    f"{self.name}: forward passes inside one capture gave {field} of different "
                    f"shapes {sorted(shapes)}; use one capture per input size"
                )
            self._cache[field] = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._cache[field]

    @property
    def data(self) -> torch.Tensor:
        """The attention tensor itself (weights, map, gate, theta or matrix)."""
        return self._get(self._main)

    @property
    def features(self) -> torch.Tensor:
        """What the attention was applied to, recorded only by ``capture(..., features=True)``.

        For channel, spatial, elementwise and axial attention the module's input
        (B x C x H x W): the output is ``features`` times the attention. For branch
        attention the K paths (B x K x C x H x W); for context attention and self-attention
        the module's input.
        """
        if "features" not in self._parts:
            raise AttributeError(
                f"{self.name}: no features recorded; use capture(..., features=True)"
            )
        return self._get("features")

    @property
    def nbytes(self) -> int:
        """Bytes the record holds (every field of every call)."""
        return sum(t.numel() * t.element_size() for ts in self._parts.values() for t in ts)

    @property
    def batch_size(self) -> int:
        """Images recorded: the sum of the batch sizes of every recorded call."""
        return sum(p.shape[0] for p in self._parts.get(self._main, []))

    @property
    def calls(self) -> int:
        """How many times the module ran (and was recorded) during the capture.

        Compare with ``Recording.forwards``: a module called twice per forward pass records
        twice the rows of the images it saw; :meth:`per_call` splits them.
        """
        return len(self._parts.get(self._main, []))

    def per_call(self, field: str | None = None) -> list[torch.Tensor]:
        """One tensor per recorded call (of ``field``, default the attention itself)."""
        field = field or self._main
        if not self._parts.get(field):
            raise AttributeError(f"{self.name}: no {field!r} was recorded")
        return list(self._parts[field])

    def view(self) -> tuple[str, torch.Tensor]:
        """One picture per image of this attention on its feature grid: (label, B x h x w).

        Each kind says what its picture is (see the subclasses); this is the one place
        :func:`attnviz.maps.attention_view` and the explorers ask.

        Raises:
            ValueError: a kind (or a record) with no picture on the image grid.
        """
        raise ValueError(f"{self.name}: {self.kind} attention has no picture on the image grid")

    def __repr__(self) -> str:
        parts = self._parts.get(self._main) or []
        if parts:
            shape = f"shape=({self.batch_size}, {', '.join(map(str, parts[0].shape[1:]))})"
            shape += f", calls={len(parts)}"
        else:
            shape = "nothing recorded"
        return f"{type(self).__name__}(name={self.name!r}, type={self.module_type}, {shape})"


@dataclass
class Check:
    """The faithfulness check of one record: how far the module's output was from its
    input combined with the recorded attention, over every recorded call.

    Attributes:
        name: the record's name.
        what: the relation checked, e.g. ``"output == input * weights"``.
        error: the largest relative error seen (max |actual - expected| / max |expected|
            over the checked entries), or ``None`` before the capture ended.
        tolerance: the error above which the check fails (set by the dtype).
        calls: how many calls were checked.
    """

    name: str
    what: str
    error: float | None
    tolerance: float
    calls: int

    @property
    def ok(self) -> bool:
        return self.error is not None and self.error <= self.tolerance


class Recording(Mapping[str, Record]):
    """The records of one capture, keyed by qualified module name, in forward order.

    Attributes:
        checks: every faithfulness check run, as :class:`Check` objects (filled when the
            capture ends).
        refused: modules recognised but not recorded, with the reason.
        unrecorded: modules that ran an attention kernel (scaled-dot-product attention, or
            a softmax result multiplied with values) that could not be recorded, with the
            reason; the capture also names them in a :class:`~attnviz.CaptureWarning`.
        forwards: forward passes of the captured model recorded (calls of its root module).
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self.checks: list[Check] = []
        self.refused: dict[str, str] = {}
        self.unrecorded: dict[str, str] = {}
        self.forwards = 0

    def __getitem__(self, name: str) -> Record:
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(
                f"no record named {name!r}; recorded: {list(self._records) or 'nothing yet'}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    @property
    def nbytes(self) -> int:
        """Bytes every record holds together (what ``attention=`` and ``dtype=`` change)."""
        return sum(r.nbytes for r in self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    @renamed_kwargs(name="blocks")
    def select(
        self, kind: str | None = None, blocks: str | Sequence[str] | None = None
    ) -> list[Record]:
        """Records of one kind and/or whose name matches a glob pattern (or one of several),
        in forward order.

        Raises:
            ValueError: unknown kind, or nothing matches (the message lists the names).
        """
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        patterns = [blocks] if isinstance(blocks, str) else blocks
        out = [
            r
            for n, r in self._records.items()
            if (kind is None or r.kind == kind)
            and (patterns is None or any(fnmatch.fnmatchcase(n, p) for p in patterns))
        ]
        if not out:
            raise ValueError(
                f"no record matches kind={kind!r}, blocks={blocks!r}; recorded: "
                f"{[(n, r.kind) for n, r in self._records.items()]}"
            )
        return out

    def __repr__(self) -> str:
        lines = [f"  {r!r}" for r in self._records.values()]
        lines += [f"  refused {n}: {why}" for n, why in self.refused.items()]
        lines += [f"  NOT RECORDED {n}: {why}" for n, why in self.unrecorded.items()]
        return "Recording(\n" + "\n".join(lines) + "\n)" if lines else "Recording()"
