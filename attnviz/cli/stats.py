"""``attnviz stats`` and ``attnviz plot``: attention statistics over a data set, pictures."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._common import _count, _message, _positive

__all__ = ["plot", "register", "stats"]


def _stats_model(name: str, weights: str, image_size: int | None):
    """(model, transform, description, what the transform does) for `attnviz stats --model`.

    Every image is resized (shorter side) and centre-cropped to the network's input, as its
    own preprocessing does: the shipped models' input is their recipe's (64 x 64 photos,
    ...), a torchvision or timm network's that of its weights' transforms; ``image_size``
    overrides the side (the network's normalisation is kept).
    """
    from .. import recipes, shipped
    from ..stats import input_transform

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
    from ..zoo import pretrained

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
    from ..stats import _check_out, dataset_stats, open_dataset

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

    from .. import render
    from ..analysis import plot_class_excitation
    from ..stats import DatasetStats, open_dataset

    try:
        result = DatasetStats.load(args.stats)
        if args.gallery:
            from torchvision.transforms import ToTensor

            from ..widgets.gallery import ChannelGallery

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


def register(sub: Any) -> None:
    """Add the command's parser to ``attnviz``'s subparsers."""
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
