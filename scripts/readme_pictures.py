"""Render the README's pictures from the showcase checkpoints (scripts/train_showcase.py).

    python scripts/readme_pictures.py build/showcase assets/readme

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
from attnviz import render
from attnviz.analysis import channel_stats, plot_class_excitation
from attnviz.cam import gradcam, softmax_scores
from attnviz.data import digits_on_photos, distorted_mnist
from attnviz.models import STCNN, small_resnet
from attnviz.train import load_checkpoint
from attnviz.widgets import ChannelExplorer

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)


def png(widget_image):
    return np.asarray(Image.open(io.BytesIO(widget_image.value)).convert("RGB"))


# 1. spatial transformer: sampled region and straightened crop
rts = distorted_mnist("RTS", "test", seed=0)
st = STCNN((42, 42), (28, 28))
load_checkpoint(src / "stcnn_rts.pt", st)
with torch.no_grad(), attnviz.capture(st) as rec:
    st(rts.images[:8])
render.stn_grid(rts.images[:8], rec["stn"].theta, rec["stn"].output, boxes=rts.boxes[:8],
                scale=3, ncols=4).save(out / "stn.png")  # fmt: skip

# 2. the channel explorer's panels for one image
test = digits_on_photos("test", n=2000, seed=0)
nets = {}
for name, attention in [("plain", None), ("+SE", "se"), ("+CBAM", "cbam")]:
    nets[name] = small_resnet(10, attention=attention, width=16, stem_stride=2)
    load_checkpoint(src / f"resnet10_{attention or 'plain'}.pt", nets[name])
explorer = ChannelExplorer(nets["+SE"], test.images[:8], labels=test.labels[:8].tolist())
explorer.block = "layer3.0.attention"
explorer.channel = int(explorer.current()["weights"].argmax())
bars, before, after = png(explorer._bars_png), png(explorer._before_png), png(explorer._after_png)
w = bars.shape[1] + before.shape[1] + after.shape[1] + 8
canvas = np.full((max(bars.shape[0], before.shape[0]), w, 3), 255, np.uint8)
x = 0
for panel in (bars, before, after):
    canvas[: panel.shape[0], x : x + panel.shape[1]] = panel
    x += panel.shape[1] + 4
Image.fromarray(canvas).save(out / "se_explorer.png")

# 3. SE class-wise excitation
stats = channel_stats(nets["+SE"], test.images, test.labels, classes=[str(c) for c in range(10)])
render.figure_to_image(plot_class_excitation(stats), dpi=70).save(out / "se_classwise.png")

# 4. the CBAM paper's figure: Grad-CAM of plain / +SE / +CBAM with P, and CBAM's own map
show, targets = test.images[:6], test.labels[:6]
maps, captions = [], []
for net in nets.values():
    maps.append(list(gradcam(net, show, targets=targets)))
    captions.append([f"P={p:.2f}" for p in softmax_scores(net, show, targets).tolist()])
with torch.no_grad(), attnviz.capture(nets["+CBAM"], kinds="spatial") as rec:
    nets["+CBAM"](show)
last = rec.select(kind="spatial")[-1]
maps.append(list(last.map))
captions.append([""] * 6)
rows = ["Grad-CAM plain", "Grad-CAM +SE", "Grad-CAM +CBAM", "CBAM Ms (last)"]
render.overlay_grid(show, maps, row_labels=rows, col_labels=[f"label {int(t)}" for t in targets],
                    captions=captions, scale=2).save(out / "cbam_gradcam.png")  # fmt: skip
print("wrote", sorted(p.name for p in out.iterdir()))
