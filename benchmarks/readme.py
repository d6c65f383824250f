"""Rewrite the README's generated sections from the registry and the recorded benchmarks.

    python benchmarks/readme.py          # after `python benchmarks/run.py --only verify --record`

The table of recognised modules lies between ``<!-- registry-table -->`` and
``<!-- /registry-table -->``: one row per registered type (attnviz.registry.markdown_table),
with the largest faithfulness-check error measured in the newest recorded ``verify`` run
(benchmarks/results/*-verify*.json). tests/test_project.py checks that the README holds
exactly what this writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from attnviz.registry import markdown_table

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- registry-table -->", "<!-- /registry-table -->"


def latest_verify() -> Path:
    """The newest full (not quick) recorded run of the verify benchmark."""
    runs = sorted(
        p
        for p in (ROOT / "benchmarks" / "results").glob("*-verify*.json")
        if "-quick" not in p.name
    )
    if not runs:
        raise FileNotFoundError(
            "no recorded verify run: python benchmarks/run.py --only verify --record"
        )
    return runs[-1]


def latest_vit() -> Path | None:
    """The newest full recorded run of the vit benchmark (vision transformers), if any."""
    runs = sorted(
        p for p in (ROOT / "benchmarks" / "results").glob("*-vit*.json") if "-quick" not in p.name
    )
    return runs[-1] if runs else None


def registry_section() -> str:
    path = latest_verify()
    errors = dict(json.loads(path.read_text())["benchmarks"]["verify"]["exactness"])
    sources = [path]
    vit = latest_vit()
    if vit is not None:
        errors.update(json.loads(vit.read_text())["benchmarks"]["vit"].get("exactness", {}))
        sources.append(vit)
    named = " and ".join(f"`{p.relative_to(ROOT).as_posix()}`" for p in sources)
    return (
        f"{START}\n{markdown_table(errors)}\n\nLargest check error: over every check of that "
        f"module type on an example model with random weights, from {named} "
        f"(`make bench`).\n{END}"
    )


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} section", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + registry_section() + tail)
    print("README.md: registry table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
