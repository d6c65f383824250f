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
# # Where does CBAM look? Spatial attention, Grad-CAM, and the ground truth
#
# **CBAM** (Woo et al., ECCV 2018) follows a channel gate (*what*, like SE) with
# a spatial gate (*where*): a 7×7 convolution over the channel-wise mean and
# max maps predicts one weight in [0, 1] per position, and every channel is
# multiplied by it. That map, $M_s$, is attention you can overlay on the image.
#
# This notebook trains a plain, an SE and a CBAM ResNet on digits pasted onto
# photos (the same data as notebook 02), with the same budget; overlays the
# CBAM maps; repeats the CBAM paper's own figure (Grad-CAM of the three
# networks, with the target-class probability P); and scores every map
# against the digit's true box and mask.

# %% tags=["parameters"]
TRAIN = False  # False: open on the shipped trained models (seconds); True: train them here
QUICK = False  # with TRAIN: True is a small, fast run (CI); False the full run
SEED = 0  # with TRAIN (the shipped models were trained and scored with seed 0)

# %%
from IPython.display import Markdown, display

from attnviz import recipes, render, shipped
from attnviz.analysis import spatial_maps
from attnviz.cam import gradcam, softmax_scores
from attnviz.metrics import center_prior, mask_share_maps, score_maps
from attnviz.shipped import obtain, test_data
from attnviz.train import compare, pick_device
from attnviz.widgets import SpatialExplorer

RUN = {"train": TRAIN, "quick": QUICK, "seed": SEED}  # obtain(name, **RUN): open or train
print("training" if TRAIN else "loading the shipped models", "on", pick_device())

# %%
test = test_data("resnet10_cbam", **RUN)

# %% [markdown]
# ## Plain, SE and CBAM: same network, same budget
#
# ResNet-10 (width 16); SE or CBAM on the residual branch of every block.
#
# The CBAM gate here is the official code's rather than the paper's text: its
# spatial convolution is followed by a batch norm (as in the released
# `attention-module`), its kernel is 3×3 (the paper's 7×7 reads mostly zero
# padding on these 4×4 to 32×32 maps) and its channel MLP keeps a quarter of the
# channels (r = 4: the paper's r = 16 leaves one hidden unit in a 16-channel
# stage). These choices come from an experiment that trained each variant on
# this data with this budget and scored every block's map against the digit
# (`benchmarks/bench_cbam_maps.py`; its recorded table is in
# `benchmarks/results/`): the batch norm keeps the gate from sitting open
# everywhere, r = 4 sharpens the first blocks' maps. `attnviz.recipes`
# holds the recipe; `recipe.variant(model={"attention_kwargs": {...}})` trains
# any other.

# %%
# the shipped models, or trained here by their recipes (attnviz.recipes.RECIPES)
names = {"plain": "resnet10_plain", "+SE": "resnet10_se", "+CBAM": "resnet10_cbam"}
runs = {name: obtain(key, **RUN) for name, key in names.items()}
nets = {name: model for name, (model, _) in runs.items()}
histories = {name: history for name, (_, history) in runs.items()}
display(Markdown(compare(histories)))
cbam = nets["+CBAM"]

# %% [markdown]
# ## The spatial explorer
#
# Pick an image and a CBAM block: the spatial map $M_s$ the block multiplied
# its features by, overlaid on the image; the block's channel weights $M_c$;
# the prediction with its probability; and Grad-CAM (computed by the
# `grad-cam` package) for the same image and target. *Overview* shows every
# block for a row of images at once.

# %%
explorer = SpatialExplorer(cbam, test.images[:32], labels=test.labels[:32].tolist())
explorer.block = shipped.best_cbam_block()  # the map with the most of its mass on the digit
explorer

# %% [markdown]
# ## $M_s$ before and after training
#
# The same recipe's network before training (its initial weights, built by
# `attnviz.recipes`) and after, on the same images: rows are the blocks' maps,
# one colour range, 0 to 1, for every map, so a gate that is open
# everywhere shows as one flat colour and a suppressed background as dark.

# %%
untrained = recipes.get("resnet10_cbam").build(SEED).eval()
few = test.images[:6]
before = spatial_maps(untrained, few)
after = spatial_maps(cbam, few)
rows = [f"{block.split('.attention')[0]} {when}" for block in after for when in ("before", "after")]
grid = [list(m) for block in after for m in (before[block], after[block])]
render.overlay_grid(few, grid, row_labels=rows, vmin=0, vmax=1, scale=2)

# %% [markdown]
# ## The CBAM paper's figure
#
# Rows: plain, +SE, +CBAM. Columns: test images. Each cell: Grad-CAM of the
# true class on the last residual stage, with P, the softmax probability of
# that class. (The paper reports CBAM's maps covering the object better and P
# higher; here you can see whether that holds for this data and budget.)

# %%
show = test.images[:6]
targets = test.labels[:6]
maps, captions = [], []
for net in nets.values():
    maps.append(list(gradcam(net, show, targets=targets)))
    captions.append([f"P={p:.2f}" for p in softmax_scores(net, show, targets).tolist()])
columns = [f"label {int(t)}" for t in targets]
render.overlay_grid(
    show, maps, row_labels=list(nets), col_labels=columns, captions=captions, scale=2
)

# %% [markdown]
# ## Scores against the ground truth
#
# Over the test images, for each kind of map: the **pointing game** (is the
# map's maximum inside the digit's box? exactly, and with the box grown by 4 px,
# the usual 15 px tolerance at 224×224 scaled to these 64×64 images), the
# **energy** share of the map inside the box, and the **IoU** of the map
# thresholded at half its range with the digit's mask. The centre prior (a
# Gaussian in the middle) is the baseline any attention should beat; the digit
# covers a few percent of the image, so the uniform map's energy share is that
# small. The *ideal* maps hold, in each cell, the share of it the digit covers:
# the best a map of that resolution can point, since a 4×4 map's cells are 16
# pixels wide.

# %%
spatial = spatial_maps(cbam, test.images)
methods = {f"CBAM Ms {name}": m for name, m in spatial.items()}
for name, net in nets.items():
    methods[f"Grad-CAM {name}"] = gradcam(net, test.images, targets=test.labels, batch_size=100)
methods["centre prior"] = center_prior(len(test), test.images.shape[-2:])
for m in spatial.values():
    side = m.shape[-1]
    methods[f"ideal {side}x{side} map"] = mask_share_maps(test.masks, side)
table, scores = score_maps(methods, test.boxes, test.masks, tolerance=(0, 4))
display(Markdown(table))

# %% [markdown]
# ## What agrees and what does not
#
# * $M_s$ is what CBAM *applied*: captured with a hook, not recomputed. Grad-CAM
#   is an *explanation* computed afterwards from gradients. They answer
#   different questions and need not agree.
# * Which block's map finds the object is an empirical question, answered by
#   the scores table above. Compare each map with the ideal map of its
#   resolution. Below, the same scores for the shipped CBAM network as its
#   manifest records them (measured on the same 2,000 test images when it was
#   saved; with `TRAIN = False` they equal the table above). The benchmark
#   (`benchmarks/bench_cbam_maps.py`) scores the other gates it tried.
# * The pointing game only asks where the maximum is. A gate that is nearly open
#   everywhere can point at the digit without suppressing the background: then
#   its energy share in the box is what a uniform map gets. The overview in the
#   explorer shows how much each block's gate actually modulates.
# * Grad-CAM is computed on the last block, so it is as coarse as that block.

# %%
recorded = shipped.entry("resnet10_cbam")["scores"]["cbam_maps"]
display(
    Markdown(
        "| shipped `resnet10_cbam`: Ms of | pointing game | within 4 px | energy in box | "
        "mask IoU |\n|---|---:|---:|---:|---:|\n"
        + "".join(
            f"| {block} | {r['pointing_game']:.1%} | {r['pointing_game_4px']:.1%} | "
            f"{r['energy']:.1%} | {r['mask_iou']:.2f} |\n"
            for block, r in recorded.items()
        )
    )
)
