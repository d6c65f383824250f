"""``attnviz export``: one explorer as one self-contained, offline HTML page."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage import unwritable

__all__ = ["EXPORTS", "VIT_MODEL", "export", "register"]


# -- export ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Export:
    """What ``attnviz export WHAT`` writes: the app's tab (None: the ViT on the sample
    photos), the shipped model, and the defaults of --images and --max-mb."""

    tab: str | None
    model: str
    images: int
    max_mb: float


#: ``attnviz export WHAT``. The channel explorer's page holds every channel of every block
#: of each image (240 frames, about 11 MB per image of the SE ResNet-10): one image and a
#: larger budget by default.
EXPORTS: dict[str, _Export] = {
    "stn": _Export("Spatial transformer", "stcnn_rts", 4, 10),
    "channels": _Export("SE channels", "resnet10_se", 1, 16),
    "nonlocal": _Export("Non-local attention", "resnet10_nonlocal", 4, 10),
    "vit": _Export(None, "vit_b_16", 1, 10),
}
#: the torchvision network of ``attnviz export vit`` (224 x 224 input)
VIT_MODEL = EXPORTS["vit"].model


def _vit_network() -> Any:
    """``attnviz export vit``'s network with random weights, in eval mode, and its
    preprocessing: a :class:`~attnviz.zoo.Pretrained` (nothing is downloaded)."""
    from ..zoo import pretrained

    return pretrained(VIT_MODEL, weights=None)


def _state_dict(path: str) -> Any:
    """The weights in ``path``, read by :func:`attnviz.storage.read` (tensors only): a bare
    state dict, an attnviz checkpoint (``"model"``) or ``{"state_dict": ...}``."""
    from collections.abc import Mapping

    from ..storage import read

    state = read(path, what="state dict")
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), Mapping):
                return state[key]
    return state


def _vit_explorer(images: int, checkpoint: str | None) -> Any:
    """A query explorer on :data:`VIT_MODEL` over the first ``images`` sample photos,
    with the weights of ``checkpoint`` (checked to fit, key by key) or random ones."""
    import torch

    from ..photos import prepare, sample_path, sample_photos
    from ..storage import load_strict
    from ..widgets import QueryExplorer

    weights = None if checkpoint is None else _state_dict(checkpoint)  # a bad file: no model
    pre = _vit_network()
    if weights is not None:
        load_strict(pre.model, weights, source=f"--checkpoint {checkpoint}", model_name=VIT_MODEL)
    x = torch.cat([prepare(sample_path(n), pre.transforms) for n in sample_photos()[:images]])
    t = pre.transforms
    return QueryExplorer(pre.model, x, mean=t.mean, std=t.std)


def _export_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments of ``attnviz export``, found before any work."""
    from ..photos import sample_photos

    if args.what not in EXPORTS:
        return f"cannot export {args.what!r}: WHAT is one of {', '.join(EXPORTS)}"
    out = Path(args.out)
    if out.suffix.lower() != ".html":
        return f"--out {out}: the page is HTML; give a file name ending in .html"
    if out.is_dir():
        return f"--out {out} is a folder; give a file name ending in .html"
    why = unwritable(out)
    if why:
        return f"--out {out}: {why}"
    if args.images is not None and args.images < 1:
        return f"--images must be at least 1, got {args.images}"
    if args.max_mb is not None and not 0 < args.max_mb < float("inf"):
        return f"--max-mb must be a positive number of megabytes, got {args.max_mb}"
    vit = args.what == "vit"
    if args.checkpoint is not None and not vit:
        return f"--checkpoint is for vit; {args.what} shows a shipped model: leave it out"
    if args.folder is not None and vit:
        return "--folder names the shipped models, which vit does not use: leave it out"
    photos = len(sample_photos())
    if vit and (args.images or 1) > photos:
        return (
            f"--images {args.images}: vit shows the {photos} sample photos; give {photos} or fewer"
        )
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        return (
            f"--checkpoint {args.checkpoint}: no such file; give the path of a state dict of "
            f"{VIT_MODEL} (torch.save(model.state_dict(), FILE)), or leave --checkpoint out "
            "for random weights"
        )
    return None


def export(args: argparse.Namespace) -> int:
    """One explorer as one self-contained HTML page (works offline, loads nothing)."""
    from .. import shipped
    from ..app import make_explorer

    start = time.perf_counter()
    error = _export_error(args)
    if error:
        print(f"attnviz export: {error}", file=sys.stderr)
        return 2
    what = EXPORTS[args.what]
    n = what.images if args.images is None else args.images
    max_bytes = round((what.max_mb if args.max_mb is None else args.max_mb) * 10**6)
    try:
        if what.tab is None:
            if args.checkpoint is None:
                print(
                    f"{VIT_MODEL} with RANDOM WEIGHTS (no --checkpoint): its attention shows "
                    "the architecture, not what a trained network looks at",
                    flush=True,
                )
            explorer = _vit_explorer(n, args.checkpoint)
            weights = Path(args.checkpoint).name if args.checkpoint else "random weights"
            title = f"attnviz: {VIT_MODEL} ({weights}) on the sample photos"
        else:
            shipped.manifest(args.folder)  # no models: the message says how to make them
            explorer, _ = make_explorer(what.tab, folder=args.folder, images=n)
            title = f"attnviz: {shipped.entry(what.model, args.folder)['title']} ({what.tab})"
    except (ValueError, KeyError, OSError, ImportError) as e:  # a bad file, no models
        print(f"attnviz export: {e}", file=sys.stderr)
        return 2
    try:
        shown = min(n, explorer.controls["image"].max + 1)
        if shown < n:
            print(f"only {shown} images to show: the page has {shown}", flush=True)
        # the replay's explorer holds every digit its snapshots were saved for: the first n
        first = (
            {"values": {"image": list(range(shown))}} if what.tab == "Spatial transformer" else {}
        )
        page = explorer.export_html(args.out, max_bytes=max_bytes, title=title, **first)
    except ValueError as e:  # beyond the budget
        print(f"attnviz export: {e} (here: fewer --images or a larger --max-mb)", file=sys.stderr)
        return 2
    except OSError as e:  # a folder that cannot be written
        print(f"attnviz export: cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    finally:
        explorer.close()
    seconds = time.perf_counter() - start
    print(f"wrote {page.path} ({page.nbytes / 2**20:.2f} MiB, {seconds:.1f} s)")
    return 0


def register(sub: Any) -> None:
    """Add the command's parser to ``attnviz``'s subparsers."""
    x = sub.add_parser("export", help="one explorer as one self-contained, offline HTML page")
    x.add_argument(
        "what",
        metavar="WHAT",
        help="stn (the RTS ST-CNN's training replay), channels (SE ResNet-10), nonlocal "
        f"(non-local ResNet-10) or vit (torchvision's {VIT_MODEL} on the sample photos)",
    )
    x.add_argument("--out", required=True, metavar="FILE.html", help="the page to write")
    x.add_argument(
        "--images",
        type=int,
        metavar="N",
        help="images in the page (default 4; channels, vit: 1); more images, a larger page",
    )
    x.add_argument(
        "--max-mb",
        type=float,
        metavar="MB",
        help="refuse a page over this many megabytes of pictures and rows (default 10; "
        "channels: 16)",
    )
    x.add_argument(
        "--folder", metavar="DIR", help="folder of shipped models (default: the ones attnviz ships)"
    )
    x.add_argument(
        "--checkpoint",
        metavar="FILE",
        help=f"vit: a state dict of {VIT_MODEL} (torch.save(model.state_dict(), FILE)); "
        "default random weights",
    )
    x.set_defaults(run=export)
