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
# blocks (MobileNetV3, EfficientNet, RegNetY), and timm many more with every kind
# of attention (`MODEL = "timm/ecaresnet50d"`, `"timm/gcresnet50t"`,
# `"timm/skresnet18"`, ...). attnviz captures their attention with no change to
# the model. Pick a sample photo or upload your own (nothing leaves your
# machine), choose the class to explain, and see:
#
# * the top-5 predictions;
# * Grad-CAM of the chosen class (computed by the `grad-cam` package);
# * each attention block's map: a spatial, context or self-attention map as the
#   network applied it, or for an SE block its weighted activation
#   $\sum_c s_c\,u_c$, where the channels that block emphasises fire;
# * every channel-attention block's weights, in the same explorer as notebook 02.
#
# The weights are downloaded once, by torchvision into `$TORCH_HOME/hub/checkpoints`
# or by timm into the Hugging Face cache. Offline, or with `QUICK = True`, the
# network runs with random weights and says so in a red banner.

# %% tags=["parameters"]
QUICK = False  # True: random weights, no download (CI)
MODEL = "mobilenet_v3_large"  # any of attnviz.zoo.SE_NETWORKS, or "timm/<name>"
CBAM_CHECKPOINT = "RESNET50_CBAM_new_name_wrap.pth"  # the official CBAM file, if you have it

# %%
from pathlib import Path

from IPython.display import Markdown, display

from attnviz import find_attention_modules, render
from attnviz.cam import gradcam
from attnviz.photos import load_sample, network_view, prepare, sample_photos
from attnviz.widgets import ChannelExplorer, PhotoExplainer, SpatialExplorer
from attnviz.zoo import (
    SE_NETWORKS,
    load_official_cbam,
    official_cbam_transforms,
    pretrained,
    top_classes,
)

try:
    pre = pretrained(MODEL, weights=None if QUICK else "DEFAULT")
except Exception as error:  # offline without a cached file: say so, carry on with random weights
    display(Markdown(f"Could not load pretrained weights ({error}); using random weights."))
    pre = pretrained(MODEL, weights=None)
print(f"{MODEL}: {'ImageNet weights' if pre.pretrained else 'random weights'};",
      f"torchvision SE networks: {', '.join(SE_NETWORKS)}; or any timm model")  # fmt: skip

# %% [markdown]
# ## One photo, explained
#
# The top-5 classes of a sample photo, and Grad-CAM of the first one drawn on
# the centred region the network sees.

# %%
photo = load_sample(sample_photos()[0])
x = prepare(photo, pre.transforms)
display(Markdown(", ".join(f"**{name}** {p:.1%}" for name, p in top_classes(pre, photo))))
render.as_pil(render.overlay(network_view(photo, pre.transforms), gradcam(pre.model, x)[0]))

# %% [markdown]
# ## Explain your own photo
#
# Choose a sample or upload a photo, then a class from the top-5. Left:
# Grad-CAM of that class; right: the chosen attention block's map. Both are
# drawn on the centred region the network actually sees.

# %%
explainer = PhotoExplainer(pre)
explainer

# %% [markdown]
# ## Every channel-attention block's weights for this photo
#
# The channel explorer of notebook 02, unchanged, on the pretrained network
# (images are shown un-normalised with the network's mean and standard deviation).
# Networks without channel attention (a BoTNet, say) skip this section.

# %%
if any(spec.kind == "channel" for _, _, spec in find_attention_modules(pre.model)):
    display(ChannelExplorer(pre.model, x, mean=pre.transforms.mean, std=pre.transforms.std,
                            class_names=pre.class_names))  # fmt: skip
else:
    display(Markdown(f"{MODEL} has no channel attention."))

# %% [markdown]
# ## CBAM spatial maps with the official weights
#
# The CBAM authors released a ResNet-50 + CBAM trained on ImageNet
# (`RESNET50_CBAM_new_name_wrap.pth`, from github.com/Jongchan/attention-module;
# download it by hand and set `CBAM_CHECKPOINT`). attnviz maps it onto its own
# ResNet-50 + CBAM, every weight used. It was trained on 224 x 224 crops, so
# the photo is prepared the way its authors evaluated it (resize 256, centre
# crop 224), whatever `MODEL` uses.

# %%
if Path(CBAM_CHECKPOINT).exists():
    cbam = load_official_cbam(CBAM_CHECKPOINT)
    cbam_input = official_cbam_transforms()
    x_cbam = prepare(photo, cbam_input)
    display(SpatialExplorer(cbam, x_cbam, mean=cbam_input.mean, std=cbam_input.std,
                            class_names=pre.class_names))  # fmt: skip
else:
    display(Markdown(f"No `{CBAM_CHECKPOINT}` here: download it to see CBAM's spatial maps."))
