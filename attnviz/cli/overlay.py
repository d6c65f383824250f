"""``attnviz overlay``: Grad-CAM and attention maps of a photo, as a PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..storage import unwritable
from ._common import _int_at_least

__all__ = ["PANEL_SIDES", "overlay", "register"]


# -- overlay --------------------------------------------------------------------------------
def overlay(args: argparse.Namespace) -> int:
    """The photo, Grad-CAM of the target class and a block's attention, side by side."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .. import render
    from ..explain import explain
    from ..photos import ImageLoadError, ImageTooLargeError, load_image
    from ..zoo import pretrained

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
        why = unwritable(path) if path is not None else None
        if why:  # every command refuses a missing folder rather than create it
            return f"{path}: {why}", None
    return out, npz


PANEL_SIDES = (32, 4096)


def _panel_side(text: str) -> int:
    """argparse type of ``overlay --size``: an int within :data:`PANEL_SIDES`."""
    value = _int_at_least(text, PANEL_SIDES[0])
    if value > PANEL_SIDES[1]:
        raise argparse.ArgumentTypeError(f"must be at most {PANEL_SIDES[1]}, got {value}")
    return value


def register(sub: Any) -> None:
    """Add the command's parser to ``attnviz``'s subparsers."""
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
