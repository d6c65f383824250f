"""Render the README's pictures from the trained models attnviz ships (attnviz.shipped).

    python scripts/readme_pictures.py assets/readme [stn|resnets|families|truth]

Anyone can regenerate the pictures and check them against the committed ones: the models
are the shipped files (checksums in assets/models/manifest.json), the data is generated
from data that ships with the dependencies, so the same torch gives the same pictures.

``families`` needs no checkpoint: each family's suggested pretrained network, with its
trained weights where this machine has them cached, random weights otherwise (every row
of the picture says which).

Every picture is drawn by attnviz itself: the widgets' own panels, the render module
and the class-wise plot, on test images the models never saw.
"""

import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import attnviz
from attnviz import render, shipped
from attnviz.analysis import channel_stats, plot_class_excitation
from attnviz.cam import gradcam, softmax_scores
from attnviz.data import digits_on_photos, distorted_mnist
from attnviz.widgets import ChannelExplorer

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)


def png(data: bytes):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


parts = sys.argv[2:] or ["stn", "resnets", "truth"]
if "stn" in parts:
    # 1. spatial transformers: sampled region and crop, RTS and cluttered
    for kind, model_name, name in [
        ("RTS", "stcnn_rts", "stn"),
        ("cluttered", "stcnn_clutter", "stn_clutter"),
    ]:
        data = distorted_mnist(kind, "test", seed=0)
        model = shipped.load(model_name)
        with torch.no_grad(), attnviz.capture(model) as rec:
            model(data.images[:8])
        render.stn_grid(
            data.images[:8],
            rec["stn"].theta,
            rec["stn"].output,
            boxes=data.boxes[:8],
            scale=3 if kind == "RTS" else 2,
            ncols=4,
        ).save(out / f"{name}.png")
if "families" in parts:
    # one row per attention family on a shipped photo: trained weights where this machine
    # has them cached (each row says which), random weights otherwise
    from attnviz.explain import comparison_figure, explain
    from attnviz.photos import load_sample
    from attnviz.zoo import FAMILIES, load_or_random

    photo = load_sample("chelsea")
    rows = []
    for family, fam in FAMILIES.items():
        torch.manual_seed(0)
        pre, why = load_or_random(fam.models[0], "DEFAULT")
        print(f"{family}: {fam.models[0]}", "trained" if pre.pretrained else f"random ({why})")
        rows.append((family, explain(pre, photo, display_side=160)))
    comparison_figure(rows, side=160).save(out / "families.png")
if "truth" in parts:
    # notebook 06's rows: every method's map of the shipped ViT with registers on six test
    # images (blocks and the best head chosen on training images, as the notebook does)
    from attnviz import attribution

    test = shipped.test_data("vit_small_reg")
    vit = shipped.load("vit_small_reg")
    calibration = digits_on_photos("train", n=256, seed=0)
    choices = attribution.calibrate(vit, calibration.images, calibration.masks)
    found = attribution.explain_maps(
        vit,
        test.images[:6],
        test.labels[:6],
        choices=choices,
        methods=[m for m in attribution.methods_for(vit, test.images) if m != "attention_head"],
    )
    rows = [test.masks[:6].float(), *found.values()]
    labels = ["digit mask (truth)", *found]
    render.overlay_grid(test.images[:6], rows, row_labels=labels, scale=2).save(out / "truth.png")
if "resnets" not in parts:
    print("wrote", sorted(p.name for p in out.iterdir()))
    sys.exit(0)

# 2. the channel explorer's panels for one image
test = digits_on_photos("test", n=2000, seed=0)
nets = {
    name: shipped.load(f"resnet10_{key}")
    for name, key in [("plain", "plain"), ("+SE", "se"), ("+CBAM", "cbam")]
}
explorer = ChannelExplorer(nets["+SE"], test.images[:8], labels=test.labels[:8].tolist())
explorer.block = "layer3.0.attention"
explorer.channel = int(explorer.current()["weights"].argmax())
bars, before, after = (png(p) for p in explorer.pictures().values())
w = bars.shape[1] + before.shape[1] + after.shape[1] + 8
canvas = np.full((max(bars.shape[0], before.shape[0]), w, 3), 255, np.uint8)
x = 0
for panel in (bars, before, after):
    canvas[: panel.shape[0], x : x + panel.shape[1]] = panel
    x += panel.shape[1] + 4
Image.fromarray(canvas).save(out / "se_explorer.png")

# 3. SE class-wise excitation
stats = channel_stats(
    nets["+SE"], test.images, test.labels, class_names=[str(c) for c in range(10)]
)
render.figure_to_image(plot_class_excitation(stats), dpi=70).save(out / "se_classwise.png")

# 4. the CBAM paper's figure: Grad-CAM of plain / +SE / +CBAM with P, and CBAM's own map
show, targets = test.images[:6], test.labels[:6]
maps, captions = [], []
for net in nets.values():
    maps.append(list(gradcam(net, show, targets=targets)))
    captions.append([f"P={p:.2f}" for p in softmax_scores(net, show, targets).tolist()])
with torch.no_grad(), attnviz.capture(nets["+CBAM"], kinds="spatial") as rec:
    nets["+CBAM"](show)
# the block whose map holds most of its mass on the digit (as notebook 03 opens on), and the last
best = shipped.best_cbam_block()
last = list(shipped.entry("resnet10_cbam")["scores"]["cbam_maps"])[-1]
for block in dict.fromkeys([best, last]):
    maps.append(list(rec[block].map))
    captions.append([""] * 6)
rows = ["Grad-CAM plain", "Grad-CAM +SE", "Grad-CAM +CBAM"]
rows += [f"CBAM Ms {block.split('.attention')[0]}" for block in dict.fromkeys([best, last])]
render.overlay_grid(
    show,
    maps,
    row_labels=rows,
    col_labels=[f"label {int(t)}" for t in targets],
    captions=captions,
    scale=2,
).save(out / "cbam_gradcam.png")
print("wrote", sorted(p.name for p in out.iterdir()))
