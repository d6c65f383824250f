"""``attnviz demo``: run every notebook headless, write an HTML gallery."""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path
from typing import Any

from .._resources import notebooks_dir

__all__ = ["demo", "register"]


def _need_notebook_extra() -> None:
    """ImportError naming the extra when the Jupyter pieces ``attnviz demo`` runs on are missing."""
    import importlib.util

    missing = [
        m
        for m in ("nbformat", "nbclient", "nbconvert", "ipykernel")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ImportError(
            f"running notebooks needs {', '.join(missing)}: pip install 'attnviz[notebooks]'"
        )


# -- demo -----------------------------------------------------------------------------------
def _html(nb, path: Path) -> None:
    from nbconvert import HTMLExporter

    from ..storage import atomic_write_text

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    atomic_write_text(body, path)


def _index(results: list[dict], out: Path, quick: bool) -> Path:
    """index.html: one row per notebook, its status, time and error (no terminal codes)."""
    from ..nbrun import strip_ansi

    def link(r: dict) -> str:
        name = html.escape(r["name"])
        return f"<a href='{html.escape(r['html'])}'>{name}</a>" if r["html"] else name

    def shared(r: dict) -> str:
        return " ".join(
            f"<a href='{html.escape(p)}'>{html.escape(p)}</a>" for p in r.get("exports", [])
        )

    rows = "\n".join(
        f"<tr><td>{link(r)}</td>"
        f"<td class='{'ok' if r['ok'] else 'bad'}'>{html.escape(r['status'])}</td>"
        f"<td>{r['seconds']:.0f} s</td>"
        f"<td>{shared(r)}</td>"
        f"<td><pre>{html.escape(strip_ansi(r['error']))}</pre></td></tr>"
        for r in results
    )
    mode, when = "quick" if quick else "full", time.strftime("%Y-%m-%d %H:%M")
    failed = sum(not r["ok"] for r in results)
    style = (
        "body{font-family:sans-serif;margin:2em} td{padding:.3em 1em;vertical-align:top} "
        ".ok{color:#070} .bad{color:#b00;font-weight:bold} "
        "pre{max-width:60em;white-space:pre-wrap}"
    )
    page = (
        f"<!doctype html><meta charset='utf-8'><title>attnviz gallery</title><style>{style}</style>"
        f"<h1>attnviz notebooks</h1><p>Mode: {mode}; run {when}; {len(results)} notebooks, "
        f"{failed} not ok.</p><table><tr><th>notebook</th>"
        f"<th>status</th><th>time</th><th>interactive pages</th><th>error</th></tr>{rows}</table>"
    )
    from ..storage import atomic_write_text

    return atomic_write_text(page, out / "index.html")


def _run_one(path: Path, out: Path, args: argparse.Namespace) -> dict:
    """Execute one notebook and render it; every outcome becomes a result, none raises."""
    import nbformat

    from ..nbrun import NotebookError, execute_notebook

    start, error, status = time.perf_counter(), "", "ok"
    executed = out / path.name
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.html")}
    nb = None
    try:
        # quick: the notebooks open on the shipped models (TRAIN = False), notebook 04 without
        # downloads; full: every model trained here, the full recipes
        params = {"QUICK": not args.full, "TRAIN": bool(args.full)}
        nb = execute_notebook(path, params, timeout=args.timeout, output=executed, cwd=out)
    except NotebookError as e:
        status = e.status
        where = f"cell {e.cell}: " if e.cell >= 0 else ""
        error = f"{where}{e.ename}: {e.evalue}" + (f"\n{e.traceback}" if e.traceback else "")
    except Exception as e:  # anything else (e.g. no kernel to start): reported, not fatal
        status, error = "failed", f"{type(e).__name__}: {e}"
    page = ""
    try:
        if nb is None and executed.exists():
            nb = nbformat.read(executed, as_version=4)
        if nb is not None:
            page = path.stem + ".html"
            _html(nb, out / page)
    except Exception as e:  # the page could not be rendered: say so, keep going
        error += f"\n(no HTML page: {type(e).__name__}: {e})"
        page = ""
    # the offline pages the notebook exported (explorer.export_html) into the gallery
    exports = sorted(
        p.name
        for p in out.glob("*.html")
        if p.name not in (page, "index.html") and before.get(p.name) != p.stat().st_mtime_ns
    )
    return {
        "name": path.stem,
        "html": page,
        "exports": exports,
        "ok": status == "ok",
        "status": status,
        "seconds": time.perf_counter() - start,
        "error": error,
    }


def demo(args: argparse.Namespace) -> int:
    """Execute every notebook headless, keep going past failures, always write the gallery."""
    try:
        from ..nbrun import strip_ansi

        _need_notebook_extra()
    except ImportError as e:
        print(f"attnviz demo: {e}", file=sys.stderr)
        return 2

    src = Path(args.notebooks) if args.notebooks else notebooks_dir()
    paths = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        chosen = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
        unknown = [o for o in args.only if not any(p.name.startswith(o) for p in paths)]
        if unknown:
            print(
                f"--only {unknown}: no such notebook in {src}; choose from "
                f"{[p.stem for p in paths]}",
                file=sys.stderr,
            )
            return 2
        paths = chosen
    if not paths:
        print(f"no notebooks in {src}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.resolve() in {p.resolve().parent for p in paths}:
        print(
            f"--out {out} holds the source notebooks: the executed copies would replace "
            "them; choose another folder (default build/demo)",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    try:
        for i, path in enumerate(paths, 1):
            mode = "full" if args.full else "quick"
            print(f"[{i}/{len(paths)}] {path.name} ({mode}) ...", flush=True)
            r = _run_one(path, out, args)
            results.append(r)
            print(
                f"    {r['status']} in {r['seconds']:.0f} s"
                + (f" -> {out / r['html']}" if r["html"] else ""),
                flush=True,
            )
            if r["error"]:
                print(strip_ansi(r["error"]), file=sys.stderr)
    finally:  # even on Ctrl-C: the gallery of what ran
        index = _index(results, out, quick=not args.full)
    failed = [r["name"] for r in results if not r["ok"]]
    print(f"gallery: {index.resolve()}" + (f"  ({len(failed)} not ok: {failed})" if failed else ""))
    return 1 if failed else 0


def register(sub: Any) -> None:
    """Add the command's parser to ``attnviz``'s subparsers."""
    d = sub.add_parser("demo", help="run every notebook headless and write an HTML gallery")
    d.add_argument(
        "--full",
        action="store_true",
        help="train every model here with the full recipes (TRAIN = True, QUICK = False; "
        "default: QUICK = True, the notebooks open on the shipped models)",
    )
    d.add_argument("--out", default="build/demo", help="gallery folder")
    d.add_argument(
        "--notebooks", help="folder of numbered notebooks (default: the ones attnviz ships)"
    )
    d.add_argument(
        "--only",
        nargs="+",
        metavar="NOTEBOOK",
        help="run only these notebooks (a number such as 02, or a name)",
    )
    d.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    d.set_defaults(run=demo)
