"""The ``attnviz`` command: the notebook gallery and the core picture without Jupyter.

attnviz demo [--full] [--out build/demo]       run every notebook, write an HTML gallery
attnviz overlay PHOTO --model NAME -o out.png  Grad-CAM and attention maps of a photo
attnviz app [--port 8866]                      every explorer on the shipped models (Voila)
attnviz export WHAT --out F.html [--images N]  stn, channels, nonlocal or vit: one offline page
attnviz models [--check | --regenerate]        the shipped trained models and their manifest
attnviz stats --model M --data DIR --out F.pt  attention statistics over a data set (torchrun)
attnviz plot F.pt [-o classwise.png]           the class-wise figure or a channel's top images
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._resources import notebooks_dir

__all__ = ["main"]


def _need_notebook_extra() -> None:
    """ImportError naming the extra when the Jupyter pieces ``attnviz demo`` runs on are missing."""
    import importlib.util

    missing = [
        m
        for m in ("nbformat", "nbclient", "nbconvert", "ipykernel")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ImportError(
            f"running notebooks needs {', '.join(missing)}: pip install 'attnviz[notebooks]'"
        )


# -- demo -----------------------------------------------------------------------------------
def _html(nb, path: Path) -> None:
    from nbconvert import HTMLExporter

    from .storage import atomic_write_text

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    atomic_write_text(body, path)


def _index(results: list[dict], out: Path, quick: bool) -> Path:
    """index.html: one row per notebook, its status, time and error (no terminal codes)."""
    from .nbrun import strip_ansi

    def link(r: dict) -> str:
        name = html.escape(r["name"])
        return f"<a href='{html.escape(r['html'])}'>{name}</a>" if r["html"] else name

    def shared(r: dict) -> str:
        return " ".join(
            f"<a href='{html.escape(p)}'>{html.escape(p)}</a>" for p in r.get("exports", [])
        )

    rows = "\n".join(
        f"<tr><td>{link(r)}</td>"
        f"<td class='{'ok' if r['ok'] else 'bad'}'>{html.escape(r['status'])}</td>"
        f"<td>{r['seconds']:.0f} s</td>"
        f"<td>{shared(r)}</td>"
        f"<td><pre>{html.escape(strip_ansi(r['error']))}</pre></td></tr>"
        for r in results
    )
    mode, when = "quick" if quick else "full", time.strftime("%Y-%m-%d %H:%M")
    failed = sum(not r["ok"] for r in results)
    style = (
        "body{font-family:sans-serif;margin:2em} td{padding:.3em 1em;vertical-align:top} "
        ".ok{color:#070} .bad{color:#b00;font-weight:bold} "
        "pre{max-width:60em;white-space:pre-wrap}"
    )
    page = (
        f"<!doctype html><meta charset='utf-8'><title>attnviz gallery</title><style>{style}</style>"
        f"<h1>attnviz notebooks</h1><p>Mode: {mode}; run {when}; {len(results)} notebooks, "
        f"{failed} not ok.</p><table><tr><th>notebook</th>"
        f"<th>status</th><th>time</th><th>interactive pages</th><th>error</th></tr>{rows}</table>"
    )
    from .storage import atomic_write_text

    return atomic_write_text(page, out / "index.html")


def _run_one(path: Path, out: Path, args: argparse.Namespace) -> dict:
    """Execute one notebook and render it; every outcome becomes a result, none raises."""
    import nbformat

    from .nbrun import NotebookError, execute_notebook

    start, error, status = time.perf_counter(), "", "ok"
    executed = out / path.name
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.html")}
    nb = None
    try:
        # quick: the notebooks open on the shipped models (TRAIN = False), notebook 04 without
        # downloads; full: every model trained here, the full recipes
        params = {"QUICK": not args.full, "TRAIN": bool(args.full)}
        nb = execute_notebook(path, params, timeout=args.timeout, output=executed, cwd=out)
    except NotebookError as e:
        status = e.status
        where = f"cell {e.cell}: " if e.cell >= 0 else ""
        error = f"{where}{e.ename}: {e.evalue}" + (f"\n{e.traceback}" if e.traceback else "")
    except Exception as e:  # anything else (e.g. no kernel to start): reported, not fatal
        status, error = "failed", f"{type(e).__name__}: {e}"
    page = ""
    try:
        if nb is None and executed.exists():
            nb = nbformat.read(executed, as_version=4)
        if nb is not None:
            page = path.stem + ".html"
            _html(nb, out / page)
    except Exception as e:  # the page could not be rendered: say so, keep going
        error += f"\n(no HTML page: {type(e).__name__}: {e})"
        page = ""
    # the offline pages the notebook exported (explorer.export_html) into the gallery
    exports = sorted(
        p.name
        for p in out.glob("*.html")
        if p.name not in (page, "index.html") and before.get(p.name) != p.stat().st_mtime_ns
    )
    return {
        "name": path.stem,
        "html": page,
        "exports": exports,
        "ok": status == "ok",
        "status": status,
        "seconds": time.perf_counter() - start,
        "error": error,
    }


def demo(args: argparse.Namespace) -> int:
    """Execute every notebook headless, keep going past failures, always write the gallery."""
    try:
        from .nbrun import strip_ansi

        _need_notebook_extra()
    except ImportError as e:
        print(f"attnviz demo: {e}", file=sys.stderr)
        return 2

    src = Path(args.notebooks) if args.notebooks else notebooks_dir()
    paths = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        chosen = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
        unknown = [o for o in args.only if not any(p.name.startswith(o) for p in paths)]
        if unknown:
            print(
                f"--only {unknown}: no such notebook in {src}; choose from "
                f"{[p.stem for p in paths]}",
                file=sys.stderr,
            )
            return 2
        paths = chosen
    if not paths:
        print(f"no notebooks in {src}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.resolve() in {p.resolve().parent for p in paths}:
        print(
            f"--out {out} holds the source notebooks: the executed copies would replace "
            "them; choose another folder (default build/demo)",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    try:
        for i, path in enumerate(paths, 1):
            mode = "full" if args.full else "quick"
            print(f"[{i}/{len(paths)}] {path.name} ({mode}) ...", flush=True)
            r = _run_one(path, out, args)
            results.append(r)
            print(
                f"    {r['status']} in {r['seconds']:.0f} s"
                + (f" -> {out / r['html']}" if r["html"] else ""),
                flush=True,
            )
            if r["error"]:
                print(strip_ansi(r["error"]), file=sys.stderr)
    finally:  # even on Ctrl-C: the gallery of what ran
        index = _index(results, out, quick=not args.full)
    failed = [r["name"] for r in results if not r["ok"]]
    print(f"gallery: {index.resolve()}" + (f"  ({len(failed)} not ok: {failed})" if failed else ""))
    return 1 if failed else 0


# -- overlay --------------------------------------------------------------------------------
def overlay(args: argparse.Namespace) -> int:
    """The photo, Grad-CAM of the target class and a block's attention, side by side."""
    import numpy as np
    from PIL import Image, ImageDraw

    from . import render
    from .explain import explain
    from .photos import ImageLoadError, ImageTooLargeError, load_image
    from .zoo import pretrained

    output, npz = _outputs(args)
    if isinstance(output, str):
        print(f"attnviz overlay: {output}", file=sys.stderr)
        return 2
    try:
        photo = load_image(args.image)
    except (OSError, ImageLoadError, ImageTooLargeError) as e:
        print(f"attnviz overlay: {e}", file=sys.stderr)
        return 2
    weights = None if args.weights.lower() == "none" else args.weights
    try:
        pre = pretrained(args.model, weights=weights)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as e:
        print(f"attnviz overlay: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # no network and no cached file, most often
        print(
            f"could not load {args.model} with weights {args.weights!r}: {e}\n"
            "Offline? torchvision looks in $TORCH_HOME/hub/checkpoints, timm in the Hugging "
            "Face cache; pass a weights file, or --weights none for random weights.",
            file=sys.stderr,
        )
        return 2
    if args.target is not None and not 0 <= args.target < len(pre.class_names):
        print(
            f"attnviz overlay: --target must be a class index in [0, {len(pre.class_names)}), "
            f"got {args.target}",
            file=sys.stderr,
        )
        return 2
    ex = explain(pre, photo, display_side=args.size)
    if not ex.blocks:
        print(
            f"{args.model} records no attention with a picture: {list(ex.recording)}",
            file=sys.stderr,
        )
        return 2
    block = args.block or ex.default_block
    if block not in ex.blocks:
        print(f"no attention block {block!r} with a picture; blocks: {ex.blocks}", file=sys.stderr)
        return 2
    heads = ex.heads(block)
    if args.head is not None and not 0 <= args.head < heads:
        print(
            f"attnviz overlay: --head must be in [0, {heads}) for {block}, got {args.head}",
            file=sys.stderr,
        )
        return 2
    label, attention = ex.picture(block, args.head)
    panels = [ex.view, attention]
    if ex.probs is not None:
        target = int(ex.probs.argmax()) if args.target is None else args.target
        cam = ex.gradcam(target)
        panels.insert(1, render.overlay(ex.view, cam))
        said = f"{pre.class_names[target]} (P={ex.probs[target]:.2f})  |  Grad-CAM"
    else:
        cam, target, said = None, None, "no classifier (a backbone): no Grad-CAM"
    title = f"{said}  |  {label} {block}" + ("" if pre.pretrained else "  |  RANDOM WEIGHTS")
    strip = Image.fromarray(render.montage(panels, ncols=len(panels), pad=4))
    canvas = Image.new("RGB", (strip.width, strip.height + 18), "white")
    canvas.paste(strip, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="black")
    canvas.save(output)
    print(f"wrote {output}")
    if npz:
        arrays: dict[str, Any] = {}
        if ex.probs is not None and cam is not None:
            arrays.update(gradcam=cam.numpy(), probs=ex.probs.numpy(), target=np.array(target))
        for n, r in ex.recording.items():
            arrays[f"{r.kind}/{n}"] = r.data[0].float().numpy()
        for n, (_, v) in ex.views.items():
            arrays[f"map/{n}"] = v[0].numpy()
        np.savez_compressed(npz, **arrays)
        print(f"wrote {npz}")
    return 0


def _outputs(args: argparse.Namespace):
    """The PNG and .npz paths, checked before any work: (png, npz) or an error message."""
    from PIL import Image

    out = Path(args.output)
    if out.suffix.lower() not in Image.registered_extensions():
        return f"-o {out}: not an image file name (e.g. out.png)", None
    npz = None
    if args.npz:
        npz = Path(args.npz)
        if npz.suffix != ".npz":  # numpy would append it: say the name it writes
            npz = npz.with_name(npz.name + ".npz")
        if npz.resolve() == out.resolve():
            return f"--npz {npz} is the picture's own path", None
    for path in (out, npz):
        error = _unwritable(path) if path is not None else None
        if error:
            return error, None
    return out, npz


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written (its folder is missing or read-only), or None.
    Every command refuses a missing folder rather than create it."""
    folder = path.resolve().parent
    if not folder.is_dir():
        return f"{path}: no folder {folder} to write it in"
    if not os.access(folder, os.W_OK):
        return f"{path}: the folder {folder} is not writable"
    return None


# -- stats, plot ------------------------------------------------------------------------------
def _message(e: BaseException) -> str:
    """An exception's message (a KeyError's without the quotes its str() adds)."""
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e)


#: the longest and shortest panel side `attnviz overlay --size` draws (3 panels of 4096
#: pixels make a 12-megapixel PNG)
PANEL_SIDES = (32, 4096)


def _panel_side(text: str) -> int:
    """argparse type of ``overlay --size``: an int within :data:`PANEL_SIDES`."""
    value = _int_at_least(text, PANEL_SIDES[0])
    if value > PANEL_SIDES[1]:
        raise argparse.ArgumentTypeError(f"must be at most {PANEL_SIDES[1]}, got {value}")
    return value


def _positive(text: str) -> int:
    """argparse type: an int >= 1 (the message names the value)."""
    return _int_at_least(text, 1)


def _count(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _stats_model(name: str, weights: str, image_size: int | None):
    """(model, transform, description, what the transform does) for `attnviz stats --model`.

    Every image is resized (shorter side) and centre-cropped to the network's input, as its
    own preprocessing does: the shipped models' input is their recipe's (64 x 64 photos,
    ...), a torchvision or timm network's that of its weights' transforms; ``image_size``
    overrides the side (the network's normalisation is kept).
    """
    from . import recipes, shipped
    from .stats import input_transform

    if name.startswith("shipped:"):
        short = name.split(":", 1)[1]
        model = shipped.load(short)
        channels, side, _ = recipes.get(short, experiments=False).input_shape
        source = f"the input of {name}"
        if image_size:
            side, source = image_size, "--image-size"
        transform = input_transform(side, channels=channels)
        said = f"resized and centre-cropped to {side} x {side} ({source})"
        return model, transform, {"model": name, "weights": "shipped"}, said
    from .zoo import pretrained

    pre = pretrained(name, weights=None if weights.lower() == "none" else weights)
    transform = pre.transforms
    crop, resize = getattr(transform, "crop_size", None), getattr(transform, "resize_size", None)
    said = (
        f"resized (shorter side {resize[0]}) and centre-cropped to {crop[0]} x {crop[0]}, as "
        f"{name}'s weights' transforms do"
        if crop and resize
        else f"preprocessed by {name}'s transforms"
    )
    if image_size:
        mean = getattr(transform, "mean", (0.0, 0.0, 0.0))
        std = getattr(transform, "std", (1.0, 1.0, 1.0))
        transform = input_transform(image_size, mean=mean, std=std)
        said = f"resized and centre-cropped to {image_size} x {image_size} (--image-size)"
    return pre.model, transform, {"model": name, "weights": str(pre.weights)}, said


def stats(args: argparse.Namespace) -> int:
    """Attention statistics over a data set (resumable; the same under torchrun)."""
    from .stats import _check_out, dataset_stats, open_dataset

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        _check_out(args.out)
        model, transform, describe, said = _stats_model(args.model, args.weights, args.image_size)
        dataset = open_dataset(args.data, transform, skip_bad=args.skip_bad)
    except (ValueError, TypeError, ImportError, OSError, KeyError) as e:
        print(f"attnviz stats: {_message(e)}", file=sys.stderr)
        return 2
    if rank0:
        print(f"attnviz stats: {len(dataset)} images, {said}", flush=True)
    if args.device:
        device = args.device
        if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
            device = f"cuda:{os.environ['LOCAL_RANK']}"
        model = model.to(device)
    describe["transform"] = repr(transform)
    try:
        result = dataset_stats(
            model,
            dataset,
            out=args.out,
            blocks=args.blocks,
            batch_size=args.batch_size,
            num_workers=args.workers,
            shard_size=args.shard_size,
            top_k=args.top_k,
            bins=args.bins,
            progress=not args.no_progress,
            describe=describe,
            skip_bad=args.skip_bad,
        )
    except (ValueError, OSError) as e:  # a bad file (named), mixed sizes, labels, no attention
        print(f"attnviz stats: {e}", file=sys.stderr)
        return 2
    if rank0:
        print(result.summary())
        print(f"wrote {args.out}")
    return 0


def plot(args: argparse.Namespace) -> int:
    """The class-wise excitation figure, or a channel's top-k gallery, from a stats file."""
    import numpy as np

    from . import render
    from .analysis import plot_class_excitation
    from .stats import DatasetStats, open_dataset

    try:
        result = DatasetStats.load(args.stats)
        if args.gallery:
            from torchvision.transforms import ToTensor

            from .widgets.gallery import ChannelGallery

            if not args.data:
                print("attnviz plot: --gallery needs --data (the images)", file=sys.stderr)
                return 2
            block, channel = args.gallery[0], int(args.gallery[1])
            gallery = ChannelGallery(result, open_dataset(args.data, ToTensor()), k=args.k)
            gallery.block, gallery.channel = block, channel
            pictures = gallery.pictures()
            import io

            from PIL import Image, ImageDraw

            now = gallery.current()
            rows = []
            for key in ("top", "bottom"):
                strip = np.asarray(Image.open(io.BytesIO(pictures[key])).convert("RGB"))
                words = ", ".join(f"{w:.3f}" for w in now[f"{key}_weights"])
                label = f"{'highest' if key == 'top' else 'lowest'} weights: {words}"
                rows.append((label, strip))
            width = max(420, *(s.shape[1] for _, s in rows))
            height = sum(16 + s.shape[0] + 6 for _, s in rows) + 18
            canvas = Image.new("RGB", (width, height), "white")
            draw = ImageDraw.Draw(canvas)
            draw.text((4, 3), f"{block}, channel {channel}", fill="black")
            y = 18
            for label, strip in rows:
                draw.text((4, y + 2), label, fill="black")
                canvas.paste(Image.fromarray(strip), (0, y + 16))
                y += 16 + strip.shape[0] + 6
            canvas.save(args.output)
        else:
            figure = plot_class_excitation(
                result.channel_stats(), blocks=args.blocks, channels=args.channels
            )
            render.figure_to_image(figure).save(args.output)
    except (OSError, ValueError, KeyError, IndexError) as e:
        print(f"attnviz plot: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


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
    from .zoo import pretrained

    return pretrained(VIT_MODEL, weights=None)


def _state_dict(path: str) -> Any:
    """The weights in ``path``, read by :func:`attnviz.storage.read` (tensors only): a bare
    state dict, an attnviz checkpoint (``"model"``) or ``{"state_dict": ...}``."""
    from collections.abc import Mapping

    from .storage import read

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

    from .photos import prepare, sample_path, sample_photos
    from .storage import load_strict
    from .widgets import QueryExplorer

    weights = None if checkpoint is None else _state_dict(checkpoint)  # a bad file: no model
    pre = _vit_network()
    if weights is not None:
        load_strict(pre.model, weights, source=f"--checkpoint {checkpoint}", model_name=VIT_MODEL)
    x = torch.cat([prepare(sample_path(n), pre.transforms) for n in sample_photos()[:images]])
    t = pre.transforms
    return QueryExplorer(pre.model, x, mean=t.mean, std=t.std)


def _export_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments of ``attnviz export``, found before any work."""
    from .photos import sample_photos

    if args.what not in EXPORTS:
        return f"cannot export {args.what!r}: WHAT is one of {', '.join(EXPORTS)}"
    out = Path(args.out)
    if out.suffix.lower() != ".html":
        return f"--out {out}: the page is HTML; give a file name ending in .html"
    if out.is_dir():
        return f"--out {out} is a folder; give a file name ending in .html"
    unwritable = _unwritable(out)
    if unwritable:
        return f"--out {unwritable}"
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
    from . import shipped
    from .app import make_explorer

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


# -- app, models ----------------------------------------------------------------------------
def app(args: argparse.Namespace) -> int:
    """Serve every explorer on the shipped models with Voila (``attnviz.app.serve``) until
    stopped. A refused setting (port, address, token, models folder, a port in use) or a
    missing Voila is reported as ``attnviz app: <why>`` with exit status 2, before Voila
    starts."""
    from .app import serve

    try:
        return serve(
            port=args.port,
            ip=args.ip,
            allow_remote=args.allow_remote,
            token=args.token,
            open_browser=args.browser,
            photo_weights=None if args.no_download else "DEFAULT",
            folder=args.models,
        )
    except (ImportError, OSError, ValueError) as e:
        print(f"attnviz app: {e}", file=sys.stderr)
        return 2


def models(args: argparse.Namespace) -> int:
    """List, check or regenerate the shipped models."""
    from . import shipped

    try:
        if args.regenerate:
            shipped.regenerate(
                args.only, out=args.out, device=args.device, log=lambda s: print(s, flush=True)
            )
            return 0
        folder = args.out
        if args.check:
            bad = 0
            for name in args.only or shipped.names():
                v = shipped.verify(name, folder)
                same = v.accuracy_matches and _close(v.measured["scores"], v.manifest["scores"])
                bad += not same
                print(
                    f"{name}: sha256 ok, test accuracy {v.measured['test_accuracy']:.2%} "
                    f"(manifest {v.manifest['test_accuracy']:.2%}), scores "
                    f"{'match' if same else 'DIFFER'}",
                    flush=True,
                )
            return 1 if bad else 0
        print(shipped.summary(args.only, folder))
        return 0
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"attnviz models: {e}", file=sys.stderr)
        return 2


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    """Scores equal up to ``tol`` (float rounding between machines), keys and nesting equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run every notebook headless and write an HTML gallery")
    d.add_argument(
        "--full",
        action="store_true",
        help="train every model here with the full recipes (TRAIN = True, QUICK = False; "
        "default: QUICK = True, the notebooks open on the shipped models)",
    )
    d.add_argument("--out", default="build/demo", help="gallery folder")
    d.add_argument(
        "--notebooks", help="folder of numbered notebooks (default: the ones attnviz ships)"
    )
    d.add_argument(
        "--only",
        nargs="+",
        metavar="NOTEBOOK",
        help="run only these notebooks (a number such as 02, or a name)",
    )
    d.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    d.set_defaults(run=demo)
    o = sub.add_parser("overlay", help="Grad-CAM and attention maps of a photo, as a PNG")
    o.add_argument("image", help="a photo (any format Pillow reads)")
    o.add_argument(
        "--model",
        default="mobilenet_v3_large",
        help="a torchvision network (an SE network, vit_b_16, ...), timm/<name> (e.g. "
        "timm/botnet26t_256, timm/deit_small_patch16_224) or official-cbam",
    )
    o.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT, a torchvision weights name, a weights file (timm, official-cbam), "
        "or 'none' for random",
    )
    o.add_argument("--block", help="attention module to draw (default: the last with a picture)")
    o.add_argument("--head", type=int, help="one attention head (default: the mean over heads)")
    o.add_argument("--target", type=int, help="class index to explain (default: predicted)")
    o.add_argument(
        "--size",
        type=_panel_side,
        default=384,
        help=f"longer side of each panel in pixels ({PANEL_SIDES[0]} to {PANEL_SIDES[1]})",
    )
    o.add_argument("-o", "--output", default="overlay.png", help="PNG to write")
    o.add_argument("--npz", help="also export the captured weights and maps to this .npz")
    o.set_defaults(run=overlay)
    s = sub.add_parser("stats", help="attention statistics over a data set (torchrun-ready)")
    s.add_argument(
        "--model",
        required=True,
        help="shipped:<name> (attnviz's trained models), a torchvision network, "
        "timm/<name> or official-cbam",
    )
    s.add_argument("--weights", default="DEFAULT", help="as for overlay (torchvision/timm)")
    s.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="an image folder (one sub-folder per class) or .tar shards",
    )
    s.add_argument("--out", required=True, help="the statistics file (resumable)")
    s.add_argument("--blocks", nargs="+", help="glob patterns of blocks (default all)")
    s.add_argument("--batch-size", type=_positive, default=64)
    s.add_argument("--workers", type=_count, default=0, help="DataLoader worker processes")
    s.add_argument("--shard-size", type=_positive, default=1024, help="images per resumable shard")
    s.add_argument("--top-k", type=_positive, default=16, help="images kept per channel and side")
    s.add_argument("--bins", type=_positive, default=50, help="histogram bins over [0, 1]")
    s.add_argument(
        "--image-size",
        type=_positive,
        help="resize (shorter side) and centre-crop every image to this square side "
        "(default: the model's input size, from the shipped recipe or the weights' transforms)",
    )
    s.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out files that cannot be read (corrupt, truncated, not an image) and list "
        "them in the result, instead of stopping at the first (named)",
    )
    s.add_argument("--device", help="cuda, cuda:1, cpu (torchrun: cuda:$LOCAL_RANK)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=stats)
    p = sub.add_parser("plot", help="pictures from a statistics file")
    p.add_argument("stats", help="a file written by attnviz stats")
    p.add_argument("-o", "--output", default="classwise.png", help="PNG to write")
    p.add_argument("--blocks", nargs="+", help="blocks of the class-wise figure (default all)")
    p.add_argument("--channels", type=int, help="the first N channels (default all)")
    p.add_argument(
        "--gallery",
        nargs=2,
        metavar=("BLOCK", "CHANNEL"),
        help="the top and bottom images of one channel instead",
    )
    p.add_argument("--data", nargs="+", help="the data set the statistics came from (gallery)")
    p.add_argument("-k", type=int, default=8, help="images per gallery row")
    p.set_defaults(run=plot)
    a = sub.add_parser("app", help="every explorer on the shipped models, served by Voila")
    a.add_argument(
        "--port", default="8866", help="port to listen on, 1 to 65535 (default 8866); never another"
    )
    a.add_argument(
        "--ip",
        default="127.0.0.1",
        help="address to listen on: a loopback one (default 127.0.0.1: this machine only; "
        "::1, localhost) unless --allow-remote",
    )
    a.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow an --ip other machines can reach (e.g. 0.0.0.0); the app then requires a "
        "token (printed in its URL) and answers any Host header",
    )
    a.add_argument(
        "--token", help="require this token (default: none; a new one with --allow-remote)"
    )
    a.add_argument("--browser", action="store_true", help="open a browser tab")
    a.add_argument(
        "--no-download", action="store_true", help="photo tab with random weights: download nothing"
    )
    a.add_argument("--models", help="folder of shipped models (default: the ones attnviz ships)")
    a.set_defaults(run=app)
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
    m = sub.add_parser("models", help="list, check or regenerate the shipped trained models")
    m.add_argument(
        "--check",
        action="store_true",
        help="load each (checksum, weights_only) and re-measure accuracy and scores",
    )
    m.add_argument(
        "--regenerate",
        action="store_true",
        help="train them from scratch by their recipes and rewrite the manifest",
    )
    m.add_argument("--only", nargs="+", metavar="NAME", help="only these models")
    m.add_argument("--out", help="folder of the models (default: the ones attnviz ships)")
    m.add_argument("--device", help="training device for --regenerate (default: CUDA if any)")
    m.set_defaults(run=models)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
