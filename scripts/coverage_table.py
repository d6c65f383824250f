"""Sweep the model zoo with attnviz.capture and print the coverage table (attnviz.coverage).

    python scripts/coverage_table.py                      # the table, then the counts
    python scripts/coverage_table.py --write README.md    # rewrite the README's section
    python scripts/coverage_table.py --only timm:maxxvit torchvision --seconds --progress

The README's table lies between ``<!-- coverage:start -->`` and ``<!-- coverage:end -->``;
tests/test_coverage.py checks that it is what this writes. Every family of the installed
timm, torchvision's transformers and (if installed) Hugging Face's vision encoders, random
weights, one image each: about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from attnviz import coverage

START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def replace_section(text: str, table: str) -> str:
    """``text`` with what lies between the markers replaced by ``table``."""
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"no {START} ... {END} section: add the two markers where it belongs")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table.rstrip()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    write = "replace the marked section of this file instead of printing"
    parser.add_argument("--write", metavar="README", type=Path, help=write)
    only = "libraries, library:family or timm:<model> (default: every one)"
    parser.add_argument("--only", nargs="+", metavar="NAME", help=only)
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--seconds", action="store_true", help="add the time per model")
    parser.add_argument("--progress", action="store_true", help="one line per model on stderr")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rows = coverage.sweep(args.only, batch=args.batch, progress=args.progress)
    wall = time.perf_counter() - start
    counts = coverage.summary(rows)
    counts["wall_seconds"] = round(wall, 1)
    table = coverage.markdown_table(rows, seconds=args.seconds)
    if args.write is not None:
        if args.seconds:
            parser.error("--seconds makes the table differ from run to run: not with --write")
        try:
            section = coverage.readme_section(rows)
            args.write.write_text(replace_section(args.write.read_text(), section))
        except ValueError as e:
            print(f"{args.write}: {e}", file=sys.stderr)
            return 2
        print(f"{args.write}: coverage table rewritten ({len(rows)} models)")
    else:
        print(table)
    print(json.dumps(counts, indent=1), file=sys.stderr if args.write is None else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
