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
# # Attention on your own photo, in every network you can download
#
# The ImageNet networks people download apply attention of every kind:
# vision transformers (self-attention between patches), BoTNet and HaloNet
# (self-attention over feature maps, HaloNet within local windows), GCNet (a
# softmax over positions that pools a global context), ResNeSt and SKNet
# (a softmax over branches for every channel), ECA and SE (channel gates) and
# CBAM (channel and spatial gates). attnviz records what each network
# *applied*, with no change to the model, and checks every record against the
# module's own output.
#
# Pick a family and a model, pick a sample photo or upload your own (nothing
# leaves your machine), and see the network's attention next to Grad-CAM of
# the class it predicts. Grad-CAM is an *explanation* computed from gradients;
# the attention maps are what the network multiplied by.
#
# Weights load through each library's own mechanism (torchvision's weights
# API into `$TORCH_HOME/hub/checkpoints`, timm into the Hugging Face cache),
# once. Offline, or with `QUICK = True`, a network runs with random weights
# and says so in a red banner: its maps then mean nothing.

# %% tags=["parameters"]
QUICK = False  # True: random weights, no downloads, small networks (CI)
FAMILY = "vision transformer"  # a key of attnviz.zoo.FAMILIES
MODEL = None  # one of that family's models; None: the first
VIT = "vit_b_16"  # the vision transformer looked inside below
LOCAL = "timm/halonet26t.a1h_in1k"  # a network with local self-attention
CHANNEL_MODEL = "mobilenet_v3_large"  # an SE or ECA network for the channel explorer
COMPARE = True  # one row per family (downloads one network per family)
CBAM_CHECKPOINT = "RESNET50_CBAM_new_name_wrap.pth"  # the official CBAM file, if you have it

# %%
from pathlib import Path

from IPython.display import Markdown, display

from attnviz import find_attention_modules
from attnviz.explain import comparison_figure, explain
from attnviz.photos import load_sample, prepare, sample_photos
from attnviz.widgets import (
    ChannelExplorer,
    ModelPicker,
    PhotoExplainer,
    QueryExplorer,
    SpatialExplorer,
)
from attnviz.zoo import FAMILIES, load_official_cbam, load_or_random, official_cbam_transforms

weights = None if QUICK else "DEFAULT"


def load(name):
    pre, why = load_or_random(name, weights)
    if why:
        display(Markdown(f"**{name}: random weights** ({why[:200]})"))
    return pre


photo = load_sample(sample_photos()[0])
for name, family in FAMILIES.items():
    print(f"{name:24s} {family.attention}")

# %% [markdown]
# ## Your photo, any family
#
# Left: Grad-CAM of the chosen class. Right: the chosen block's attention as
# the network applied it — a vision transformer's class-token attention (per
# head or averaged over heads) or its attention rollout through all blocks, a
# self-attention block's attention received (Swin's and MaxViT's windows laid
# back where they came from on the photo), GCNet's context-pooling map, an
# SE block's weighted activation $\sum_c s_c\,u_c$, or for SKNet and ResNeSt
# which branch each channel chose (one row per branch, a column per channel,
# bright = chosen).

# %%
picker = ModelPicker(weights=weights, family=FAMILY, model=MODEL)
explainer = PhotoExplainer(picker)
explainer

# %% [markdown]
# ## Inside a vision transformer
#
# Every block of a ViT lets each patch (and the class token) look at every
# other patch, in several heads. Choose a patch with the sliders and see where
# it looks; switch "show" to where the class token looks (the picture of the
# DINO paper, Caron et al. 2021) or to the attention rollout (Abnar and
# Zuidema 2020), which multiplies the blocks' attention, each mixed with the
# residual connection, to follow attention from the output back to the patches.

# %%
vit = load("timm/vit_tiny_patch16_224" if QUICK else VIT)
x_vit = prepare(photo, vit.transforms)
QueryExplorer(vit.model, x_vit, mean=vit.transforms.mean, std=vit.transforms.std)

# %% [markdown]
# Where the class token looks in each head of the last block: in a trained ViT
# different heads pick out different parts of the object.

# %%
explain(vit, photo, display_side=160).head_grid()

# %% [markdown]
# ## Local self-attention: HaloNet
#
# HaloNet's queries come in blocks; each block sees only a window of keys
# (the block and a halo around it). The query explorer draws that window (blue)
# around the query cell: all of the query's attention falls inside it.

# %%
local = load("timm/halonet26t" if QUICK else LOCAL)
x_local = prepare(photo, local.transforms)
QueryExplorer(local.model, x_local, mean=local.transforms.mean, std=local.transforms.std)

# %% [markdown]
# ## Every channel-attention block's weights for this photo
#
# The channel explorer of notebook 02 on a pretrained SE network (images are
# shown un-normalised with the network's mean and standard deviation).

# %%
channel_net = load(CHANNEL_MODEL)
x = prepare(photo, channel_net.transforms)
if any(spec.kind == "channel" for _, _, spec in find_attention_modules(channel_net.model)):
    display(
        ChannelExplorer(
            channel_net.model,
            x,
            mean=channel_net.transforms.mean,
            std=channel_net.transforms.std,
            class_names=channel_net.class_names,
        )
    )
else:
    display(Markdown(f"{CHANNEL_MODEL} has no channel attention."))

# %% [markdown]
# ## One row per family
#
# The same photo through each family's suggested network: the region it sees,
# the attention it applied in its last attention block (a ViT: its class
# token's; SKNet / ResNeSt: the branch choice), and Grad-CAM of its predicted
# class, with the class and its probability. Each row says whether its weights
# are trained.

# %%
if COMPARE:
    rows = []
    for name, family in FAMILIES.items():
        first = family.models[0]
        if QUICK and first == "vit_b_16":
            first = "timm/vit_tiny_patch16_224"
        rows.append((name, explain(load(first), photo, display_side=192)))
    display(comparison_figure(rows, side=192))

# %% [markdown]
# ## CBAM spatial maps with the official weights
#
# The CBAM authors released a ResNet-50 + CBAM trained on ImageNet
# (`RESNET50_CBAM_new_name_wrap.pth`, from github.com/Jongchan/attention-module;
# download it by hand and set `CBAM_CHECKPOINT`). attnviz maps it onto its own
# ResNet-50 + CBAM, every weight used. It was trained on 224 x 224 crops, so
# the photo is prepared the way its authors evaluated it (resize 256, centre
# crop 224).

# %%
if Path(CBAM_CHECKPOINT).exists():
    cbam = load_official_cbam(CBAM_CHECKPOINT)
    cbam_input = official_cbam_transforms()
    x_cbam = prepare(photo, cbam_input)
    display(
        SpatialExplorer(
            cbam,
            x_cbam,
            mean=cbam_input.mean,
            std=cbam_input.std,
            class_names=channel_net.class_names,
        )
    )
else:
    display(Markdown(f"No `{CBAM_CHECKPOINT}` here: download it to see CBAM's spatial maps."))
