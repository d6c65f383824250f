"""Running the sweep: each case's model built, called inside a capture, and classified by
what the capture found (by the capture's record types and error types, never by its
messages' wording)."""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..capture import AllRefusedError, CaptureWarning, NoAttentionError, capture
from ..records import Record, Recording
from ..registry import find_attention_modules
from .catalog import Case, _select

__all__ = [
    "ERROR",
    "EXACT",
    "NO_ATTENTION",
    "PARTIAL",
    "RECORDED",
    "RECORDED_NOT_PLACED",
    "REFUSED",
    "SKIPPED",
    "STATUSES",
    "CoverageRow",
    "Status",
    "run_case",
    "sweep",
]


class Status(str, Enum):
    """What a capture of a model found (a row's status; see the module docstring). A
    ``str``, so rows compare with and print as the plain words."""

    RECORDED = "recorded"
    RECORDED_NOT_PLACED = "recorded, not placed"
    PARTIAL = "partial"
    REFUSED = "refused"
    NO_ATTENTION = "no attention"
    ERROR = "error"
    SKIPPED = "skipped: too large for the sweep"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


RECORDED = Status.RECORDED
RECORDED_NOT_PLACED = Status.RECORDED_NOT_PLACED
PARTIAL = Status.PARTIAL
REFUSED = Status.REFUSED
NO_ATTENTION = Status.NO_ATTENTION
ERROR = Status.ERROR
SKIPPED = Status.SKIPPED

#: every status, worst first (a family's status is the worst of its rows'); a status
#: that starts with "skipped" ranks with :data:`SKIPPED`
STATUSES = (ERROR, PARTIAL, REFUSED, SKIPPED, RECORDED_NOT_PLACED, RECORDED, NO_ATTENTION)

#: statuses of attention recorded exactly (every kernel recorded, every check passed)
EXACT = (RECORDED, RECORDED_NOT_PLACED)


@dataclass
class CoverageRow:
    """What a capture recorded for one model (see the module docstring for ``status``).

    Attributes:
        kinds: record counts by kind (``{"self": 12, "channel": 2}``).
        placed, unplaced: self-attention records whose tokens attnviz places on the
            image, and those it does not (``record.geometry.unplaced``).
        seconds: building, running and capturing the model.
        note: the reasons behind the status (verbatim: unrecorded kernels, failed checks,
            refusals, the error), or what the unplaced records are.
        unrecorded: ``Recording.unrecorded``; refused: ``Recording.refused``;
        failed: the failed checks, name -> ``"what (error e, tolerance t)"``.
        warnings: the messages of every :class:`~attnviz.CaptureWarning` the capture
            emitted.
    """

    library: str
    family: str
    model: str
    input_size: tuple[int, int]
    status: str
    kinds: dict[str, int] = field(default_factory=dict)
    placed: int = 0
    unplaced: int = 0
    seconds: float = 0.0
    note: str = ""
    overrides: str = ""
    unrecorded: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def attention(self) -> bool:
        """Whether the capture found attention: a record, a refusal or an unrecorded kernel."""
        return bool(self.kinds or self.refused or self.unrecorded)


# -- running ----------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    """The exception's type and first line; where it has no message, where it was raised."""
    text = str(e).strip().splitlines()
    if text:
        return f"{type(e).__name__}: {text[0]}"
    tb = traceback.extract_tb(e.__traceback__)
    inside = [f for f in tb if "/torch/" not in f.filename] or tb
    where = f" (raised in {inside[-1].name}, {Path(inside[-1].filename).name})" if inside else ""
    return f"{type(e).__name__}{where}"


def _refusal_note(model: nn.Module | None, refused: dict[str, str]) -> str:
    """One line per refused module type: ``refused: LambdaLayer x3: <reason>``."""
    counts: Counter[tuple[str, str]] = Counter()
    for name, why in refused.items():
        try:
            what = type(model.get_submodule(name)).__name__ if model is not None else name
        except AttributeError:
            what = name
        counts[(what, why)] += 1
    return "; ".join(
        f"refused: {what}{f' x{n}' if n > 1 else ''}: {why}"
        for (what, why), n in sorted(counts.items())
    )


def _unplaced(r: Record) -> str | None:
    """Why a self-attention record's tokens are not placed on the image, or None.

    Placed: the record states where its queries or its keys lie (``query_size`` or
    ``key_size``; class attention has keys on the image and a named query)."""
    geometry = getattr(r, "geometry", None)
    if geometry is not None and geometry.unplaced is not None:
        return "no layout"
    if geometry is not None and geometry.unnamed:
        return "leading tokens not named"
    for grid in ("key_size", "query_size"):
        try:
            getattr(r, grid)
        except ValueError:
            continue
        return None
    return "no grid"


def _classify(row: CoverageRow, rec: Recording, model: nn.Module) -> None:
    row.kinds = dict(Counter(r.kind for r in rec.values()))
    why = {n: _unplaced(r) for n, r in rec.items() if r.kind == "self"}
    unplaced = [(rec[n], w) for n, w in why.items() if w is not None]
    row.unplaced = len(unplaced)
    row.placed = len(why) - row.unplaced
    row.unrecorded = dict(rec.unrecorded)
    row.refused = dict(rec.refused)
    row.failed = {
        c.name: f"{c.what} (error {c.error:.3g}, tolerance {c.tolerance:g})"
        for c in rec.checks
        if not c.ok
    }
    notes = []
    if row.unrecorded or row.failed:
        row.status = PARTIAL
        notes += [f"not recorded: {n}: {why}" for n, why in row.unrecorded.items()]
        notes += [f"check failed: {n}: {what}" for n, what in row.failed.items()]
    elif row.refused:
        row.status = REFUSED
    elif not len(rec):
        row.status = NO_ATTENTION
        notes += row.warnings or ["no record, no refusal, nothing unrecorded"]
    elif unplaced:
        row.status = RECORDED_NOT_PLACED
        counts = Counter((w, r.module_type) for r, w in unplaced)
        for reason in sorted({w for w, _ in counts}):
            what = ", ".join(f"{t} ({n})" for (w, t), n in sorted(counts.items()) if w == reason)
            notes.append(f"unplaced ({reason}): {what}")
    else:
        row.status = RECORDED
    if row.refused:
        notes.append(_refusal_note(model, row.refused))
    row.note = _join(row.note, *notes)


def _call(case: Case, model: nn.Module, x: torch.Tensor) -> Any:
    return case.forward(model, x) if case.forward is not None else model(x)


def _without_capture(case: Case, model: nn.Module, x: torch.Tensor) -> str:
    """Whether the model's forward fails without a capture too (who is to blame)."""
    try:
        with torch.no_grad():
            _call(case, model, x)
    except Exception as e:
        return f"fails without a capture too ({_first_line(e)})"
    return "runs without a capture: the capture broke it"


def run_case(case: Case, *, batch: int = 1) -> CoverageRow:
    """Build ``case``'s model, call it on ``batch`` random images inside a capture, and
    classify what the capture found (never raises for the model's own failures)."""
    row = CoverageRow(
        case.library,
        case.family,
        case.model,
        case.input_size,
        ERROR,
        overrides=case.overrides,
        note=case.note,
    )
    if case.skip is not None:
        row.status = case.skip if case.skip.startswith("skipped") else SKIPPED
        row.note = _join(case.note, case.skip if case.skip != row.status else "")
        return row
    start = time.perf_counter()
    stage = "build"
    model: nn.Module | None = None
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CaptureWarning)
        try:
            torch.manual_seed(0)
            model = case.build().eval()
            x = torch.randn(batch, 3, *case.input_size)
            stage = "capture"
            cap = capture(model)
            stage = "forward"
            with cap as rec, torch.no_grad():
                _call(case, model, x)
                stage = "close"  # the capture's exit may say: no attention was applied
        except Exception as e:
            # by the error's type, never its wording: capture's own verdicts, raised when
            # it is made or closed (a model's forward may raise anything)
            ours = stage in ("capture", "close")
            if ours and isinstance(e, AllRefusedError):
                row.status = REFUSED
                row.refused = _refusals(model) if model is not None else {}
                row.note = _join(row.note, _refusal_note(model, row.refused) or str(e))
            elif ours and isinstance(e, NoAttentionError):
                row.status = NO_ATTENTION
            else:
                row.note = _join(row.note, f"{stage}: {_first_line(e)}")
                if stage == "forward" and model is not None:
                    row.note = _join(row.note, _without_capture(case, model, x))
        else:
            row.warnings = _messages(caught)
            _classify(row, rec, model)
        row.warnings = row.warnings or _messages(caught)
    row.seconds = time.perf_counter() - start
    return row


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, CaptureWarning)]


def _refusals(model: nn.Module) -> dict[str, str]:
    return {
        n: spec.reason for n, _, spec in find_attention_modules(model) if spec.kind == "refused"
    }


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def sweep(
    models: Iterable[Case | str] | None = None, *, batch: int = 1, progress: bool = False
) -> list[CoverageRow]:
    """Capture every model of the zoo (or of ``models``) once and classify what was found.

    Args:
        models: None for the whole zoo (:func:`cases`), else :class:`Case` objects and/or
            names: a library (``"timm"``, ``"torchvision"``, ``"transformers"``),
            ``"library:family"`` (``"timm:maxxvit"``), or ``"timm:<model name>"``.
        batch: images per forward.
        progress: print one line per model to stderr as it finishes.

    Returns:
        one :class:`CoverageRow` per model, in the order of the cases.
    """
    rows = []
    for case in _select(models):
        row = run_case(case, batch=batch)
        rows.append(row)
        if progress:
            print(
                f"{row.seconds:6.2f}s  {row.library}:{row.family}  {row.model}  {row.status}"
                f"{'  ' + row.note if row.note else ''}",
                file=sys.stderr,
                flush=True,
            )
    return rows
