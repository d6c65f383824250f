"""Files of tensors: written atomically, read safely, with errors that say what is wrong.

- :func:`atomic_save`: ``torch.save`` to a temporary file in the same folder, flushed to
  disk, then moved into place with ``os.replace``: a crash (or ``kill -9``) at any moment
  leaves the old file or the new one, never half of one. The file gets the permissions a
  new file normally gets (0644 under the usual umask), not the temporary file's 0600.
  :func:`atomic_write_text` writes text (a JSON manifest, say) the same way.
- :func:`check_loadable`: what ``torch.load(weights_only=True)`` will refuse (a ``Path``,
  a numpy array, any Python object), found before writing, with the key that holds it.
- :func:`read`: ``torch.load(weights_only=True)`` with a clear error for a folder, a
  missing, empty, truncated or text file, and for pickled objects.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "atomic_write_text", "check_loadable", "read"]

_ZIP = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE = b"\x80"  # the legacy format starts with a pickle protocol opcode


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see the module docstring)."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_save` writes tensors."""
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def _atomic(path: str | os.PathLike, write: Callable[[Any], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_loadable(obj: Any, what: str = "the checkpoint") -> None:
    """Raise ``TypeError`` naming the first value ``weights_only`` loading would refuse.

    Allowed: tensors, ``None``, bools, numbers, strings, bytes, ``torch.dtype``,
    ``torch.device``, ``torch.Size`` and lists, tuples and dicts of these (keys too).
    """
    bad = _first_refused(obj, what)
    if bad is not None:
        where, value = bad
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which "
            "torch.load(weights_only=True) refuses (loading arbitrary objects can run code); "
            "store plain data instead, e.g. str(path), array.tolist() or a tensor"
        )


_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _first_refused(obj: Any, where: str) -> tuple[str, Any] | None:
    if isinstance(obj, (torch.Tensor, torch.Size, *_PLAIN)):
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_refused(k, f"{where} key {k!r}") or _first_refused(v, f"{where}[{k!r}]")
            if found is not None:
                return found
        return None
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            found = _first_refused(v, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return where, obj


def read(path: str | os.PathLike, *, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``, or an error that says what the file is.

    Raises:
        FileNotFoundError: no file at ``path``.
        IsADirectoryError: ``path`` is a folder.
        ValueError: an empty, truncated or corrupt file, or one that is no PyTorch file at
            all (a text file, an image, ...).
        pickle.UnpicklingError: the file holds objects ``weights_only`` refuses; the message
            says why attnviz will not unpickle them and how to re-save the weights.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder, not a {what} file")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"{str(path)!r} is empty (0 bytes): not a {what}")
    if not (head.startswith(_ZIP) or head.startswith(_PICKLE)):
        shown = head.decode("ascii", "replace")
        raise ValueError(
            f"{str(path)!r} is not a PyTorch file (it starts with {shown!r}, not a zip archive "
            f"or a pickle): not a {what}"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise ValueError(f"{str(path)!r} is truncated or corrupt ({e})") from None
        raise pickle.UnpicklingError(
            f"torch.load(weights_only=True) refused {str(path)!r}: it holds Python objects "
            "other than tensors, numbers, strings and containers, and unpickling those can run "
            "code. If you trust the file, extract the weights once: "
            "ck = torch.load(path, weights_only=False); torch.save(ck['state_dict'] or ck, "
            f"'weights.pth'), then load that. torch said: {e}"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # RuntimeError, EOFError, KeyError, struct.error, ...: a bad file
        raise ValueError(
            f"{str(path)!r} is truncated or corrupt, not a readable {what} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'})"
        ) from None
