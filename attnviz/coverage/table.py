"""The sweep's rows as counts per status and family, and as the README's table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..records import KINDS
from .sweep import (
    ERROR,
    EXACT,
    NO_ATTENTION,
    PARTIAL,
    RECORDED,
    REFUSED,
    SKIPPED,
    STATUSES,
    CoverageRow,
)

__all__ = ["family_status", "markdown_table", "readme_section", "summary"]


# -- reporting --------------------------------------------------------------------------------
def _rank(status: str) -> int:
    if status.startswith("skipped"):
        return STATUSES.index(SKIPPED)
    return STATUSES.index(status) if status in STATUSES else 0


def family_status(rows: Iterable[CoverageRow]) -> dict[tuple[str, str], str]:
    """(library, family) -> the worst status of its rows."""
    out: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r.library, r.family)
        if key not in out or _rank(r.status) < _rank(out[key]):
            out[key] = r.status
    return out


def summary(rows: Iterable[CoverageRow]) -> dict[str, Any]:
    """Counts over the rows and over the families.

    Keys: ``rows`` and ``families`` (how many), ``by_status`` and ``families_by_status``
    (status -> count), ``attention_bearing`` (families where a capture found attention),
    ``exact`` and ``placed`` (attention-bearing families whose status is in :data:`EXACT`,
    resp. ``"recorded"``), ``exact_share`` and ``placed_share`` (of the attention-bearing;
    None without any), ``partial``, ``refused``, ``no_attention``, ``errors``,
    ``skipped`` (families), ``seconds`` (summed over the rows).
    """
    rows = list(rows)
    fams = family_status(rows)
    bearing = {(r.library, r.family) for r in rows if r.attention}
    by_family = Counter(("skipped" if s.startswith("skipped") else s) for s in fams.values())
    exact = sum(1 for k in bearing if fams[k] in EXACT)
    placed = sum(1 for k in bearing if fams[k] == RECORDED)
    n = len(bearing)
    return {
        "rows": len(rows),
        "families": len(fams),
        "by_status": dict(Counter(r.status for r in rows)),
        "families_by_status": dict(by_family),
        "attention_bearing": n,
        "exact": exact,
        "placed": placed,
        "exact_share": exact / n if n else None,
        "placed_share": placed / n if n else None,
        "partial": by_family.get(PARTIAL, 0),
        "refused": by_family.get(REFUSED, 0),
        "no_attention": by_family.get(NO_ATTENTION, 0),
        "errors": by_family.get(ERROR, 0),
        "skipped": by_family.get("skipped", 0),
        "seconds": sum(r.seconds for r in rows),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _records(kinds: dict[str, int]) -> str:
    order = [k for k in KINDS if k in kinds] + sorted(set(kinds) - set(KINDS))
    return ", ".join(f"{k} {kinds[k]}" for k in order) or "-"


def markdown_table(rows: Iterable[CoverageRow], *, seconds: bool = False) -> str:
    """The rows as a Markdown table, one line each, in their order.

    Columns: library, family, model (with its overrides), input, status, records by kind,
    self-attention records placed / unplaced, note; ``seconds=True`` adds the time per
    model (left out by default so that the table is the same from run to run).
    """
    head = ["library", "family", "model", "input", "status", "records", "placed / unplaced"]
    head += ["s"] if seconds else []
    head.append("note")
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if h == "s" else "---" for h in head) + "|",
    ]
    for r in rows:
        model = f"`{r.model}`" + (f" ({r.overrides})" if r.overrides else "")
        size = f"{r.input_size[0]}x{r.input_size[1]}" if r.input_size[0] else "-"
        spots = f"{r.placed} / {r.unplaced}" if r.kinds.get("self") else "-"
        cells = [r.library, r.family, model, size, r.status, _records(r.kinds), spots]
        cells += [f"{r.seconds:.2f}"] if seconds else []
        cells.append(r.note)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def readme_section(rows: Iterable[CoverageRow]) -> str:
    """What the README shows between its coverage markers: the counts in a sentence, then
    :func:`markdown_table` (the same from run to run: no timings)."""
    rows = list(rows)
    s = summary(rows)
    share = "-" if s["exact_share"] is None else f"{s['exact_share']:.1%}"
    placed = "-" if s["placed_share"] is None else f"{s['placed_share']:.1%}"
    sentence = (
        f"Swept with random weights, one image each ({s['rows']} models of {s['families']} "
        f"families: every timm model module, torchvision's transformers, Hugging Face's "
        f"vision encoders): of the {s['attention_bearing']} families with attention, "
        f"**{s['exact']} are recorded exactly ({share})** and {s['placed']} of them also "
        f"placed on the image ({placed}); {s['partial']} partial, {s['refused']} refused "
        f"by design, {s['errors']} errors; {s['no_attention']} families apply no attention "
        "and are told so. Regenerate with `python scripts/coverage_table.py --write "
        "README.md`; `tests/test_coverage.py` keeps it current."
    )
    return sentence + "\n\n" + markdown_table(rows)
