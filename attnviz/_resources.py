"""Files attnviz ships: the sample photos, the trained models and the notebooks.

In a wheel they live inside the package (``attnviz/_photos``, ``attnviz/_models``,
``attnviz/_notebooks``, mapped there from the repository's ``assets/photos``,
``assets/models`` and ``notebooks`` by ``pyproject.toml``); in a source checkout (an
editable install) they are read where they are. Either way callers get a real folder on disk.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["models_dir", "notebooks_dir", "photos_dir", "version"]

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


def models_dir() -> Path:
    """The folder of the shipped trained models and their ``manifest.json``."""
    return _shipped("_models", _REPO / "assets" / "models")


def version() -> str:
    """attnviz's installed version (what files it writes record), for modules below
    ``attnviz/__init__.py``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("attnviz")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
