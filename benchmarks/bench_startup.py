"""Seconds from *Run All* to the first explorer, per notebook, in its default mode.

A newcomer opens a notebook and runs every cell: with ``TRAIN = False`` (the default) the
notebooks open on the shipped trained models. Each notebook is executed headless in a
fresh kernel (nbclient, the kernel started before the clock starts, as when a notebook is
open); the time is from the first cell's start to the end of the first cell that shows a
widget (the kernel's own per-cell timestamps), and the whole run. Notebook 04 opens on
pretrained ImageNet networks rather than shipped ones; it is measured in its offline
mode (``QUICK = True``, random weights, nothing downloaded). Target: under 20 s each.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

from _common import Contention

from attnviz.nbrun import execute_notebook

ROOT = Path(__file__).resolve().parents[1]
WIDGET = "application/vnd.jupyter.widget-view+json"


def _stamp(cell, key: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(cell.metadata["execution"][key].replace("Z", "+00:00"))


def _startup(path: Path, parameters: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        nb = execute_notebook(path, parameters, timeout=600, output=Path(tmp) / path.name)
    code = [c for c in nb.cells if c.cell_type == "code" and "execution" in c.metadata]
    start = _stamp(code[0], "iopub.status.busy")
    first = next(c for c in code if any(WIDGET in o.get("data", {}) for o in c.outputs))
    return {
        "notebook": path.stem,
        "mode": ", ".join(f"{k} = {v}" for k, v in parameters.items()) or "default",
        "first_explorer_s": (_stamp(first, "shell.execute_reply") - start).total_seconds(),
        "all_cells_s": (_stamp(code[-1], "shell.execute_reply") - start).total_seconds(),
    }


def run(quick: bool = False) -> dict:
    meter = Contention()
    rows = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if quick and not path.stem.startswith("02"):
            continue
        params = {"QUICK": True} if path.stem.startswith("04") else {}
        rows.append(_startup(path, params))
    table = ["| notebook | mode | Run All to first explorer | all cells |", "|---|---|---:|---:|"]
    for r in rows:
        flag = "" if r["first_explorer_s"] < 20 else " (over the 20 s target)"
        table.append(
            f"| {r['notebook']} | {r['mode']} | **{r['first_explorer_s']:.1f} s**{flag} "
            f"| {r['all_cells_s']:.1f} s |"
        )
    return {
        "title": "Opening a notebook: seconds to the first explorer (default mode)",
        "table": "\n".join(table),
        "rows": rows,
        "notes": [
            "Kernel start-up excluded (a notebook that is open has its kernel). " + meter.note()
        ],
    }
