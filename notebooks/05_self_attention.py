# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Self-attention: pick a pixel, see where it looks
#
# In a **non-local block** (Wang et al., CVPR 2018) every position of a feature
# map attends to every other: queries and keys are 1×1 projections, the
# attention of query $i$ over keys $j$ is a softmax of their dot products, and
# the block adds the attention-weighted values back to its input. Its output
# projection starts at zero, so training starts from the identity.
#
# The attention matrix has $(HW)^2$ entries — the cost grows with the fourth
# power of the side — which is why the paper places only a few such blocks, and
# can subsample keys by 2×2 pooling. This notebook trains a ResNet with and
# without a non-local block after its third stage on digits pasted onto photos,
# measures the cost, and lets you pick a query pixel to see where it looks.

# %% tags=["parameters"]
TRAIN = False  # False: open on the shipped trained models (seconds); True: train them here
QUICK = False  # with TRAIN: True is a small, fast run (CI); False the full run
SEED = 0  # with TRAIN (the shipped models were trained and scored with seed 0)

# %%
import torch
from IPython.display import Markdown, display

import attnviz
from attnviz import render
from attnviz.analysis import forward_cost
from attnviz.metrics import attention_on_object
from attnviz.shipped import obtain, test_data
from attnviz.train import compare, pick_device
from attnviz.widgets import QueryExplorer

RUN = {"train": TRAIN, "quick": QUICK, "seed": SEED}  # obtain(name, **RUN): open or train
print("training" if TRAIN else "loading the shipped models", "on", pick_device())

# %%
test = test_data("resnet10_nonlocal", **RUN)
# the shipped models, or trained here by their recipes (attnviz.recipes.RECIPES)
runs = {
    name: obtain(key, **RUN)
    for name, key in [("plain", "resnet10_plain"), ("non-local", "resnet10_nonlocal")]
}
nets = {name: model for name, (model, _) in runs.items()}
histories = {name: history for name, (_, history) in runs.items()}
display(Markdown(compare(histories)))

# %% [markdown]
# ## What it costs
#
# One forward of a batch of 8, at the training size and at twice the side.
# The non-local block's attention matrix grows with the square of the number
# of positions.

# %%
rows = ["| network | image | forward ms | peak MiB |", "|---|---:|---:|---:|"]
for side in (64, 128):
    x = torch.rand(8, 3, side, side)
    for name, net in nets.items():
        cost = forward_cost(net.cpu(), x, reps=3)
        rows.append(f"| {name} | {side}×{side} | {cost['ms']:.1f} | {cost['peak_mib']:.1f} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## Where the digit's centre looks
#
# For six test images: the attention of the query at the centre of the digit's
# box, over the whole image (per-map colour scale).

# %%
show, boxes = test.images[:6], test.boxes[:6]
with torch.no_grad(), attnviz.capture(nets["non-local"], kinds="self") as rec:
    nets["non-local"](show)
record = rec.select(kind="self")[0]
size = tuple(show.shape[-2:])
centres = [((b[0] + b[2]).item() / 2, (b[1] + b[3]).item() / 2) for b in boxes]
maps = [record.query_map(c, size)[i] for i, c in enumerate(centres)]
render.overlay_grid(show, [maps], row_labels=[record.name], scale=3)

# %% [markdown]
# ## Where does a pixel look?
#
# Click on the picture to choose a query pixel (hovering previews one, with a
# yellow crosshair; the *x* and *y* sliders follow the clicks). The box is the
# feature-map cell the pixel falls in, and the overlay is that query's
# attention over the image, each key drawn as the block of pixels it covers.
# *Where the whole image looks* shows the attention every key receives,
# averaged over all queries.

# %%
explorer = QueryExplorer(nets["non-local"], test.images[:32])
explorer

# %% [markdown]
# ### Share it: one file, no kernel
#
# `export_html` writes the explorer into one self-contained HTML file that
# still answers clicks: open it from disk, mail it, put it in a report. It
# fetches nothing from anywhere. Shown here, it is the page itself.

# %%
explorer.export_html("query_explorer.html", images=range(2 if QUICK else 8))

# %% [markdown]
# ## Does attention from the digit stay on the digit?
#
# For query cells on the digit: the share of their attention that lands on
# the digit, against the digit's share of the image (what uniform attention
# would give). A ratio above 1 means digit pixels attend to the digit more
# than chance.

# %%
score = attention_on_object(nets["non-local"], test.images, test.masks)
ok = ~torch.isnan(score["on_object"])
on, area = score["on_object"][ok].mean().item(), score["area"][ok].mean().item()
display(
    Markdown(
        f"On {int(ok.sum())} test images: attention from digit queries on the digit **{on:.1%}**, "
        f"digit area {area:.1%} (ratio {on / area:.2f})."
    )
)

# %% [markdown]
# ## A trained vision transformer
#
# The same question inside a transformer: the shipped small ViT with four
# register tokens (`vit_small_reg`, trained on the same photos; each token is
# an 8 × 8 patch). Click a patch to see where it looks in the chosen block;
# *show* offers the class token (`cls`, the token that is classified) and the
# registers (`reg1` … `reg4`, extra tokens no output reads), and the rollout.
# The head grid shows every block and head at once. Notebook 06 scores these
# maps against the digit's mask.

# %%
vit, vit_history = obtain("vit_small_reg", **RUN)
print(f"test accuracy {vit_history.final.test_acc:.1%}")
QueryExplorer(vit, test_data("vit_small_reg", **RUN).images[:32])
