"""Files of tensors: written atomically, read safely, with errors that say what is wrong.

- :func:`atomic_save`: ``torch.save`` to a temporary file in the same folder, flushed to
  disk, then moved into place with ``os.replace``: a crash (or ``kill -9``) at any moment
  leaves the old file or the new one, never half of one. The file gets the permissions a
  new file normally gets (0644 under the usual umask), not the temporary file's 0600.
  :func:`atomic_write_text` writes text (a JSON manifest, say) the same way.
- :func:`check_loadable`: what ``torch.load(weights_only=True)`` will refuse (a ``Path``,
  a numpy array, any Python object), found before writing, with the key that holds it.
- :func:`read`: ``torch.load(weights_only=True)`` with a clear error for a folder, a
  missing, empty, truncated or text file, and for pickled objects
  (:class:`UnsafeFileError`, one message wherever attnviz reads a file).
- :func:`load_strict`: load a state dict into a model only if every key and shape fits;
  otherwise change nothing and raise one message that lists what is unused, missing and
  of another shape.

- :func:`write_checkpoint` / :func:`read_checkpoint`: attnviz's checkpoint format (a
  model's weights with plain data beside them), written atomically after
  :func:`check_loadable`, read with :func:`read` and loaded with :func:`load_strict`.

This is attnviz's one door for files of tensors: checkpoints of :mod:`attnviz.train`, the
shipped models, the official CBAM checkpoint and dataset statistics are all read here.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "UnsafeFileError",
    "atomic_save",
    "atomic_write_text",
    "check_loadable",
    "load_strict",
    "read",
    "read_checkpoint",
    "unwritable",
    "write_checkpoint",
]

#: the ``"format"`` entry of the checkpoints :func:`write_checkpoint` writes
CHECKPOINT_FORMAT = "attnviz-checkpoint-2"

_ZIP = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE = b"\x80"  # the legacy format starts with a pickle protocol opcode


class UnsafeFileError(ValueError, pickle.UnpicklingError):
    """A file that ``torch.load(weights_only=True)`` refuses: it holds pickled Python objects.

    Both a ``ValueError`` (a file attnviz will not read) and a ``pickle.UnpicklingError``
    (what ``torch.load`` raised), so either ``except`` clause catches it.
    """


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


def unwritable(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at ``path`` (its folder is missing or read-only), or
    None. Checked before any work by every command that writes (the atomic writes below
    would make a missing folder; the commands refuse it instead)."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        return f"no folder {folder} to write it in"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder} is not writable"
    return None


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
        UnsafeFileError: the file holds objects ``weights_only`` refuses; the message says
            why attnviz will not unpickle them and how to re-save the weights.
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
        raise UnsafeFileError(
            f"attnviz refuses to load {str(path)!r}: torch.load(weights_only=True) found Python "
            "objects in it other than tensors, numbers, strings and containers (an optimizer's "
            "or a training script's arguments, say), and unpickling those can run arbitrary "
            "code. If you trust the file, extract the weights once: ck = torch.load(path, "
            "weights_only=False); torch.save({'state_dict': ck.get('state_dict', ck)}, "
            "'weights.pth') (or re-save a model with attnviz.train.save_checkpoint), then load "
            f"that. torch said: {str(e).splitlines()[0]}"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # RuntimeError, EOFError, KeyError, struct.error, ...: a bad file
        raise ValueError(
            f"{str(path)!r} is truncated or corrupt, not a readable {what} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'})"
        ) from None


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    source: str = "the checkpoint",
    model_name: str | None = None,
    renamed: bool = False,
    optional: tuple[str, ...] = (),
    hint: str = "",
) -> None:
    """Load ``state_dict`` into ``model`` only if every key and shape fits, else change nothing.

    Args:
        model: what to load into.
        state_dict: the weights (keys already in ``model``'s names).
        source: the file or thing they came from, for the message.
        model_name: what the message calls the model (default: its class name).
        renamed: the keys were renamed from the file's own (the message says so).
        optional: key suffixes the file may lack; the model keeps its own values for them
            (old checkpoints have no ``".num_batches_tracked"`` counters, unused in eval).
        hint: a sentence added to the message (e.g. which file was expected).

    Raises:
        ValueError: the weights do not fit. The message lists the file's keys the model does
            not have, the model's keys missing from the file and the shapes that differ;
            ``model`` is unchanged.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source} holds a {type(state_dict).__name__}, not weights")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not any(map(k.endswith, optional))]
    unused = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {_shape(v)}, model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and _shape(v) != tuple(own[k].shape)
    ]
    if missing or unused or shapes:
        after = " (after renaming)" if renamed else ""
        raise ValueError(
            f"{source} does not fit {model_name or type(model).__name__}; nothing was loaded: "
            f"unused keys of the file{after} {_listing(unused)}; model keys missing from the "
            f"file {_listing(missing)}; shapes that differ {_listing(shapes)}."
            + (f" {hint}" if hint else "")
        )
    kept = {k: v for k, v in own.items() if k not in state_dict}
    model.load_state_dict({**kept, **state_dict}, strict=True)


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _listing(items: list[str], n: int = 8) -> str:
    if not items:
        return "none"
    shown = ", ".join(repr(k) for k in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"


def write_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and plain data beside them as one checkpoint, atomically.

    ``meta`` that ``weights_only`` loading would refuse is refused here (``TypeError``
    naming the key), before anything is written. :func:`attnviz.train.save_checkpoint` is
    the form that takes an optimizer and a training history.
    """
    check_loadable(dict(meta or {}), "meta")
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer,
        "history": history,
        "meta": dict(meta or {}),
        **dict(training or {}),
    }
    return atomic_save(state, path)


def read_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint with :func:`read`; load its weights into ``model`` if given.

    A file of bare weights (a ``state_dict``) reads as ``{"model": weights, ...}``. The
    model changes only if every key and shape fits (:func:`load_strict`).

    Raises:
        what :func:`read` and :func:`load_strict` raise.
    """
    state = read(path, map_location=map_location)
    if not isinstance(state, dict) or "model" not in state:
        state = {"model": state, "optimizer": None, "history": None, "meta": {}}
    if model is not None:
        load_strict(model, state["model"], source=f"the checkpoint {path}")
    return state
