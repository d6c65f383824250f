"""Execute a notebook headless with parameters (papermill-style), for tests and the demo.

The notebook's cell tagged ``parameters`` holds the defaults; the given parameters
are injected as a new cell right after it, so the notebook reads them as if a
user had edited that cell.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "KernelDiedError",
    "NotNotebookError",
    "NotebookError",
    "NotebookTimeoutError",
    "execute_notebook",
    "inject_parameters",
    "strip_ansi",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


class NotebookError(RuntimeError):
    """A cell failed: names the notebook, the cell number and the error."""

    status = "failed"

    def __init__(self, path: Path, cell: int, ename: str, evalue: str, traceback: str) -> None:
        self.path, self.cell, self.ename, self.evalue, self.traceback = (
            path,
            cell,
            ename,
            evalue,
            strip_ansi(traceback),
        )
        super().__init__(f"{path.name}: cell {cell} raised {ename}: {evalue}\n{self.traceback}")


class NotebookTimeoutError(NotebookError):
    """A cell ran longer than the timeout (the kernel was stopped)."""

    status = "timed out"


class KernelDiedError(NotebookError):
    """The kernel died while running a cell (out of memory, a crash, ``os._exit``)."""

    status = "kernel died"


class NotNotebookError(NotebookError):
    """The file is not a notebook nbformat can read (not JSON, or not a valid notebook)."""

    status = "not a notebook"


def inject_parameters(nb: Any, parameters: Mapping[str, Any]) -> Any:
    """Insert ``name = repr(value)`` lines after the ``parameters`` cell (in place).

    Raises:
        ValueError: the notebook has no cell tagged ``parameters``.
    """
    import nbformat

    def tags(cell: Any) -> list[str]:
        return cell.get("metadata", {}).get("tags", [])

    # an earlier run's injected cell goes first, so running twice injects once
    nb.cells = [c for c in nb.cells if "injected-parameters" not in tags(c)]
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in tags(c)]
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
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, not a notebook, unreadable: the file's fault
        raise NotNotebookError(path, -1, type(e).__name__, str(e).splitlines()[0], "") from None
    try:
        inject_parameters(nb, parameters or {})
    except ValueError as e:
        raise NotebookError(path, -1, "ValueError", str(e), "") from None
    current = {"cell": -1}

    def started(cell: Any, cell_index: int) -> None:
        current["cell"] = cell_index

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        on_cell_start=started,
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as e:
        cell = next(
            (
                i
                for i, c in enumerate(nb.cells)
                for o in c.get("outputs", [])
                if o.get("output_type") == "error"
            ),
            current["cell"],
        )
        raise NotebookError(path, cell, e.ename, e.evalue, str(e)) from None
    except CellTimeoutError:
        raise NotebookTimeoutError(
            path, current["cell"], "Timeout", f"the cell ran over {timeout} s", ""
        ) from None
    except DeadKernelError as e:
        raise KernelDiedError(path, current["cell"], "DeadKernelError", str(e), "") from None
    finally:
        if output is not None:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, output)
    return nb
