"""Attention statistics over whole data sets: streamed, exact, resumable, distributed.

The SE paper's class-wise excitation figure, and the questions that follow it ("which
channels fire for which class?", "which images excite channel c most?", "where does block
k look on average?"), are statistics over a data set of any size::

    from attnviz.stats import dataset_stats, DatasetStats
    stats = dataset_stats(model, dataset, out="stats.pt")      # any Dataset of (image, label)
    stats.channel_stats()        # -> analysis.ChannelStats: plot_class_excitation(...)
    stats.top("layer3.0.attention", channel=5)          # the images that excite it most
    stats.mean_map("layer4.0.attention.spatial_gate")   # mean spatial map per class

or from the shell, on an image folder (torchvision's ``ImageFolder`` layout) or
WebDataset-style tar shards, and on many processes with ``torchrun``::

    attnviz stats --model resnet50_se... --data /imagenet/val --out val-stats.pt
    torchrun --nproc_per_node 4 -m attnviz.cli stats --model ... --data ... --out ...

**What is reduced**, per block and per class, in float64: for channel attention (SE,
ECA, CBAM's Mc, ...) the count, mean and M2 of every channel's weight, merged with Chan
et al.'s parallel formula (so partial results combine exactly), a histogram of the
weights and the top-k and bottom-k images of every channel (by data set index); for
spatial attention (CBAM's Ms) the sum of the maps at the block's native resolution. The
memory is that of these accumulators, independent of the data set's size.

**Shards and resuming**: the data set's indices are cut into shards of ``shard_size``
consecutive images; each process reduces every ``world_size``-th shard, its partial
result starting from zero at every shard and merged shard after shard. After every shard
the process writes its state atomically to ``<out>.parts/rank-R-of-W.pt``; a re-run with
the same arguments skips the shards already done and ends with the same file as an
uninterrupted run (bit for bit).

**Many processes**: under ``torchrun`` (``torch.distributed``; NCCL on GPUs, gloo on
CPUs) each rank reduces its shards, then rank 0 gathers the ranks' partial results
(``all_gather_object``, no shared file system needed) and merges them in rank order:
the result equals a single process's up to float64 rounding (~1e-15 relative). Not
distributed: the final merge and the write, on rank 0 (small: one partial per rank).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from . import storage
from ._resources import version
from .analysis import ChannelStats, _records_once
from .photos import ImageLoadError, load_image
from .records import ChannelRecord, SpatialRecord
from .running import inference, model_device

__all__ = [
    "DatasetStats",
    "TarShards",
    "dataset_stats",
    "fingerprint",
    "input_transform",
    "model_fingerprint",
    "open_dataset",
    "read_image",
]

FORMAT = "attnviz-stats-1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
#: what a sample that cannot be read raises while it is read (a file that is not an image,
#: truncated or corrupt, too large, gone): named and skipped (``skip_bad``) or reported
_UNREADABLE = (OSError, ValueError, SyntaxError)


# -- data ------------------------------------------------------------------------------------------
class TarShards(torch.utils.data.Dataset):
    """WebDataset-style tar shards as a map-style data set: ``(image, label)`` by index.

    Each sample is the files sharing one key (the member name up to its first dot after
    the last ``/``): an image (``.jpg``, ``.png``, ...) and its label in ``.cls`` (an
    integer as text). The tar files are indexed once (member offsets), then read at
    random, so shards of any size stream with workers and resume like any data set.
    Images are read by :func:`read_image` (EXIF orientation, any mode to RGB); an image
    that cannot be decoded raises :class:`~attnviz.photos.ImageLoadError` naming the
    shard and the member (``shard.tar:key.png``).

    Args:
        paths: the ``.tar`` files.
        transform: applied to each RGB PIL image.
        skip_bad: a file that is not a tar archive, or a sample without an image or a
            readable label, is left out and listed in :attr:`skipped` (``(source,
            reason)``) instead of raising.

    Raises:
        ImageLoadError: a file that is not a readable tar archive (without ``skip_bad``).
        ValueError: a sample without an image or a ``.cls`` label (without ``skip_bad``).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        transform: Callable | None = None,
        *,
        skip_bad: bool = False,
    ):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("TarShards needs at least one .tar file")
        self.transform = transform
        self.samples: list[tuple[int, int, int, int]] = []  # (tar, image offset, size, label)
        self.names: list[str] = []  # "<shard>:<member>" of each sample's image
        self.skipped: list[tuple[str, str]] = []
        for t, path in enumerate(self.paths):
            try:
                self._index(t, path, skip_bad)
            except tarfile.ReadError:
                reason = f"{path} is not a tar archive (or a damaged one)"
                if not skip_bad:
                    raise ImageLoadError(reason) from None
                self.skipped.append((str(path), reason))
            except (tarfile.TarError, EOFError, OSError) as e:
                reason = f"{path} could not be read as a tar archive ({type(e).__name__}: {e})"
                if not skip_bad:
                    raise ImageLoadError(reason) from None
                self.skipped.append((str(path), reason))

    def _index(self, t: int, path: Path, skip_bad: bool) -> None:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        found: list[tuple[int, int, int, str]] = []
        bad: list[tuple[str, str]] = []
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                key, _, ext = base.partition(".")
                groups.setdefault(f"{folder}/{key}", {})[f".{ext.lower()}"] = m
            for key, files in groups.items():
                image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
                source = f"{path}:{image.name if image is not None else key.lstrip('/')}"
                if image is None or ".cls" not in files:
                    reason = (
                        f"{path}: sample {key!r} needs an image ({', '.join(IMAGE_EXTENSIONS)})"
                        f" and a .cls label; it has {sorted(files)}"
                    )
                    if not skip_bad:
                        raise ValueError(reason)
                    bad.append((source, reason))
                    continue
                f = tar.extractfile(files[".cls"])
                text = f.read().decode(errors="replace").strip() if f is not None else ""
                try:
                    label = int(text)
                except ValueError:
                    reason = f"{source}: its label {files['.cls'].name} is {text[:40]!r}"
                    if not skip_bad:
                        raise ValueError(reason) from None
                    bad.append((source, reason))
                    continue
                found.append((image.offset_data, image.size, label, source))
        # a shard is taken whole or not at all (an archive that breaks half-way is skipped)
        for offset, size, label, source in found:
            self.samples.append((t, offset, size, label))
            self.names.append(source)
        self.skipped.extend(bad)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        t, offset, size, label = self.samples[i]
        with open(self.paths[t], "rb") as f:
            f.seek(offset)
            data = io.BytesIO(f.read(size))
        data.name = self.names[i]  # what load_image's messages call it
        image = load_image(data)
        return (self.transform(image) if self.transform else image), label

    @property
    def targets(self) -> list[int]:
        return [s[3] for s in self.samples]


def read_image(path: str | os.PathLike) -> Any:
    """An image file as an RGB PIL image, as a viewer shows it (the image folder's loader).

    :func:`attnviz.photos.load_image`: EXIF orientation applied, transparency over white,
    grey, palette, 1-bit, 16-bit and CMYK images converted to 8-bit RGB, the size limits of
    :data:`attnviz.photos.LIMITS` checked from the header.

    Raises:
        ImageLoadError: not an image, truncated or corrupt; the message names the file.
    """
    return load_image(path)


def _listed(path: str) -> bool:
    """An image folder's file to read: an image by its extension, not a hidden file (a
    macOS ``._name.png`` resource fork or ``.DS_Store``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def input_transform(
    size: int,
    *,
    resize: int | None = None,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    channels: int = 3,
) -> Callable[[Any], torch.Tensor]:
    """A network's preprocessing for images of any size: resize the shorter side to
    ``resize`` (default ``size``), crop the centred ``size`` x ``size`` square, scale to
    [0, 1] and normalise (by default not at all: attnviz's shipped models take [0, 1]
    images), as torchvision's classification transforms do.

    Args:
        size: the side of the network's square input.
        resize: the shorter side before the crop (torchvision's weights: 256 for 224).
        mean, std: per channel (``channels`` of each).
        channels: 3, or 1 for a network of grey images (converted first).

    Raises:
        ValueError: a size or channel count that is not a positive int.
    """
    from torchvision.transforms import Compose, Grayscale

    from .zoo import Preprocess

    for name, value in (("size", size), ("resize", resize if resize is not None else size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    preprocess = Preprocess(
        size, resize or size, mean=tuple(mean)[:channels], std=tuple(std)[:channels]
    )
    return Compose([Grayscale(1), preprocess]) if channels == 1 else preprocess


def open_dataset(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    transform: Callable,
    *,
    skip_bad: bool = False,
):
    """An image folder (``ImageFolder`` layout: one sub-folder per class, sub-folders inside
    a class read too) or tar shards (a ``.tar`` file, several, or a folder of them) as a data
    set of (tensor, label).

    Images are read by :func:`read_image` (EXIF orientation, any mode to RGB); hidden files
    (``._name.png``, ``.DS_Store``) are not listed. Give a ``transform`` that resizes
    (:func:`input_transform`) when the images differ in size.

    Args:
        path: the folder, or the tar shard(s).
        transform: applied to each RGB PIL image.
        skip_bad: tar shards only: a file that is not a tar archive, or a sample without an
            image or label, is listed in the data set's ``skipped`` instead of raising
            (undecodable images are skipped by :func:`dataset_stats`'s ``skip_bad``).

    Raises:
        FileNotFoundError: no such folder or shard, or a folder without class folders.
        ImageLoadError: a ``.tar`` that is not a tar archive (naming it).
    """
    from torchvision.datasets import ImageFolder

    paths = [Path(p) for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
    if len(paths) > 1:  # several: .tar files, and folders of them
        paths = [t for p in paths for t in (sorted(p.glob("*.tar")) if p.is_dir() else [p])]
        others = [str(p) for p in paths if p.suffix != ".tar"]
        if others:
            raise FileNotFoundError(
                f"{', '.join(others)}: several --data paths must be .tar shards or folders of "
                "them (an image folder is given alone)"
            )
    tars = [p for p in paths if p.suffix == ".tar"]
    if len(paths) == 1 and paths[0].is_dir():
        inside = sorted(paths[0].glob("*.tar"))
        if inside:
            tars = inside
        else:
            try:
                return ImageFolder(
                    str(paths[0]), transform=transform, loader=read_image, is_valid_file=_listed
                )
            except FileNotFoundError as e:  # no class folders, or no images in them
                raise FileNotFoundError(
                    f"{paths[0]}: not an image folder with images (one sub-folder of images per "
                    f"class, as torchvision's ImageFolder reads) nor a folder of .tar shards "
                    f"({e})"
                ) from None
    if tars:
        missing = [str(p) for p in tars if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no such tar shard: {', '.join(missing)}")
        return TarShards(tars, transform, skip_bad=skip_bad)
    raise FileNotFoundError(
        f"{', '.join(map(str, paths))}: not an image folder (one sub-folder of images per "
        "class) nor .tar shards"
    )


def fingerprint(dataset: Any) -> str:
    """A SHA-256 that changes when the data set does: its files (names and sizes) for an
    image folder or tar shards, else its length and its first and last samples."""
    h = hashlib.sha256()
    h.update(f"{type(dataset).__name__}:{len(dataset)}".encode())
    samples = getattr(dataset, "samples", None)
    if isinstance(dataset, TarShards):
        for p in dataset.paths:
            h.update(f"{p.name}:{p.stat().st_size}".encode())
        h.update(repr(dataset.samples).encode())
    elif isinstance(samples, list) and samples and isinstance(samples[0], tuple):
        root = Path(getattr(dataset, "root", "."))
        for file, label in samples:
            h.update(f"{Path(file).relative_to(root)}:{Path(file).stat().st_size}:{label}".encode())
    else:
        for i in sorted({0, len(dataset) - 1}):
            x, y = dataset[i]
            h.update(torch.as_tensor(x).contiguous().numpy().tobytes())
            h.update(str(int(y)).encode())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-256 of the model's state (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- accumulators ----------------------------------------------------------------------------------
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan, Golub & LeVeque's parallel update of (count, mean, M2), per row (class)."""
    n = n_a + n_b
    nn_ = n.to(torch.float64).clamp_min(1)[:, None]
    delta = mean_b - mean_a
    fa, fb = n_a.to(torch.float64)[:, None], n_b.to(torch.float64)[:, None]
    mean = mean_a + delta * (fb / nn_)
    m2 = m2_a + m2_b + delta * delta * (fa * fb / nn_)
    return n, mean, m2


def _topk_merge(values: torch.Tensor, index: torch.Tensor, k: int, largest: bool):
    """The k best of each column, ties broken by the smaller data set index (deterministic),
    whatever order the rows come in (partial results of different shards or ranks)."""
    order = torch.argsort(index, dim=0, stable=True)
    values, index = values.gather(0, order), index.gather(0, order)
    order = torch.argsort(values, dim=0, descending=largest, stable=True)[:k]
    return values.gather(0, order), index.gather(0, order)


def _new_channel(k: int, c: int, bins: int, top_k: int) -> dict[str, torch.Tensor]:
    return {
        "n": torch.zeros(k, dtype=torch.long),
        "mean": torch.zeros(k, c, dtype=torch.float64),
        "m2": torch.zeros(k, c, dtype=torch.float64),
        "hist": torch.zeros(bins + 2, dtype=torch.long),  # [below 0, bins over [0, 1], above 1]
        "top_values": torch.empty(0, c, dtype=torch.float64),
        "top_index": torch.empty(0, c, dtype=torch.long),
        "bottom_values": torch.empty(0, c, dtype=torch.float64),
        "bottom_index": torch.empty(0, c, dtype=torch.long),
    }


def _add_channel(acc: dict, w: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, top_k: int):
    w = w.detach().to("cpu", torch.float64)
    k = len(acc["n"])
    n_b = torch.bincount(y, minlength=k)
    s = torch.zeros_like(acc["mean"]).index_add_(0, y, w)
    mean_b = s / n_b.to(torch.float64).clamp_min(1)[:, None]
    d = w - mean_b[y]
    m2_b = torch.zeros_like(acc["m2"]).index_add_(0, y, d * d)
    acc["n"], acc["mean"], acc["m2"] = _chan(acc["n"], acc["mean"], acc["m2"], n_b, mean_b, m2_b)
    bins = len(acc["hist"]) - 2
    flat = w.flatten()
    inside = (flat >= 0) & (flat <= 1)
    cell = (flat[inside] * bins).long().clamp_max(bins - 1) + 1
    acc["hist"] += torch.bincount(cell, minlength=bins + 2)
    acc["hist"][0] += int((flat < 0).sum())
    acc["hist"][-1] += int((flat > 1).sum())
    rows = idx[:, None].expand_as(w)
    for side, largest in (("top", True), ("bottom", False)):
        kept, kept_index = acc[f"{side}_values"], acc[f"{side}_index"]
        new, new_index = w, rows
        if len(kept) >= top_k:
            # only images that beat a channel's k-th kept weight can enter it (an equal
            # weight does not: its index is larger); the rest need no sorting
            edge = kept[-1]
            enters = ((w > edge) if largest else (w < edge)).any(1)
            if not bool(enters.any()):
                continue
            new, new_index = w[enters], rows[enters]
        # the kept rows (best first, ties by index) all have smaller indices than this batch,
        # whose rows come in index order: one stable sort keeps ties in index order
        values = torch.cat([kept, new])
        order = torch.argsort(values, dim=0, descending=largest, stable=True)[:top_k]
        acc[f"{side}_values"] = values.gather(0, order)
        acc[f"{side}_index"] = torch.cat([kept_index, new_index]).gather(0, order)


def _merge_channel(a: dict, b: dict, top_k: int) -> dict:
    out = dict(a)
    out["n"], out["mean"], out["m2"] = _chan(a["n"], a["mean"], a["m2"], b["n"], b["mean"], b["m2"])
    out["hist"] = a["hist"] + b["hist"]
    for side, largest in (("top", True), ("bottom", False)):
        out[f"{side}_values"], out[f"{side}_index"] = _topk_merge(
            torch.cat([a[f"{side}_values"], b[f"{side}_values"]]),
            torch.cat([a[f"{side}_index"], b[f"{side}_index"]]),
            top_k,
            largest,
        )
    return out


def _new_spatial(k: int, h: int, w: int) -> dict[str, torch.Tensor]:
    return {"n": torch.zeros(k, dtype=torch.long), "sum": torch.zeros(k, h, w, dtype=torch.float64)}


def _add_spatial(acc: dict, m: torch.Tensor, y: torch.Tensor) -> None:
    acc["n"] += torch.bincount(y, minlength=len(acc["n"]))
    acc["sum"].index_add_(0, y, m.detach().to("cpu", torch.float64))


def _merge_spatial(a: dict, b: dict) -> dict:
    return {"n": a["n"] + b["n"], "sum": a["sum"] + b["sum"]}


def _merge(a: dict | None, b: dict | None, top_k: int) -> dict | None:
    """Merge two partial results (block name -> accumulator); either may be empty."""
    if a is None or not a:
        return b
    if b is None or not b:
        return a
    out = {}
    for name in list(a) + [n for n in b if n not in a]:
        if name not in a or name not in b:
            out[name] = a.get(name) or b[name]
        elif a[name]["kind"] == "channel":
            out[name] = {"kind": "channel", **_merge_channel(a[name], b[name], top_k)}
        else:
            out[name] = {"kind": "spatial", **_merge_spatial(a[name], b[name])}
    return out


# -- one batch ------------------------------------------------------------------------------------
#: channel weights are reduced in chunks of at least this many images (within a shard): the
#: bookkeeping per call is fixed, so fewer, larger calls cost less per image
CHUNK = 512


def _flush(acc: dict, pending: dict, top_k: int) -> None:
    """Reduce the channel weights waiting in ``pending`` into ``acc`` (one call per block)."""
    for name, parts in pending.items():
        if parts:
            w, y, idx = (torch.cat(p) for p in zip(*parts))
            _add_channel(acc[name], w, y, idx, top_k)
    pending.clear()


def _reduce_batch(
    model, x, y, idx, blocks, acc: dict, pending: dict, k: int, bins: int, top_k: int
) -> None:
    """One batch: spatial maps summed now, channel weights queued in ``pending`` (flushed
    every :data:`CHUNK` images and at the end of a shard)."""
    for name, r in _records_once(model, x, ("channel", "spatial"), blocks).items():
        if r.kind == "channel":
            w = cast(ChannelRecord, r).weights
            if name not in acc:
                acc[name] = {"kind": "channel", **_new_channel(k, w.shape[1], bins, top_k)}
            pending.setdefault(name, []).append((w.detach().cpu(), y, idx))
        else:
            m = cast(SpatialRecord, r).map
            if name not in acc:
                acc[name] = {"kind": "spatial", **_new_spatial(k, *m.shape[-2:])}
            _add_spatial(acc[name], m.reshape(len(m), *m.shape[-2:]), y)
    waiting = pending and sum(len(p[1]) for p in next(iter(pending.values())))
    if waiting and waiting >= CHUNK:
        _flush(acc, pending, top_k)


class _ShardBatches:
    """Batch sampler over whole shards: batches of consecutive indices that never cross a
    shard's end. :meth:`plan` gives, batch by batch in the same order, (shard, first index,
    whether the batch ends its shard). Nothing is listed ahead: memory is flat."""

    def __init__(self, shards: list[int], shard_size: int, batch_size: int, size: int) -> None:
        self.shards, self.shard_size, self.batch_size, self.size = (
            shards,
            shard_size,
            batch_size,
            size,
        )

    def plan(self):
        for shard in self.shards:
            start = shard * self.shard_size
            stop = min(start + self.shard_size, self.size)
            for b in range(start, stop, self.batch_size):
                yield shard, b, b + self.batch_size >= stop

    def __iter__(self):
        for _, b, _ in self.plan():
            stop = min((b // self.shard_size + 1) * self.shard_size, self.size)
            yield list(range(b, min(b + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(1 for _ in self.plan())


# -- reading that names what it cannot read ------------------------------------------------------
def _source(dataset: Any, i: int) -> str:
    """What sample ``i`` is read from: its file (image folder), ``shard:member`` (tar
    shards), else ``sample i``."""
    names = getattr(dataset, "names", None)
    if isinstance(names, list) and i < len(names):
        return str(names[i])
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and i < len(samples) and isinstance(samples[i], tuple):
        if isinstance(samples[i][0], (str, os.PathLike)):
            return str(samples[i][0])
    return f"sample {i}"


class _Guarded(torch.utils.data.Dataset):
    """``dataset[i]`` as ``(x, y, i, None)``, or ``(None, -1, i, why)`` where it cannot be
    read: nothing raises in a DataLoader worker (whose errors come back wrapped in its
    traceback); the main process decides, naming the file."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int, str | None]:
        try:
            x, y = self.dataset[i]
        except _UNREADABLE as e:
            source, why = _source(self.dataset, i), str(e) or type(e).__name__
            return None, -1, i, why if source in why else f"{source}: {why}"
        return x, y, i, None


@dataclass
class _Batch:
    """The readable images of a batch, stacked, and what could not be read."""

    x: torch.Tensor | None
    y: torch.Tensor
    index: torch.Tensor
    bad: list[tuple[int, str]]
    shapes: list[tuple[int, tuple[int, ...]]] | None = None  # images of different sizes


def _collate(items: list[tuple[Any, Any, int, str | None]]) -> _Batch:
    good = [(x, y, i) for x, y, i, why in items if why is None]
    bad = [(i, why) for _, _, i, why in items if why is not None]
    index = torch.tensor([i for _, _, i in good], dtype=torch.long)
    y = torch.tensor([int(y) for _, y, _ in good], dtype=torch.long)
    if not good:
        return _Batch(None, y, index, bad)
    xs = [torch.as_tensor(x) for x, _, _ in good]
    if len({tuple(x.shape) for x in xs}) > 1:
        return _Batch(None, y, index, bad, [(i, tuple(x.shape)) for x, (_, _, i) in zip(xs, good)])
    return _Batch(torch.stack(xs), y, index, bad)


def _unreadable(why: str) -> ImageLoadError:
    return ImageLoadError(
        f"{why}\nThe run stops at the first file it cannot read; skip_bad=True (attnviz "
        "stats --skip-bad) leaves such files out and lists them in the result."
    )


def _mixed_sizes(dataset: Any, shapes: list[tuple[int, tuple[int, ...]]]) -> ValueError:
    (i, a), (j, b) = shapes[0], next(s for s in shapes if s[1] != shapes[0][1])
    return ValueError(
        f"the images differ in size: {_source(dataset, i)} is {'x'.join(map(str, a))} and "
        f"{_source(dataset, j)} is {'x'.join(map(str, b))} after the data set's transform. "
        "Give it a transform that resizes to the network's input, e.g. "
        "attnviz.stats.input_transform(64) (attnviz stats does so by default)."
    )


def _check_count(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _check_out(out: str | os.PathLike) -> Path:
    """The statistics file's path, checked before any work (its folder must exist)."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give the statistics file's name")
    why = storage.unwritable(path)
    if why:
        raise ValueError(f"out={str(out)!r}: {why}")
    return path


# -- the result ------------------------------------------------------------------------------------
@dataclass
class DatasetStats:
    """What :func:`dataset_stats` computed, with what it was computed on.

    Attributes:
        blocks: block name -> accumulator (plain tensors): ``kind`` ``"channel"`` with
            ``n`` (K), ``mean`` and ``m2`` (K x C, float64), ``hist`` (bins + 2: below 0,
            ``bins`` over [0, 1], above 1), ``top_values``/``top_index`` and
            ``bottom_values``/``bottom_index`` (k x C); or ``"spatial"`` with ``n`` (K)
            and ``sum`` (K x h x w, float64).
        counts: images per class (K).
        class_names: K names.
        meta: model, weights, transform, data set (kind, root, size, fingerprint),
            settings, processes, attnviz and torch versions.
    """

    blocks: dict[str, dict[str, Any]]
    counts: torch.Tensor
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> list[str]:
        """The files left out because they could not be read (``skip_bad``): ``"source:
        reason"`` each; empty when none was."""
        return list(self.meta.get("skipped", {}).get("files", []))

    @property
    def channel_blocks(self) -> list[str]:
        return [n for n, b in self.blocks.items() if b["kind"] == "channel"]

    @property
    def spatial_blocks(self) -> list[str]:
        return [n for n, b in self.blocks.items() if b["kind"] == "spatial"]

    def _block(self, name: str, kind: str) -> dict[str, Any]:
        names = self.channel_blocks if kind == "channel" else self.spatial_blocks
        if name not in names:
            raise KeyError(f"no {kind} block {name!r}; the {kind} blocks are {names}")
        return self.blocks[name]

    def channel_stats(self) -> ChannelStats:
        """The per-class means and within-class variances as :class:`ChannelStats` (for
        :func:`~attnviz.analysis.plot_class_excitation` and ``.specificity()``)."""
        mean, var, overall = {}, {}, {}
        for name in self.channel_blocks:
            b = self.blocks[name]
            n = b["n"].to(torch.float64)[:, None]
            empty = b["n"] == 0
            mean[name] = b["mean"].masked_fill(empty[:, None], float("nan"))
            var[name] = (b["m2"] / n).masked_fill(empty[:, None], float("nan"))
            overall[name] = (b["mean"] * n).sum(0) / n.sum()
        return ChannelStats(
            self.channel_blocks, mean, var, overall, self.counts.clone(), list(self.class_names)
        )

    def specificity(self) -> dict[str, float]:
        """Class-specificity of each channel block (see ``ChannelStats.specificity``)."""
        return self.channel_stats().specificity()

    def top(
        self, block: str, channel: int, *, lowest: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, data set indices) of the images that excite ``channel`` most (or least),
        best first."""
        b = self._block(block, "channel")
        side = "bottom" if lowest else "top"
        c = b[f"{side}_values"].shape[1]
        if not 0 <= channel < c:
            raise IndexError(f"channel must be in [0, {c}) for {block}, got {channel}")
        return b[f"{side}_values"][:, channel], b[f"{side}_index"][:, channel]

    def histogram(self, block: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts over [0, 1], bin edges) of every weight of ``block`` (counts below 0 and
        above 1, if any, are ``blocks[block]["hist"][0]`` and ``[-1]``)."""
        h = self._block(block, "channel")["hist"]
        return h[1:-1], torch.linspace(0, 1, len(h) - 1, dtype=torch.float64)

    def mean_map(self, block: str) -> torch.Tensor:
        """K x h x w: the mean spatial map of each class (NaN for empty classes)."""
        b = self._block(block, "spatial")
        return b["sum"] / b["n"].to(torch.float64)[:, None, None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "blocks": self.blocks,
            "counts": self.counts,
            "class_names": self.class_names,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (readable with ``torch.load(weights_only=True)``)."""
        return storage.atomic_save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetStats:
        data = storage.read(path, what="statistics file")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not an attnviz statistics file ({FORMAT})")
        return cls(data["blocks"], data["counts"], list(data["class_names"]), data["meta"])

    def summary(self) -> str:
        """A Markdown table: blocks, kind, channels or map size, specificity."""
        spec = self.specificity() if self.channel_blocks else {}
        rows = ["| block | kind | size | class specificity |", "|---|---|---|---:|"]
        for name, b in self.blocks.items():
            size = (
                f"{b['mean'].shape[1]} channels"
                if b["kind"] == "channel"
                else "x".join(map(str, b["sum"].shape[1:]))
            )
            s = f"{spec[name]:.3f}" if name in spec else "—"
            rows.append(f"| {name} | {b['kind']} | {size} | {s} |")
        read = int(self.counts.sum())
        rows += [
            "",
            f"{read} images read" + (f"; {len(self.skipped)} skipped:" if self.skipped else ""),
        ]
        rows += [f"- {why}" for why in self.skipped[:20]]
        if len(self.skipped) > 20:
            rows.append(f"- ... and {len(self.skipped) - 20} more (DatasetStats.skipped)")
        return "\n".join(rows)


# -- the streaming pass ---------------------------------------------------------------------------
def _distributed() -> tuple[int, int, Any]:
    """(rank, world size, torch.distributed or None): set up under torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1, None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # one GPU per process, as torchrun numbers them on a node
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), dist


def _labels_of(dataset: Any) -> Any:
    return getattr(dataset, "targets", None)


def dataset_stats(
    model: nn.Module,
    dataset: Any,
    *,
    out: str | os.PathLike | None = None,
    blocks: str | Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    shard_size: int = 1024,
    top_k: int = 16,
    bins: int = 50,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    describe: Mapping[str, Any] | None = None,
    on_shard: Callable[[int], None] | None = None,
    skip_bad: bool = False,
) -> DatasetStats:
    """Reduce a data set's attention to per-class statistics in one streaming pass.

    Args:
        model: any network :func:`attnviz.capture` records channel or spatial attention in.
        dataset: a map-style data set of ``(image tensor, label)`` (``ImageFolder``,
            :class:`TarShards`, a ``TensorDataset``, ...); see :func:`open_dataset`. Images
            of different sizes need a transform that resizes them (:func:`input_transform`).
        out: the statistics file (written atomically; its folder must exist); with it the
            run is resumable (state in ``<out>.parts/``, written after each shard and
            removed when the file is written). Without it nothing is written.
        blocks: glob pattern(s) choosing blocks (default every channel and spatial block).
        batch_size, num_workers: of the ``DataLoader``.
        shard_size: images per shard (the unit of resuming and of distribution).
        top_k: images kept per channel, highest and lowest.
        bins: histogram bins over [0, 1].
        num_classes, class_names: K (default: ``dataset.classes``, else max label + 1).
        device: where the model runs (default: its parameters' device).
        progress: a tqdm bar (rank 0).
        describe: stored in the file's ``meta`` (model name, weights, transform, ...).
        on_shard: called with each shard's number after its state is written (tests).
        skip_bad: leave out the samples that cannot be read (not an image, truncated,
            corrupt, too large: an ``OSError`` or ``ValueError`` while reading) and list
            them in the result (:attr:`DatasetStats.skipped`, the summary) instead of
            stopping at the first. Not part of the run's identity: a run that stopped at a
            bad file resumes with ``skip_bad=True``.

    Returns:
        The :class:`DatasetStats` (on every rank; rank 0 writes ``out``).

    Raises:
        ValueError: a bad argument (before any work), labels out of range, images of
            different sizes in one batch (naming two), no attention recorded.
        ImageLoadError: a sample that cannot be read, naming its file (without
            ``skip_bad``).
    """
    from torch.utils.data import DataLoader

    for name, value, minimum in (
        ("batch_size", batch_size, 1),
        ("shard_size", shard_size, 1),
        ("top_k", top_k, 1),
        ("bins", bins, 1),
        ("num_workers", num_workers, 0),
    ):
        _check_count(name, value, minimum)
    if num_classes is not None:
        _check_count("num_classes", num_classes)
    if out is not None:
        _check_out(out)
    size = len(dataset)
    if size == 0:
        raise ValueError("the data set is empty")
    names = list(class_names) if class_names is not None else getattr(dataset, "classes", None)
    if num_classes is None:
        if names:
            num_classes = len(names)
        else:
            labels = _labels_of(dataset)
            if labels is None:
                raise ValueError("pass num_classes= (the data set has no .classes or .targets)")
            num_classes = int(max(labels)) + 1
    names = [str(c) for c in (names or range(num_classes))]
    rank, world, dist = _distributed()
    device = torch.device(device) if device is not None else model_device(model)
    config = {
        "size": size,
        "fingerprint": fingerprint(dataset),
        "model": model_fingerprint(model),
        "batch_size": batch_size,
        "shard_size": shard_size,
        "top_k": top_k,
        "bins": bins,
        "num_classes": num_classes,
        "blocks": blocks,
        "world_size": world,
    }
    config = json.loads(json.dumps(config))  # plain lists: compares equal when read back
    if dist is not None:  # every rank must read the same data with the same model
        views: list[Any] = [None] * world
        dist.all_gather_object(views, (config["fingerprint"], config["model"]))
        if len(set(views)) > 1:
            raise ValueError(
                "the processes see different data sets or models (fingerprints differ): give "
                "every node the same files at the same path and the same weights"
            )
    shards = list(range(rank, -(-size // shard_size), world))
    parts = Path(f"{out}.parts") if out is not None else None
    state_path = parts / f"rank-{rank}-of-{world}.pt" if parts is not None else None
    acc: dict | None = None
    done: list[int] = []
    # files that could not be read, (data set index, "source: reason"): skipped ones, and
    # with tar shards the archives and samples left out while indexing
    skipped: list[tuple[int, str]] = [(-1, why) for _, why in getattr(dataset, "skipped", [])]
    if state_path is not None and state_path.exists():
        state = storage.read(state_path, what="statistics state")
        if not isinstance(state, dict) or state.get("config") != config:
            raise ValueError(
                f"{state_path} is the state of a different run (model, data set, settings "
                f"or number of processes differ) or no attnviz statistics state: delete "
                f"{parts} to start again"
            )
        acc, done = state["acc"], list(state["done"])
        skipped = [(int(i), str(why)) for i, why in state.get("skipped", [])]
    todo = [s for s in shards if s not in done]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        todo_images = sum(min(shard_size, size - s * shard_size) for s in todo)
        bar = tqdm(total=todo_images * world, desc="attnviz stats", unit="img")
    # one DataLoader for all the shards (its workers start once); its batches never cross a
    # shard's end, and it yields them in the sampler's order, which _batches repeats
    sampler = _ShardBatches(todo, shard_size, batch_size, size)
    loader = DataLoader(
        _Guarded(dataset), batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate
    )
    part: dict = {}
    pending: dict = {}
    try:
        with inference(model):
            for batch, (shard, _, last) in zip(loader, sampler.plan()):
                for i, why in batch.bad:
                    if not skip_bad:
                        raise _unreadable(why)
                    skipped.append((i, why))
                if batch.shapes:
                    raise _mixed_sizes(dataset, batch.shapes)
                y = batch.y
                if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                    raise ValueError(
                        f"labels must lie in [0, {num_classes}), got "
                        f"[{int(y.min())}, {int(y.max())}]"
                    )
                if batch.x is not None:
                    _reduce_batch(
                        model,
                        batch.x.to(device),
                        y,
                        batch.index,
                        blocks,
                        part,
                        pending,
                        num_classes,
                        bins,
                        top_k,
                    )
                if bar is not None:
                    bar.update((len(y) + len(batch.bad)) * world)
                if not last:
                    continue
                _flush(part, pending, top_k)
                acc, part = _merge(acc, part, top_k), {}
                done.append(shard)
                if state_path is not None:
                    state = {"config": config, "acc": acc, "done": done, "skipped": skipped}
                    storage.atomic_save(state, state_path)
                if on_shard is not None:
                    on_shard(shard)
    except BaseException:
        # a failed run leaves what resuming needs (the shards done) and nothing else
        if parts is not None and parts.is_dir() and not any(parts.iterdir()):
            parts.rmdir()
        raise
    finally:
        if bar is not None:
            bar.close()
    if dist is not None:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (acc, skipped))
        acc, skipped = None, []
        for part_acc, part_skipped in gathered:  # rank order: the same on every rank
            acc = _merge(acc, part_acc, top_k)
            skipped += part_skipped
    if not acc:
        if skipped:
            raise ValueError(
                f"no image could be read: {len(skipped)} skipped, the first {skipped[0][1]}"
            )
        raise ValueError("the model recorded no channel or spatial attention (blocks=?)")
    first = next(iter(acc.values()))
    counts = first["n"].clone()
    meta = {
        "attnviz": version(),
        "torch": torch.__version__,
        "processes": world,
        "dataset": {
            "kind": type(dataset).__name__,
            "size": size,
            "fingerprint": config["fingerprint"],
            "root": str(getattr(dataset, "root", "") or ""),
        },
        "settings": {k: config[k] for k in ("batch_size", "shard_size", "top_k", "bins")},
        "blocks": blocks,
        **dict(describe or {}),
    }
    meta["model_fingerprint"] = config["model"]
    skipped.sort(key=lambda s: s[0])
    meta["skipped"] = {"count": len(skipped), "files": [why for _, why in skipped]}
    stats = DatasetStats(acc, counts, names, storage_safe(meta))
    if out is not None and rank == 0:
        stats.save(out)
    if dist is not None:
        dist.barrier()
    if state_path is not None and parts is not None:  # the file is written: no state needed
        state_path.unlink(missing_ok=True)
        if dist is not None:
            dist.barrier()
        if rank == 0 and parts.is_dir() and not any(parts.iterdir()):
            parts.rmdir()
    return stats


def storage_safe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` with values ``weights_only`` loading refuses turned into their repr."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, Mapping):
            out[k] = storage_safe(v)
        elif isinstance(v, str):
            out[k] = str(v)  # plain str (torch.__version__ is a subclass weights_only refuses)
        elif v is None or isinstance(v, (bool, int, float)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(
            isinstance(i, (bool, int, float, str)) for i in v
        ):
            out[k] = [str(i) if isinstance(i, str) else i for i in v]
        else:
            out[k] = repr(v)
    return out
