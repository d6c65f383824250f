"""The folder a real user has: a generator of messy image data for the whole suite.

``make_messy(root)`` writes, from the shipped sample photos and nothing downloaded:

- ``folder/``: an image folder (one sub-folder per class, as torchvision's ``ImageFolder``
  reads) of images of mixed sizes (64 x 64, 80 x 60, 100 x 120, ...) and modes (RGB,
  grey ``L``, ``LA``, ``RGBA``, palette ``P`` with and without a transparent colour,
  1-bit, 16-bit ``I;16`` PNG, CMYK JPEG), a JPEG stored sideways with an EXIF
  orientation tag, a nested sub-folder inside a class, a class and a file with non-ASCII
  names; and the bad files: a truncated PNG, a text file named ``.png``, a zero-byte
  ``.jpg``, a macOS resource fork (``._name.png``), a non-image ``notes.txt`` and a
  ``.DS_Store``;
- ``shards/``: two WebDataset-style tar shards (image + ``.cls`` label per key) of mixed
  sizes and modes, one image member truncated;
- ``broken/broken.tar``: a file named ``.tar`` that is not a tar archive.

The returned :class:`Messy` says which files are good (with their class and what a
viewer shows: :func:`attnviz.photos.load_image` of each) and which are bad and why, so
tests can compare a command's output with a brute-force pass over the good files.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from attnviz.photos import load_sample, sample_photos

#: (width, height) of the folder's images, in turn: no two consecutive ones alike
SIZES = [(64, 64), (80, 60), (100, 120), (48, 96), (120, 90), (72, 72), (60, 80)]


@dataclass
class Messy:
    """What :func:`make_messy` wrote.

    Attributes:
        root: the folder holding ``folder``, ``shards`` and ``broken``.
        folder: the image folder (``ImageFolder`` layout).
        classes: its class folders, sorted as ``ImageFolder`` sorts them.
        good: path -> class index of every readable image of ``folder``.
        bad: path -> why it cannot be read, of every file ``ImageFolder`` lists (by its
            extension) that is not an image.
        ignored: files that are no images by name (``notes.txt``, hidden files).
        shards: the tar shards; ``shard_good`` maps ``"<shard>:<member>"`` to its class,
            ``shard_bad`` names the truncated member.
        not_a_tar: ``broken/broken.tar``.
        sideways: the JPEG with an EXIF orientation (stored 40 x 90, shown 90 x 40).
    """

    root: Path
    folder: Path
    classes: list[str]
    good: dict[Path, int] = field(default_factory=dict)
    bad: dict[Path, str] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    shard_good: dict[str, int] = field(default_factory=dict)
    shard_bad: dict[str, str] = field(default_factory=dict)
    not_a_tar: Path | None = None
    sideways: Path | None = None

    def good_in_order(self) -> list[tuple[Path, int]]:
        """The good files in ``ImageFolder``'s order (class, then sorted path)."""
        return sorted(self.good.items(), key=lambda kv: (kv[1], str(kv[0])))


def _photo(i: int, size: tuple[int, int]) -> Image.Image:
    """A crop of a sample photo (a different one and place for each ``i``) at ``size``."""
    names = sample_photos()
    photo = load_sample(names[i % len(names)], max_side=256)
    w, h = photo.size
    x, y = (i * 37) % max(1, w - 128), (i * 53) % max(1, h - 128)
    return photo.crop((x, y, x + 128, y + 128)).resize(size)


def _modes(image: Image.Image, mode: str) -> tuple[Image.Image, str, dict]:
    """``image`` in ``mode``: (image to save, suffix, save arguments)."""
    if mode == "RGB":
        return image, ".png", {}
    if mode == "L":
        return image.convert("L"), ".png", {}
    if mode == "LA":
        return image.convert("LA"), ".png", {}
    if mode == "RGBA":
        rgba = image.convert("RGBA")
        alpha = np.full(image.size[::-1], 255, np.uint8)
        alpha[: image.height // 3] = 0  # the top third transparent: white in a viewer
        rgba.putalpha(Image.fromarray(alpha))
        return rgba, ".png", {}
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), ".png", {}
    if mode == "P+transparency":
        return (
            image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
            ".png",
            {"transparency": 0},
        )
    if mode == "1":
        return image.convert("1"), ".png", {}
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), np.uint16) * 257  # 16-bit: v * 257
        return Image.fromarray(grey), ".png", {}
    if mode == "CMYK":
        return image.convert("CMYK"), ".jpg", {"quality": 95}
    if mode == "JPEG":
        return image, ".jpg", {"quality": 90}
    raise ValueError(mode)


MODES = ["RGB", "L", "RGBA", "P", "I;16", "CMYK", "JPEG", "LA", "P+transparency", "1"]


def _save(image: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def _sideways_jpeg(path: Path) -> Path:
    """A JPEG stored 40 x 90 with EXIF orientation 6 (rotate 90° clockwise to view): a
    viewer shows it 90 x 40."""
    upright = _photo(99, (90, 40))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(stored, path, exif=exif.tobytes(), quality=95)


def _encoded(image: Image.Image, suffix: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG" if suffix == ".png" else "JPEG", **kw)
    return buf.getvalue()


def _shard(path: Path, samples: list[tuple[str, bytes, int]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, data, label in samples:
            for name, blob in ((key, data), (key.split(".")[0] + ".cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def make_messy(root: Path, per_class: int = 6) -> Messy:
    """Write the messy data under ``root`` (see the module docstring)."""
    folder = root / "folder"
    classes = sorted(["cat", "dog", "café ☕"])
    messy = Messy(root, folder, classes)
    n = 0
    for k, name in enumerate(classes):
        for j in range(per_class):
            mode = MODES[n % len(MODES)]
            image, suffix, kw = _modes(_photo(n, SIZES[n % len(SIZES)]), mode)
            # a nested sub-folder in one class, a non-ASCII file name in another
            sub = "indoor/" if (name == "cat" and j >= per_class - 2) else ""
            stem = f"ünïcode-{j}" if (name == "dog" and j == 0) else f"{j:03d}-{mode.lower()}"
            stem = stem.replace(";", "").replace("+", "-")
            messy.good[_save(image, folder / name / f"{sub}{stem}{suffix}", **kw)] = k
            n += 1
    dog = classes.index("dog")
    messy.sideways = _sideways_jpeg(folder / "dog" / "sideways-exif.jpg")
    messy.good[messy.sideways] = dog
    # the bad files a real folder has
    png = _encoded(_photo(7, (80, 60)), ".png")
    truncated = folder / "cat" / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    messy.bad[truncated] = "truncated"
    text = folder / "dog" / "readme-not-an-image.png"
    text.write_text("this is text, not a PNG\n", encoding="utf-8")
    messy.bad[text] = "not an image"
    empty = folder / "café ☕" / "empty.jpg"
    empty.write_bytes(b"")
    messy.bad[empty] = "empty"
    fork = folder / "cat" / "._000-rgb.png"  # macOS's AppleDouble companion of a file
    fork.write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    notes = folder / "notes.txt"
    notes.write_text("collected 2026\n", encoding="utf-8")
    ds = folder / "dog" / ".DS_Store"
    ds.write_bytes(b"\x00\x00\x00\x01Bud1")
    messy.ignored += [fork, notes, ds]
    # tar shards: mixed sizes and modes, one truncated member
    shards = root / "shards"
    shards.mkdir()
    for s in range(2):
        samples = []
        for j in range(5):
            i = 100 + 5 * s + j
            image, suffix, kw = _modes(_photo(i, SIZES[i % len(SIZES)]), MODES[i % len(MODES)])
            key, label = f"s{s}/{j:04d}{suffix}", j % 3
            data = _encoded(image, suffix, **kw)
            if s == 1 and j == 2:
                data = data[: len(data) // 3]
                messy.shard_bad[f"shard-{s}.tar:{key}"] = "truncated"
            else:
                messy.shard_good[f"shard-{s}.tar:{key}"] = label
            samples.append((key, data, label))
        path = shards / f"shard-{s}.tar"
        _shard(path, samples)
        messy.shards.append(path)
    broken = root / "broken"
    broken.mkdir()
    messy.not_a_tar = broken / "broken.tar"
    messy.not_a_tar.write_bytes(b"not a tar archive at all" * 40)
    return messy
