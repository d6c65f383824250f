"""Files attnviz ships: the sample photos and the notebooks.

In a wheel they live inside the package (``attnviz/_photos``, ``attnviz/_notebooks``,
mapped there from the repository's ``assets/photos`` and ``notebooks`` by
``pyproject.toml``); in a source checkout (an editable install) they are read where they
are. Either way callers get a real folder on disk.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["notebooks_dir", "photos_dir"]

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent


def _shipped(inside: str, in_repo: Path) -> Path:
    packaged = _PACKAGE / inside
    return packaged if packaged.is_dir() else in_repo


def photos_dir() -> Path:
    """The folder of the sample photos (and their LICENSE.md)."""
    return _shipped("_photos", _REPO / "assets" / "photos")


def notebooks_dir() -> Path:
    """The folder of the numbered notebooks (``01_*.ipynb`` ...)."""
    return _shipped("_notebooks", _REPO / "notebooks")
