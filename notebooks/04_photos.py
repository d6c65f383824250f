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
# # Your own photo through a real ImageNet network
#
# torchvision ships several ImageNet networks built with Squeeze-and-Excitation
# blocks (MobileNetV3, EfficientNet, RegNetY). attnviz captures their SE
# weights with no change to the model. Pick a sample photo or upload your own
# (nothing leaves your machine), choose the class to explain, and see:
#
# * the top-5 predictions;
# * Grad-CAM of the chosen class (computed by the `grad-cam` package);
# * an SE-weighted activation map per block: $\sum_c s_c\,u_c$, where the
#   channels that block emphasises fire;
# * every SE block's channel weights, in the same explorer as notebook 02.
#
# The weights are downloaded once by torchvision into its cache
# (`$TORCH_HOME/hub/checkpoints`). Offline, or with `QUICK = True`, the network
# runs with random weights and says so in a red banner.

# %% tags=["parameters"]
QUICK = False  # True: random weights, no download (CI)
MODEL = "mobilenet_v3_large"  # any of attnviz.zoo.SE_NETWORKS
CBAM_CHECKPOINT = "RESNET50_CBAM_new_name_wrap.pth"  # the official CBAM file, if you have it

# %%
from pathlib import Path

from IPython.display import Markdown, display

from attnviz import render
from attnviz.cam import gradcam
from attnviz.photos import load_sample, network_view, prepare, sample_photos
from attnviz.widgets import ChannelExplorer, PhotoExplainer, SpatialExplorer
from attnviz.zoo import SE_NETWORKS, load_official_cbam, predict, pretrained

try:
    pre = pretrained(MODEL, weights=None if QUICK else "DEFAULT")
except Exception as error:  # offline without a cached file: say so, carry on with random weights
    display(Markdown(f"Could not load pretrained weights ({error}); using random weights."))
    pre = pretrained(MODEL, weights=None)
print(f"{MODEL}: {'ImageNet weights' if pre.pretrained else 'random weights'};",
      f"SE networks available: {', '.join(SE_NETWORKS)}")  # fmt: skip

# %% [markdown]
# ## One photo, explained
#
# The top-5 classes of a sample photo, and Grad-CAM of the first one drawn on
# the centred region the network sees.

# %%
photo = load_sample(sample_photos()[0])
x = prepare(photo, pre.transforms)
display(Markdown(", ".join(f"**{name}** {p:.1%}" for name, p in predict(pre, photo))))
render.as_pil(render.overlay(network_view(photo, pre.transforms), gradcam(pre.model, x)[0]))

# %% [markdown]
# ## Explain your own photo
#
# Choose a sample or upload a photo, then a class from the top-5. Left:
# Grad-CAM of that class; right: the SE-weighted map of the chosen block. Both
# are drawn on the centred region the network actually sees.

# %%
explainer = PhotoExplainer(pre)
explainer

# %% [markdown]
# ## Every SE block's channel weights for this photo
#
# The channel explorer of notebook 02, unchanged, on the torchvision network
# (images are shown un-normalised with ImageNet's mean and standard deviation).

# %%
ChannelExplorer(pre.model, x, mean=pre.transforms.mean, std=pre.transforms.std,
                class_names=pre.categories)  # fmt: skip

# %% [markdown]
# ## CBAM spatial maps with the official weights
#
# The CBAM authors released a ResNet-50 + CBAM trained on ImageNet
# (`RESNET50_CBAM_new_name_wrap.pth`, from github.com/Jongchan/attention-module;
# download it by hand and set `CBAM_CHECKPOINT`). attnviz maps it onto its own
# ResNet-50 + CBAM, every weight used.

# %%
if Path(CBAM_CHECKPOINT).exists():
    cbam = load_official_cbam(CBAM_CHECKPOINT)
    display(SpatialExplorer(cbam, x, mean=pre.transforms.mean, std=pre.transforms.std,
                            class_names=pre.categories))  # fmt: skip
else:
    display(Markdown(f"No `{CBAM_CHECKPOINT}` here: download it to see CBAM's spatial maps."))
