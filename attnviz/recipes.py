"""Every shipped model's recipe, in one place: how it is built, on what data, trained how.

A :class:`Recipe` names the model's constructor and its arguments (seeded just before it
is called), the data it is trained and tested on (generated offline from data attnviz
ships), the training function with its arguments, the seed and so the epochs. Everything
that trains or describes a shipped model reads these objects and nothing else:

- the notebooks, through :func:`attnviz.shipped.obtain` (``TRAIN = True`` trains by the
  recipe, ``TRAIN = False`` opens the file it produced);
- the manifest and ``attnviz models --regenerate`` (:func:`attnviz.shipped.regenerate`);
- the benchmarks, which train the recipes and variants of them (:meth:`Recipe.variant`);
- the README's table of shipped models (:func:`attnviz.shipped.summary`).

So "the shipped model was trained by exactly this cell" holds by construction: change a
recipe here and every reader follows (``tests/test_recipes.py`` checks that they do).

    from attnviz import recipes
    r = recipes.get("resnet10_cbam")
    model = r.build()                      # seeded, untrained
    history = r.fit(model, device="cpu")   # trains on r.train_data(), tests on r.test_data()
    r.quick()                              # the one-epoch smoke test of the same recipe
    r.variant(model={"attention_kwargs": {"spatial_kernel": 7}})  # a benchmark's variant
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import digits_on_photos, distorted_mnist
from .models import STCNN, TinyCNN, small_resnet, small_vit
from .train import fit, fit_upright, snapshot_attention, stn_param_groups

__all__ = [
    "CONSTRUCTORS",
    "EXPERIMENTS",
    "INPUT_SHAPES",
    "QUICK",
    "RECIPES",
    "TRAINERS",
    "UPRIGHT",
    "Recipe",
    "get",
    "names",
]

#: constructor names a recipe may use -> the callable (recorded as ``attnviz.models.<name>``)
CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    "STCNN.for_rts": STCNN.for_rts,
    "STCNN.for_clutter": STCNN.for_clutter,
    "STCNN.for_upright": STCNN.for_upright,
    "TinyCNN": TinyCNN,
    "small_resnet": small_resnet,
    "small_vit": small_vit,
}

#: training functions a recipe may use -> the function (``attnviz.train.<name>``)
TRAINERS: dict[str, Callable[..., Any]] = {"fit": fit, "fit_upright": fit_upright}

#: the data sets a recipe may name: ``photos`` is digits on photos (``n_train`` / ``n_test``
#: images at 64 x 64); the rest are ``distorted_mnist`` kinds, fresh distortions every epoch
DATA = ("photos", "RTS", "R", "cluttered")

#: the input (channels, height, width) of a model trained on each of :data:`DATA`
#: (``tests/test_recipes.py`` checks it against the data each recipe generates)
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "photos": (3, 64, 64),
    "RTS": (1, 42, 42),
    "R": (1, 28, 28),
    "cluttered": (1, 60, 60),
}

#: what :meth:`Recipe.quick` changes: one epoch (per phase), fewer photos
QUICK = {"epochs": 1, "n_train": 2000, "n_test": 500}


def _tuples(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Lists in recorded arguments (JSON has no tuples) as the tuples constructors expect."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _merged(base: Mapping[str, Any], change: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**base, **dict(change or {})}


@dataclass(frozen=True)
class Recipe:
    """How one model is built, trained and scored (all recorded in the manifest).

    Attributes:
        title: one line for tables.
        notebooks: the notebooks that open on it.
        model: (constructor name in :data:`CONSTRUCTORS`, keyword arguments), e.g.
            ``("small_resnet", {"depth": 10})``; ``torch.manual_seed(seed)`` runs just before.
        data: one of :data:`DATA`. ``photos``: digits on photos, ``n_train`` training and
            ``n_test`` test images (data seed = seed); the ``distorted_mnist`` kinds draw
            fresh distortions every epoch (seed ``1000 * data seed + epoch``), test split
            with the data seed.
        train: (``"fit"`` or ``"fit_upright"``, arguments). For ``fit``, ``stn_lr`` means
            ``param_groups=stn_param_groups(model, stn_lr=...)`` and ``snapshot: N`` keeps
            theta of the first N test images after every epoch.
        scores: what :mod:`attnviz.shipped` measures on the test split besides accuracy.
        seed: the seed of the model's initialisation, its training and its data.
        n_train, n_test: image counts of the ``photos`` data.
        distractors: with ``photos``, digits of other classes drawn in blue under the red
            digit to classify (:func:`attnviz.data.digits_on_photos`).
        fresh: with ``photos``, ``n_train`` new training images every epoch (data seed
            ``1000 * seed + epoch``; new photo crops, places and colours of the same
            training digits), as the ``distorted_mnist`` kinds: what lets a transformer
            learn here without memorising its training images.
    """

    title: str
    notebooks: tuple[str, ...]
    model: tuple[str, dict[str, Any]]
    data: str
    train: tuple[str, dict[str, Any]]
    scores: tuple[str, ...] = ()
    seed: int = 0
    n_train: int = 10000
    n_test: int = 2000
    distractors: int = 0
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.model[0] not in CONSTRUCTORS:
            raise ValueError(
                f"unknown constructor {self.model[0]!r}; a recipe builds one of "
                f"{sorted(CONSTRUCTORS)}"
            )
        if self.train[0] not in TRAINERS:
            raise ValueError(
                f"unknown training function {self.train[0]!r}; use one of {sorted(TRAINERS)}"
            )
        if self.data not in DATA:
            raise ValueError(f"unknown data {self.data!r}; use one of {DATA}")
        if (self.distractors or self.fresh) and self.data != "photos":
            raise ValueError("distractors and fresh apply to the photos data only")

    # -- what it is ---------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        """Epochs in all (the three phases of ``fit_upright`` added)."""
        kind, kwargs = self.train
        if kind == "fit_upright":
            return sum(int(kwargs[k]) for k in ("pre_epochs", "stn_epochs", "joint_epochs"))
        return int(kwargs["epochs"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the model takes: its data's."""
        return INPUT_SHAPES[self.data]

    def describe(self) -> dict[str, Any]:
        """The recipe as the manifest records it (plain data)."""
        (make, model_kwargs), (kind, train_kwargs) = self.model, self.train
        out: dict[str, Any] = {
            "model": {"constructor": f"attnviz.models.{make}", "arguments": model_kwargs},
            "train": {"function": f"attnviz.train.{kind}", "arguments": train_kwargs},
            "data": self.data,
            "seed": self.seed,
        }
        if self.data == "photos":
            out["images"] = {"train": self.n_train, "test": self.n_test}
            if self.distractors:
                out["distractors"] = self.distractors
            if self.fresh:
                out["fresh"] = True
        return out

    # -- deriving recipes -------------------------------------------------------------------------
    def variant(
        self,
        *,
        model: Mapping[str, Any] | None = None,
        train: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Recipe:
        """This recipe with some constructor or training arguments (merged) or fields changed.

        ``recipe.variant(model={"attention_kwargs": {"spatial_kernel": 7}})`` is the same
        training of another network; ``variant(train={"epochs": 12})`` trains longer.
        """
        return dataclasses.replace(
            self,
            model=(self.model[0], _merged(self.model[1], model)),
            train=(self.train[0], _merged(self.train[1], train)),
            **fields,
        )

    def quick(self) -> Recipe:
        """This recipe's smoke test: one epoch (one per phase), fewer photos (:data:`QUICK`)."""
        if self.train[0] == "fit_upright":
            epochs = {k: QUICK["epochs"] for k in ("pre_epochs", "stn_epochs", "joint_epochs")}
        else:
            epochs = {"epochs": QUICK["epochs"]}
        return self.variant(
            train=epochs,
            n_train=min(self.n_train, QUICK["n_train"]),
            n_test=min(self.n_test, QUICK["n_test"]),
        )

    # -- doing it ---------------------------------------------------------------------------------
    def build(self, seed: int | None = None) -> nn.Module:
        """The untrained model, initialised after ``torch.manual_seed(seed)`` (default: the
        recipe's seed)."""
        make, kwargs = self.model
        torch.manual_seed(self.seed if seed is None else seed)
        return CONSTRUCTORS[make](**_tuples(kwargs))

    def train_data(self, seed: int | None = None) -> Any:
        """The training data for data seed ``seed``: a data set, or ``epoch -> data set``."""
        seed = self.seed if seed is None else seed
        if self.data == "photos" and self.fresh:
            n, k = self.n_train, self.distractors

            def new_photos(epoch: int) -> Any:
                return digits_on_photos("train", n=n, seed=seed * 1000 + epoch, distractors=k)

            return new_photos
        if self.data == "photos":
            return digits_on_photos(
                "train", n=self.n_train, seed=seed, distractors=self.distractors
            )
        kind = self.data

        def fresh(epoch: int) -> Any:
            return distorted_mnist(kind, "train", seed=seed * 1000 + epoch)

        return fresh

    def test_data(self, seed: int | None = None) -> Any:
        """The test split for data seed ``seed`` (the shipped model was scored on seed 0's)."""
        seed = self.seed if seed is None else seed
        if self.data == "photos":
            return digits_on_photos("test", n=self.n_test, seed=seed, distractors=self.distractors)
        return distorted_mnist(self.data, "test", seed=seed)

    def fit(
        self,
        model: nn.Module,
        test: Any = None,
        *,
        seed: int | None = None,
        data_seed: int | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> Any:
        """Train ``model`` (from :meth:`build`) by this recipe; returns its history.

        Args:
            model: the model to train, in place.
            test: evaluated after every epoch (default: :meth:`test_data` of ``data_seed``).
            seed: the training seed (batch order, dropout); default the recipe's.
            data_seed: the data's seed; default ``seed``.
            device, progress: as for :func:`attnviz.train.fit`.

        Returns:
            a :class:`~attnviz.train.History`, or a :class:`~attnviz.train.PhasedHistory`
            for ``fit_upright``.
        """
        seed = self.seed if seed is None else seed
        data_seed = seed if data_seed is None else data_seed
        test = self.test_data(data_seed) if test is None else test
        train = self.train_data(data_seed)
        kind, kwargs = self.train
        args = dict(kwargs)
        if kind == "fit_upright":
            return fit_upright(
                model, train, test, seed=seed, device=device, progress=progress, **args
            )
        if "stn_lr" in args:
            args["param_groups"] = stn_param_groups(model, stn_lr=args.pop("stn_lr"))
        if "snapshot" in args:
            args["snapshot"] = snapshot_attention(test.images[: args["snapshot"]], "theta")
        return fit(model, train, test, seed=seed, device=device, progress=progress, **args)


_RESNET = {"depth": 10, "width": 16, "stem_stride": 2}
_PHOTOS_FIT = ("fit", {"epochs": 6, "lr": 3e-3})

#: name -> recipe of every shipped model (the manifest's order); trained at seed 0
RECIPES: dict[str, Recipe] = {
    "stcnn_rts": Recipe(
        "ST-CNN (heat-map transformer + TinyCNN), RTS digits",
        ("01_spatial_transformer",),
        ("STCNN.for_rts", {}),
        "RTS",
        ("fit", {"epochs": 30, "stn_lr": 1e-3, "snapshot": 16}),
        ("transform", "sampled_iou"),
    ),
    "tinycnn_rts": Recipe(
        "TinyCNN alone, RTS digits",
        ("01_spatial_transformer",),
        ("TinyCNN", {"image_size": [42, 42]}),
        "RTS",
        ("fit", {"epochs": 30, "lr": 3e-3}),
    ),
    "stcnn_upright": Recipe(
        "two-stage transformer that turns digits upright, RTS digits",
        ("01_spatial_transformer",),
        ("STCNN.for_upright", {"image_size": [42, 42]}),
        "RTS",
        ("fit_upright", {"pre_epochs": 14, "stn_epochs": 9, "joint_epochs": 2}),
        ("transform",),
    ),
    "stcnn_clutter": Recipe(
        "ST-CNN (attention transform), cluttered MNIST",
        ("01_spatial_transformer",),
        ("STCNN.for_clutter", {}),
        "cluttered",
        ("fit", {"epochs": 20, "stn_lr": 1e-3, "snapshot": 16}),
        ("sampled_iou",),
    ),
    "resnet10_plain": Recipe(
        "ResNet-10, digits on photos",
        ("02_squeeze_excitation", "03_cbam"),
        ("small_resnet", {**_RESNET, "attention": None}),
        "photos",
        _PHOTOS_FIT,
    ),
    "resnet10_se": Recipe(
        "ResNet-10 + SE, digits on photos",
        ("02_squeeze_excitation", "03_cbam"),
        ("small_resnet", {**_RESNET, "attention": "se"}),
        "photos",
        _PHOTOS_FIT,
        ("class_specificity",),
    ),
    # the official code's batch norm after the spatial convolution, a 3 x 3 kernel for these
    # 4 x 4 to 32 x 32 maps, r = 4 (r = 16 leaves one hidden unit in a 16-channel stage):
    # the variant whose maps held the most mass on the digit at this budget in
    # benchmarks/bench_cbam_maps.py (before: 3 x 3, no batch norm, r = 16)
    "resnet10_cbam": Recipe(
        "ResNet-10 + CBAM (3x3 spatial gate with batch norm, r = 4), digits on photos",
        ("03_cbam",),
        (
            "small_resnet",
            {
                **_RESNET,
                "attention": "cbam",
                "attention_kwargs": {
                    "spatial_kernel": 3,
                    "spatial_batch_norm": True,
                    "reduction": 4,
                },
            },
        ),
        "photos",
        _PHOTOS_FIT,
        ("cbam_maps",),
    ),
    "resnet10_nonlocal": Recipe(
        "ResNet-10 + non-local block, digits on photos",
        ("05_self_attention",),
        ("small_resnet", {**_RESNET, "attention": "nonlocal"}),
        "photos",
        _PHOTOS_FIT,
        ("attention_on_object",),
    ),
}

# the small ViTs: an 8 x 8 grid of tokens over the 64 x 64 photos (stride 8) from a
# convolutional stem, a class token, 4 blocks, new training photos every epoch. Measured
# here (seed 0, 2000 test images): a linear patch projection stayed at 25% test accuracy
# after 15 epochs on 10,000 fixed images; the conv stem reached 85.5% (20 epochs, train
# 99.6%: memorised) and 91.2% on 20,000 fixed images (10 epochs)
_VIT = {"image_size": 64, "patch_size": 8, "dim": 96, "depth": 4, "heads": 4, "stem": "conv"}
_VIT_FIT = ("fit", {"epochs": 40, "lr": 2e-3})
RECIPES["vit_small"] = Recipe(
    "small ViT (conv stem, class token, 4 blocks), digits on photos",
    ("06_which_map",),
    ("small_vit", {**_VIT}),
    "photos",
    _VIT_FIT,
    ("attention_maps",),
    fresh=True,
)
RECIPES["vit_small_reg"] = Recipe(
    "small ViT with 4 registers, digits on photos",
    ("05_self_attention", "06_which_map"),
    ("small_vit", {**_VIT, "registers": 4}),
    "photos",
    _VIT_FIT,
    ("attention_maps",),
    fresh=True,
)

#: recipes the benchmarks measure that ship no model
EXPERIMENTS: dict[str, Recipe] = {
    # rotations of +-90 degrees: a self-supervised rotation-consistency loss, longer phase 2
    "stcnn_upright_r": RECIPES["stcnn_upright"].variant(
        title="two-stage transformer that turns digits upright, R digits (+-90 degrees)",
        notebooks=(),
        model={"image_size": [28, 28], "consistency": 1.0},
        train={"stn_epochs": 14},
        data="R",
        scores=("transform",),
    ),
}

#: distortion -> the two-stage recipe for it (``STCNN.for_upright`` trained by ``fit_upright``)
UPRIGHT: dict[str, Recipe] = {
    "RTS": RECIPES["stcnn_upright"],
    "R": EXPERIMENTS["stcnn_upright_r"],
}


def names() -> list[str]:
    """The shipped models' names, in the manifest's order."""
    return list(RECIPES)


def get(name: str, *, experiments: bool = True) -> Recipe:
    """The recipe ``name``: a shipped model's, or an experiment's (:data:`EXPERIMENTS`;
    ``experiments=False`` accepts shipped models only)."""
    if name in RECIPES:
        return RECIPES[name]
    if experiments and name in EXPERIMENTS:
        return EXPERIMENTS[name]
    raise KeyError(f"no shipped model {name!r}; the shipped models are {', '.join(RECIPES)}")
