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
# # Which map tells the truth?
#
# attnviz draws many maps of one image: where a transformer's class token
# looks, attention rollout, the attention each patch receives, Chefer's
# gradient-weighted relevance, Grad-CAM, CBAM's spatial map, SE-weighted
# activations, a non-local block's attention. Which should you believe?
#
# Here every method explains the **same test images**, digits pasted on photos,
# where we know every pixel of the object (the digit's mask), and is scored the
# way the field scores them:
#
# - **pointing game** (Zhang et al. 2016): is the map's maximum on the digit,
#   exactly or within 4 px (TorchRay's 15 px at 224 px, scaled to 64 px)?
# - **energy in mask**: the share of the map's mass on the digit;
# - **60%-mass Jaccard** (DINO): the pixels holding 60% of the mass against the mask;
# - **deletion / insertion AUC** (RISE): the model's probability of the true class
#   as the map's top pixels are removed (lower is better) or put back into a
#   blurred image (higher is better);
# - **positive / negative perturbation AUC** (Chefer et al.): accuracy as the most
#   (lower is better) or least (higher is better) relevant pixels are removed.
#
# Every model also gets two maps that know nothing: a **centre** Gaussian (on
# VOC07 it already scores 69.6% on the pointing game) and **random** noise. A
# method is only worth its score *above those baselines*. Intervals are 95%
# bootstrap intervals over the images.

# %% tags=["parameters"]
TRAIN = False  # False: the shipped trained models (seconds); True: train them here
QUICK = False  # True: fewer images and coarser curves (CI); with TRAIN, one epoch each
SEED = 0  # with TRAIN (the shipped models were trained and scored with seed 0)
IMAGES = 64  # test images scored (QUICK: 32; the README's table: 500, `make bench`)

# %%
from IPython.display import Markdown, display

from attnviz import attribution, render
from attnviz.data import digits_on_photos
from attnviz.shipped import COMPARED, obtain, test_data
from attnviz.train import pick_device
from attnviz.widgets import DeletionExplorer

RUN = {"train": TRAIN, "quick": QUICK, "seed": SEED}
MODELS = dict(COMPARED)  # display name -> shipped model
if QUICK:
    MODELS = {k: v for k, v in MODELS.items() if v in ("vit_small_reg", "resnet10_cbam")}
print("training" if TRAIN else "loading the shipped models", "on", pick_device())
# scored on the CPU: the numbers below are the manifest's, bit for bit, on any machine
models = {name: obtain(key, **RUN)[0].cpu() for name, key in MODELS.items()}

# %% [markdown]
# ## The images and their ground truth
#
# The test split every one of these models was scored on (digits and photo
# regions never seen in training), the digit's mask outlined. Blocks and the
# "best head" are chosen on *training* images, never on these.

# %%
n = 32 if QUICK else IMAGES  # the first n of the fixed test split
test = test_data("vit_small", **RUN)
images, labels, masks = test.images[:n], test.labels[:n], test.masks[:n]
calibration = digits_on_photos("train", n=64 if QUICK else 256, seed=0)
render.overlay_grid(images[:8], [masks[:8].float()], row_labels=["digit mask"], scale=2)

# %% [markdown]
# ## Every method, every model, the same images

# %%
comparison = attribution.compare(
    models,
    images,
    labels,
    masks,
    calibration=(calibration.images, calibration.masks),
    fractions=(0, 0.25, 0.5, 0.75, 1) if QUICK else None,
    progress=print,
)
display(Markdown(comparison.table()))

# %% [markdown]
# Who wins? The best method of each model on each score (baselines excluded),
# and how far above the centre baseline it is.

# %%
display(Markdown(comparison.winners_table(("pointing", "energy", "deletion", "positive"))))

# %% [markdown]
# ## Every method as a row
#
# The same six images; each row one method's map (each map on its own colour
# scale). Maps of a ViT live on its 8 × 8 token grid, Grad-CAM on the input's
# pixels, CBAM on its block's grid.

# %%
for model, found in comparison.maps.items():
    display(Markdown(f"**{model}**"))
    display(
        render.overlay_grid(
            images[:6], [m[:6] for m in found.values()], row_labels=list(found), scale=2
        )
    )

# %% [markdown]
# ## Slide along the deletion curve
#
# What each method's ranking removes, step by step, and the probability of the
# true class the model then gives (the very images the deletion score used).
# *insertion* starts from a blurred copy and puts the top pixels back;
# *negative* removes the least relevant pixels first.

# %%
DeletionExplorer(comparison, models, images, labels)
