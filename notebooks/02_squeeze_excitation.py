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
# # Slide through Squeeze-and-Excitation channel weights
#
# A **Squeeze-and-Excitation** block (Hu et al., CVPR 2018) looks at a feature
# map, summarises every channel by its average (*squeeze*), and predicts one
# weight in [0, 1] per channel (*excitation*) by which that channel is then
# multiplied. The weights are the network's answer to "which features matter
# for this image?".
#
# Here a small ResNet, with and without SE blocks, learns to read MNIST digits
# pasted onto crops of real photographs — the digit has to be found among
# natural texture. Then you can slide through the weights every SE block
# applied to an image, see each channel before and after scaling, and check
# the SE paper's observation that early blocks treat all classes alike while
# late blocks become class-specific.

# %% tags=["parameters"]
TRAIN = False  # False: open on the shipped trained models (seconds); True: train them here
QUICK = False  # with TRAIN: True is a small, fast run (CI); False the full run, three seeds
SEED = 0  # with TRAIN (the shipped models were trained and scored with seed 0)

# %%
import statistics
import tempfile
from pathlib import Path

from IPython.display import Markdown, display
from torch.utils.data import TensorDataset

from attnviz import render
from attnviz.analysis import channel_stats, plot_class_excitation
from attnviz.shipped import obtain, test_data
from attnviz.stats import DatasetStats, dataset_stats
from attnviz.train import pick_device
from attnviz.widgets import ChannelExplorer, ChannelGallery

# with TRAIN, three seeds of each network (one when QUICK), all on seed SEED's data
SEEDS = [SEED] if QUICK or not TRAIN else [SEED, SEED + 1, SEED + 2]
print("training" if TRAIN else "loading the shipped models", "on", pick_device())

# %% [markdown]
# ## The data: digits on photos
#
# Test images use digits *and* photo regions that training never saw. Green:
# the digit's box (the data set also has its exact mask).

# %%
test = test_data("resnet10_se", train=TRAIN, quick=QUICK, seed=SEED)
render.as_pil(
    render.montage(
        [render.draw_box(test.images[i], test.boxes[i], scale=2) for i in range(16)], ncols=8
    )
)

# %% [markdown]
# ## Plain vs SE network, same budget
#
# The same ResNet-10 (width 16), once plain and once with an SE block on the
# residual branch of every block (before the addition, as in the papers).
# With `TRAIN = False` both are the shipped models (one seed, trained by this
# cell's recipe in full mode: `attnviz.recipes.RECIPES["resnet10_se"]`);
# `TRAIN = True` trains three seeds of each here by the same recipe.

# %%
runs = {
    name: [obtain(key, train=TRAIN, quick=QUICK, seed=s, data_seed=SEED) for s in SEEDS]
    for name, key in [("plain", "resnet10_plain"), ("SE", "resnet10_se")]
}
rows = [
    "| network | test accuracy (mean ± sd over seeds) | seeds | train seconds per run |",
    "|---|---:|---:|---:|",
]
for name, results in runs.items():
    accs = [h.final.test_acc for _, h in results]
    spread = f" ± {statistics.stdev(accs):.2%}" if len(accs) > 1 else " (one seed)"
    secs = statistics.mean(h.train_seconds for _, h in results)
    rows.append(f"| {name} | {statistics.mean(accs):.2%}{spread} | {len(accs)} | {secs:.0f} |")
display(Markdown("\n".join(rows)))
se_model = runs["SE"][0][0]

# %% [markdown]
# ## The channel-weight explorer
#
# Pick an image and an SE block, then slide through its channels. The bar
# chart shows all the block's weights for this image, the selected channel in
# orange; below it, that channel's feature map before scaling and after
# (same colour scale, so a small weight visibly dims it). *Sort by weight*
# makes the slider walk channels from the most to the least emphasised;
# *highest* and *lowest* jump straight there.

# %%
explorer = ChannelExplorer(se_model, test.images[:64], labels=test.labels[:64].tolist())
explorer

# %% [markdown]
# Every channel of the last SE block for the first image, as one offline HTML
# file (the sliders still work; nothing is fetched):

# %%
explorer.export_html(
    "se_channels.html", values={"image": [0], "block": [explorer.controls["block"].options[-1][1]]}
)

# %% [markdown]
# ## Class-wise excitation, as in the SE paper
#
# For every block: the mean weight of each channel over the test images of
# each class (one line per class; grey: all classes). The number in each title
# is a class-specificity score — the spread of the class means divided by the
# spread within a class (0: every class gets the same weights). The paper's
# finding on ImageNet: early blocks are class-agnostic, later blocks
# class-specific, the very last ones saturate.

# %%
stats = channel_stats(se_model, test.images, test.labels, class_names=[str(c) for c in range(10)])
display(Markdown(stats.to_table()))
render.figure_to_image(plot_class_excitation(stats))

# %% [markdown]
# ## The same statistics over any data set, from a file
#
# `channel_stats` above holds the test images in memory. `attnviz.stats.dataset_stats`
# streams a data set of any size (an image folder, WebDataset tar shards or any torch
# `Dataset`) and reduces it exactly: per class and block, the mean and variance of every
# channel's weight (merged in float64 with Chan's parallel formula), a histogram of the
# weights, the mean spatial map of spatial gates, and the images that excite each
# channel most and least. It writes one self-describing file, resumes after an
# interruption, and runs unchanged on many processes under `torchrun` (`attnviz stats`
# on the command line; see the README). Here it streams the test images; the table
# and the figure are drawn from the file.

# %%
test_set = TensorDataset(test.images, test.labels)
stats_file = Path(tempfile.gettempdir()) / "attnviz-se-test-stats.pt"
dataset_stats(se_model.cpu(), test_set, out=stats_file, num_classes=10, shard_size=500)
from_file = DatasetStats.load(stats_file)
display(Markdown(from_file.summary()))
render.figure_to_image(plot_class_excitation(from_file.channel_stats()))

# %% [markdown]
# Which images excite a channel most, and which least? Pick a block and a channel:
# the first row holds the test images with the highest weight for it, the second the
# lowest, and the bars its mean weight for each class (0 to 9).

# %%
ChannelGallery(stats_file, test_set)

# %% [markdown]
# ## What you are looking at
#
# * A weight is the excitation $s_c$ of eq. 3: the block's output channel $c$ is
#   its input channel $c$ times $s_c$. The explorer shows exactly the weights the
#   network applied (they are captured with a forward hook, not recomputed).
# * Weights near 1 pass a channel through; weights near 0 switch it off for this
#   image. Channels whose weight changes a lot between images are the ones the
#   block gates by content.
# * The accuracy table is the honest comparison: same data, same budget, several
#   seeds in full mode.
