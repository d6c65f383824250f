"""Where a self-attention record's tokens lie on the image: :class:`Geometry`.

The rows and columns of a self-attention matrix are tokens; which token is which pixel of
the feature grid is not in the matrix but in the module that computed it. The capture
reads that once, from the probe's layout (:mod:`attnviz.probes.layouts`,
:mod:`attnviz.probes.tokens`), and gives it to the record as ``record.geometry``; every
grid method of the record reads it from there.

Until attnviz 0.2 the geometry was kept in ``record.meta`` under string keys
(``meta["query_size"]``, ``meta["tokens_unplaced"]``, ...). Those keys still read, from
the geometry, with a ``FutureWarning`` naming the field to use (:class:`GeometryMeta`);
a probe of a user's that still states them in its ``Emission.meta`` has them folded into
the record's geometry, with the same warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .attention import SelfAttentionRecord

__all__ = ["LEGACY_KEYS", "Geometry", "GeometryMeta"]


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a self-attention record's queries and keys lie on the image.

    Rows of the record's matrix are its queries, columns its keys: first the named
    :attr:`prefix` tokens (a vision transformer's class, distillation and register tokens),
    then positions row-major on the query grid (rows) and on the key grid (columns). A
    record of tokens in groups (:class:`~attnviz.records.WindowAttentionRecord`: Swin's
    windows, MaxViT's blocks and grids) gives each group's tokens their places in
    :attr:`query_pos` and :attr:`key_pos`.

    Frozen: a record's geometry is replaced whole (``dataclasses.replace``), never edited.

    Attributes:
        query_size, key_size: (H, W) of the query and key grids; None where the record does
            not state it (a square number of positions is then read as a square grid), and
            a query of named tokens only (class attention) has no query grid.
        prefix: names of the tokens before the grid, in order: ``("cls",)``,
            ``("cls", "dist")``, ``("cls", "reg1", ...)``; ``()`` where every token is a
            position.
        query_pos, key_pos: groups x Q and groups x K flat indices (int64) on the query and
            key grids (row-major), -1 for a token with no place (zero padding: a key whose
            weight is the record's ``padding_mass``); None where the tokens are one group,
            laid out as above.
        unplaced: why the tokens are not placed on the image (attnviz knows no layout that
            reads where they lie), or None: the record is exact, its grid methods refuse
            with this reason.
        unnamed: the record holds leading tokens attnviz cannot name (no token layout, and
            no square grid); its grid methods refuse and say how to name them.
        source: what the geometry was read from (the model's token layout, a Swin block's
            windows and shift, the module input's grid), for people; ``""`` if unsaid.
    """

    query_size: tuple[int, int] | None = None
    key_size: tuple[int, int] | None = None
    prefix: tuple[str, ...] = ()
    query_pos: torch.Tensor | None = None
    key_pos: torch.Tensor | None = None
    unplaced: str | None = None
    unnamed: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("query_size", "key_size"):
            size = getattr(self, name)
            if size is not None:
                object.__setattr__(self, name, _size(size, name))
        if isinstance(self.prefix, str):
            raise TypeError(f"prefix must be a tuple of token names, got {self.prefix!r}")
        object.__setattr__(self, "prefix", tuple(str(p) for p in self.prefix))
        for name in ("query_pos", "key_pos"):
            pos = getattr(self, name)
            if pos is not None and not (
                isinstance(pos, torch.Tensor) and pos.dim() == 2 and not pos.is_floating_point()
            ):
                raise TypeError(f"{name} must be a groups x tokens integer tensor, got {pos!r}")
        if self.unplaced is not None and not isinstance(self.unplaced, str):
            raise TypeError(f"unplaced must be the reason (a str) or None, got {self.unplaced!r}")
        object.__setattr__(self, "unnamed", bool(self.unnamed))
        object.__setattr__(self, "source", str(self.source))

    @property
    def windowed(self) -> bool:
        """Whether the tokens are in groups placed by :attr:`query_pos` / :attr:`key_pos`."""
        return self.query_pos is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
                if not (
                    isinstance(a, torch.Tensor)
                    and isinstance(b, torch.Tensor)
                    and a.shape == b.shape
                    and torch.equal(a.cpu(), b.cpu())
                ):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # holds tensors: compared by value

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                parts.append(f"{f.name}=<tensor {' x '.join(map(str, v.shape))}>")
            elif v != f.default:
                parts.append(f"{f.name}={v!r}")
        return f"Geometry({', '.join(parts)})"


def _size(size: Any, name: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be (H, W), got {size!r}") from None
    return h, w


# -- record.meta's keys before Geometry ------------------------------------------------------
#: ``record.meta`` keys that were geometry, by the :class:`Geometry` field now holding it
LEGACY_KEYS = {
    "query_size": "query_size",
    "key_size": "key_size",
    "prefix": "prefix",
    "query_pos": "query_pos",
    "key_pos": "key_pos",
    "tokens_unplaced": "unplaced",
    "tokens_unnamed": "unnamed",
    "layout": "source",
}


def legacy_value(geometry: Geometry, key: str) -> Any:
    """What ``record.meta[key]`` held for this geometry (KeyError where it held nothing)."""
    value = getattr(geometry, LEGACY_KEYS[key])
    if key in ("tokens_unplaced", "tokens_unnamed"):
        value = True if value else None
    if value is None or (isinstance(value, (str, tuple)) and not value):
        raise KeyError(key)
    return value


def with_legacy(geometry: Geometry, meta: Mapping[str, Any]) -> Geometry:
    """``geometry`` with the old geometry keys of ``meta`` folded in."""
    fields: dict[str, Any] = {}
    for key, value in meta.items():
        name = LEGACY_KEYS[key]
        if key == "tokens_unplaced":
            value = "its probe says its tokens are not placed" if value else None
        fields[name] = value
    return dataclasses.replace(geometry, **fields)


def warn_legacy(where: str, keys: Iterable[str], stacklevel: int) -> None:
    """Say which :class:`Geometry` fields hold the old ``meta`` keys (a FutureWarning)."""
    moved = ", ".join(f"meta[{k!r}] is geometry.{LEGACY_KEYS[k]}" for k in keys)
    warnings.warn(
        f"{where}: a self-attention record's token geometry moved from record.meta to "
        f"record.geometry ({moved}); the old keys go in 0.3",
        FutureWarning,
        stacklevel=stacklevel + 1,
    )


class GeometryMeta(dict):
    """A self-attention record's ``meta``: its facts that are no geometry.

    The old geometry keys (:data:`LEGACY_KEYS`) still read (``meta[key]``, ``meta.get``,
    ``key in meta``), from the record's :class:`Geometry`, with a ``FutureWarning``; they
    are not listed (``list(meta)``, ``meta.items()``). Writing one sets the geometry.
    """

    def __init__(self, record: SelfAttentionRecord) -> None:
        super().__init__()
        self._record = record

    def _legacy(self, key: str, stacklevel: int) -> Any:
        value = legacy_value(self._record.geometry, key)
        warn_legacy(self._record.name, [key], stacklevel + 1)
        return value

    def __missing__(self, key: str) -> Any:
        if key in LEGACY_KEYS:
            return self._legacy(key, 2)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        if key in LEGACY_KEYS:
            try:
                return self._legacy(key, 2)
            except KeyError:
                return default
        return default

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        if isinstance(key, str) and key in LEGACY_KEYS:
            try:
                self._legacy(key, 2)
            except KeyError:
                return False
            return True
        return False

    def __setitem__(self, key: str, value: Any) -> None:
        self._set({key: value}, 2)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._set(dict(*args, **kwargs), 2)

    def _set(self, given: dict[str, Any], stacklevel: int) -> None:
        old = {k: given.pop(k) for k in list(given) if k in LEGACY_KEYS}
        if old:
            warn_legacy(self._record.name, old, stacklevel + 1)
            r = self._record
            r.geometry = with_legacy(r.geometry, old)
        for k, v in given.items():
            dict.__setitem__(self, k, v)

    def __reduce__(self) -> Any:  # copies and pickles: the facts, and the same record
        return (_rebuild, (self._record, dict(self)))


def _rebuild(record: SelfAttentionRecord, facts: dict[str, Any]) -> GeometryMeta:
    meta = GeometryMeta(record)
    dict.update(meta, facts)
    return meta
