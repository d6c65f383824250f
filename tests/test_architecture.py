"""The import graph follows the layers of docs/ARCHITECTURE.md: no module imports from a
higher layer, and there is no cycle between the package's parts.

Data flows model -> capture -> maps -> (metrics | render) -> widgets / notebooks; a
lower layer never reaches up (metrics never draws, maps never captures).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "attnviz"

# part of the package -> floor; a part is a top-level module or subpackage of attnviz. A part
# imports only parts on lower floors: parts on one floor never import each other, so the
# drawing in docs/ARCHITECTURE.md hides no shortcut.
LAYERS = {
    "_compat": 0,
    "_server": 0,  # run by path inside Voila: imports nothing of attnviz
    "_resources": 0,
    "storage": 0,
    "running": 0,
    "maps": 1,
    "modules": 1,
    "records": 2,
    "probes": 3,
    "registry": 4,
    "capture": 5,
    "metrics": 6,
    "render": 6,
    "data": 7,
    "photos": 7,
    "testing": 7,
    "models": 8,
    "cam": 8,
    "train": 9,
    "zoo": 9,
    "analysis": 9,
    "coverage": 9,
    "attribution": 9,
    "recipes": 10,
    "stats": 10,
    "explain": 10,
    "shipped": 11,
    "widgets": 11,
    "nbrun": 12,
    "app": 12,
    "cli": 13,
    "__init__": 14,  # the package's front door re-exports, nothing imports it
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The attnviz modules ``path`` imports (relative imports resolved, at any depth)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "attnviz"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "attnviz":
                module = node.module
            else:
                continue
            subs = [f"{module}.{a.name}" for a in node.names if _exists(f"{module}.{a.name}")]
            out |= set(subs) if len(subs) == len(node.names) else {module, *subs}
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = _part(_module(path))
        if path == PACKAGE / "__init__.py":
            src = "__init__"
        graph.setdefault(src, set()).update(_part(m) for m in _imports(path) if _part(m) != src)
    return graph


def test_every_part_has_a_layer():
    parts = {_part(_module(p)) for p in PACKAGE.rglob("*.py")}
    assert parts == set(LAYERS), (
        f"give these a layer here and in docs/ARCHITECTURE.md: {parts - set(LAYERS)}; "
        f"gone: {set(LAYERS) - parts}"
    )


def test_no_import_reaches_up_a_layer():
    upward = [
        f"{src} (floor {LAYERS[src]}) imports {dst} (floor {LAYERS[dst]})"
        for src, dsts in _graph().items()
        for dst in dsts
        if LAYERS[dst] > LAYERS[src]
    ]
    assert not upward, upward


def test_no_import_crosses_a_floor():
    """Parts on one floor do not import each other: each floor stands on the ones below."""
    across = [
        f"{src} imports {dst}, both on floor {LAYERS[src]}: move one of them"
        for src, dsts in _graph().items()
        for dst in dsts
        if LAYERS[dst] == LAYERS[src]
    ]
    assert not across, across


def test_no_cycle_between_parts():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_the_checker_sees_relative_and_nested_imports(tmp_path):
    # guard against a checker that passes because it sees nothing
    graph = _graph()
    assert "capture" in graph["widgets"] and "maps" in graph["metrics"]
    assert "records" in graph["probes"] and not graph.get("maps")


def test_architecture_doc_lists_every_part_in_its_layer():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for part, layer in LAYERS.items():
        if part == "__init__":
            continue
        rows = [line for line in doc.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
        row = next((line for line in rows if re.match(rf"\|\s*{layer}\s*\|", line)), "")
        parts = re.findall(r"`(\w+)`", row.split("|")[2]) if row else []
        assert part in parts, f"docs/ARCHITECTURE.md: floor {layer}'s row should list `{part}`"
        elsewhere = [
            r.split("|")[1].strip() for r in rows if part in re.findall(r"`(\w+)`", r.split("|")[2])
        ]
        assert elsewhere == [str(layer)], f"`{part}` is drawn on floors {elsewhere}, not {layer}"
