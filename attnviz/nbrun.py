"""Execute a notebook headless with parameters (papermill-style), for tests and the demo.

The notebook's cell tagged ``parameters`` holds the defaults; the given parameters
are injected as a new cell right after it, so the notebook reads them as if a
user had edited that cell.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["NotebookError", "execute_notebook", "inject_parameters"]


class NotebookError(RuntimeError):
    """A cell failed: names the notebook, the cell number and the error."""

    def __init__(self, path: Path, cell: int, ename: str, evalue: str, traceback: str) -> None:
        self.path, self.cell, self.ename, self.evalue, self.traceback = (
            path, cell, ename, evalue, traceback,
        )  # fmt: skip
        super().__init__(f"{path.name}: cell {cell} raised {ename}: {evalue}\n{traceback}")


def inject_parameters(nb: Any, parameters: Mapping[str, Any]) -> Any:
    """Insert ``name = repr(value)`` lines after the ``parameters`` cell (in place).

    Raises:
        ValueError: the notebook has no cell tagged ``parameters``.
    """
    import nbformat

    tagged = [
        i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if not tagged:
        raise ValueError("the notebook has no cell tagged 'parameters'; tag its parameters cell")
    i = tagged[0]
    if parameters:
        src = "# Injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        new = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(i + 1, new)
    return nb


def execute_notebook(
    path: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    timeout: int = 600,
    cwd: str | os.PathLike | None = None,
    kernel_name: str = "python3",
    output: str | os.PathLike | None = None,
) -> Any:
    """Run every cell of ``path`` on a fresh kernel and return the executed notebook.

    Args:
        path: the ``.ipynb`` file.
        parameters: values injected after the ``parameters`` cell (e.g. ``{"QUICK": True}``).
        timeout: seconds per cell, so a stalled kernel fails fast.
        cwd: working directory of the kernel (default: the notebook's folder).
        kernel_name: Jupyter kernel to start.
        output: where to write the executed notebook (also written when a cell fails).

    Raises:
        NotebookError: a cell raised; carries the cell number and traceback.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, parameters or {})
    client = NotebookClient(
        nb, timeout=timeout, kernel_name=kernel_name,
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )  # fmt: skip
    try:
        client.execute()
    except CellExecutionError as e:
        cell = next(
            (i for i, c in enumerate(nb.cells) for o in c.get("outputs", [])
             if o.get("output_type") == "error"),
            -1,
        )  # fmt: skip
        raise NotebookError(path, cell, e.ename, e.evalue, str(e)) from None
    finally:
        if output is not None:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, output)
    return nb
