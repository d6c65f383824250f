"""Trained models that ship with attnviz: open a notebook on trained attention in seconds.

The models behind the notebooks' stories, trained by the notebooks' own full-mode recipes
(seed 0) and saved as float16 state dicts with their training history:

=================  ========  ===================================================
name               notebook  model
=================  ========  ===================================================
stcnn_rts          01        ST-CNN, heat-map transformer, RTS digits (30 epochs)
tinycnn_rts        01        its classifier alone, the baseline (30 epochs)
stcnn_upright      01        two-stage transformer that turns digits upright
stcnn_clutter      01        ST-CNN on cluttered MNIST, attention transform
resnet10_plain     02, 03    ResNet-10 (width 16) on digits on photos (6 epochs)
resnet10_se        02, 03    the same with SE blocks
resnet10_cbam      03        the same with CBAM (3 x 3 spatial gate)
resnet10_nonlocal  05        the same with a non-local block after stage 3
=================  ========  ===================================================

The files live in ``assets/models/`` (inside the package as ``attnviz/_models`` in a
wheel): ``<name>.pt`` and ``manifest.json``, which records for every model the recipe
(model constructor, training function and their arguments), the data and its seed, the
epochs, the torch version and device it was trained with, its SHA-256, the test accuracy
and the attention scores the notebooks quote, all measured on the CPU from the shipped
float16 weights (and the float32 accuracy before rounding, to show what float16 costs).

    import attnviz.shipped as shipped
    model = shipped.load("resnet10_se")         # checksum checked, weights_only loading
    shipped.entry("resnet10_se")["test_accuracy"]
    shipped.verify("resnet10_se")               # re-measures accuracy and scores

Regenerate every model from scratch (CPU or GPU; about 15 minutes on a 2-core CPU)::

    attnviz models --regenerate [--only NAME ...] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import storage
from ._resources import models_dir, version

__all__ = [
    "RECIPES",
    "Recipe",
    "entry",
    "history",
    "load",
    "manifest",
    "names",
    "regenerate",
    "summary",
    "test_data",
    "verify",
]

FORMAT = "attnviz-models-1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Recipe:
    """How one shipped model is built, trained and scored (all recorded in the manifest).

    Attributes:
        title: one line for tables.
        notebooks: the notebooks that open on it.
        model: (constructor, keyword arguments), e.g. ``("small_resnet", {"depth": 10})``;
            ``torch.manual_seed(seed)`` runs just before it.
        data: ``"RTS"``, ``"cluttered"`` (fresh distortions every epoch, seed = epoch; test
            split seed 0) or ``"photos"`` (digits on photos, 10,000 train / 2,000 test,
            seed 0).
        train: ``"fit"`` or ``"fit_upright"`` (from :mod:`attnviz.train`), with ``fit``
            arguments; ``stn_lr`` means ``param_groups=stn_param_groups(model, stn_lr=...)``
            and ``snapshot: N`` keeps theta of the first N test images after every epoch.
        scores: what to measure on the test split besides accuracy (see :func:`_scores`).
    """

    title: str
    notebooks: tuple[str, ...]
    model: tuple[str, dict[str, Any]]
    data: str
    train: tuple[str, dict[str, Any]]
    scores: tuple[str, ...] = ()
    seed: int = 0

    @property
    def epochs(self) -> int:
        kind, kwargs = self.train
        if kind == "fit_upright":
            return sum(int(kwargs[k]) for k in ("pre_epochs", "stn_epochs", "joint_epochs"))
        return int(kwargs["epochs"])


_RESNET = {"depth": 10, "width": 16, "stem_stride": 2}
_PHOTOS_FIT = ("fit", {"epochs": 6, "lr": 3e-3})

#: name -> recipe: exactly the notebooks' full-mode training at SEED = 0
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
    "resnet10_cbam": Recipe(
        "ResNet-10 + CBAM (3x3 spatial gate), digits on photos",
        ("03_cbam",),
        (
            "small_resnet",
            {**_RESNET, "attention": "cbam", "attention_kwargs": {"spatial_kernel": 3}},
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


def names() -> list[str]:
    """The shipped models' names, in the manifest's order."""
    return list(RECIPES)


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"no shipped model {name!r}; the shipped models are {', '.join(RECIPES)}")
    return RECIPES[name]


# -- building, data ---------------------------------------------------------------------------
def build(name: str) -> nn.Module:
    """The untrained model of recipe ``name`` (seeded as the recipe seeds it)."""
    from .models import STCNN, TinyCNN, small_resnet

    recipe = _recipe(name)
    constructors: dict[str, Callable[..., nn.Module]] = {
        "STCNN.for_rts": STCNN.for_rts,
        "STCNN.for_clutter": STCNN.for_clutter,
        "STCNN.for_upright": STCNN.for_upright,
        "TinyCNN": TinyCNN,
        "small_resnet": small_resnet,
    }
    make, kwargs = recipe.model
    torch.manual_seed(recipe.seed)
    return constructors[make](
        **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    )


def test_data(name: str) -> Any:
    """The test split model ``name`` was scored on (generated from data attnviz ships)."""
    from .data import digits_on_photos, distorted_mnist

    recipe = _recipe(name)
    if recipe.data == "photos":
        return digits_on_photos("test", n=2000, seed=recipe.seed)
    return distorted_mnist(recipe.data, "test", seed=recipe.seed)


def _train_data(recipe: Recipe) -> Any:
    from .data import digits_on_photos, distorted_mnist

    if recipe.data == "photos":
        return digits_on_photos("train", n=10000, seed=recipe.seed)
    seed0 = recipe.seed * 1000  # as the notebooks: SEED * 1000 + epoch

    def fresh(epoch: int) -> Any:
        return distorted_mnist(recipe.data, "train", seed=seed0 + epoch)

    return fresh


def _train(recipe: Recipe, model: nn.Module, test: Any, device: str | None) -> Any:
    from .train import fit, fit_upright, snapshot_attention, stn_param_groups

    kind, kwargs = recipe.train
    train = _train_data(recipe)
    args = dict(kwargs)
    if kind == "fit_upright":
        return fit_upright(
            model, train, test, seed=recipe.seed, device=device, progress=False, **args
        )
    if "stn_lr" in args:
        args["param_groups"] = stn_param_groups(model, stn_lr=args.pop("stn_lr"))
    if "snapshot" in args:
        args["snapshot"] = snapshot_attention(test.images[: args["snapshot"]], "theta")
    return fit(model, train, test, seed=recipe.seed, device=device, progress=False, **args)


# -- scores -------------------------------------------------------------------------------------
def _scores(recipe: Recipe, model: nn.Module, test: Any) -> dict[str, Any]:
    """The attention figures the notebooks quote, measured on the test split (CPU)."""
    from .analysis import channel_stats, spatial_maps
    from .capture import capture
    from .metrics import attention_on_object, sampled_box_iou, score_maps, transform_agreement

    out: dict[str, Any] = {}
    for kind in recipe.scores:
        if kind == "transform":
            with torch.no_grad(), capture(model) as rec:
                model(test.images)
            theta = rec["stn"].theta  # type: ignore[attr-defined]
            agreement = transform_agreement(theta, test.transforms)
            out.update({k: float(v) for k, v in agreement.items()})
        elif kind == "sampled_iou":
            out["sampled_iou"] = float(sampled_box_iou(model, test.images, test.boxes).mean())
        elif kind == "class_specificity":
            stats = channel_stats(model, test.images, test.labels)
            out["class_specificity"] = {k: float(v) for k, v in stats.specificity().items()}
        elif kind == "cbam_maps":
            maps = spatial_maps(model, test.images)
            _, scores = score_maps(maps, test.boxes, test.masks, tolerance=(0, 4))
            out["cbam_maps"] = {
                block: {k: float(v) for k, v in row.items() if k != "n"}
                for block, row in scores.items()
            }
        elif kind == "attention_on_object":
            score = attention_on_object(model, test.images, test.masks)
            ok = ~torch.isnan(score["on_object"])
            on, area = score["on_object"][ok].mean().item(), score["area"][ok].mean().item()
            out.update(
                on_object=on,
                object_area=area,
                on_object_ratio=on / area,
                images_with_object_queries=int(ok.sum()),
            )
        else:  # pragma: no cover - a recipe names a score this module does not know
            raise ValueError(f"unknown score {kind!r}")
    return out


def _accuracy(model: nn.Module, test: Any) -> dict[str, Any]:
    """Test accuracy, loss and the smallest gap between the top two logits (CPU)."""
    import torch.nn.functional as F

    from .train import logits

    out = logits(model, test, device="cpu")
    labels = torch.as_tensor(test.labels)
    top2 = out.topk(2, dim=1).values
    return {
        "test_accuracy": float((out.argmax(1) == labels).double().mean()),
        "test_correct": int((out.argmax(1) == labels).sum()),
        "test_images": len(labels),
        "test_loss": float(F.cross_entropy(out, labels)),
        "smallest_top2_gap": float((top2[:, 0] - top2[:, 1]).min()),
    }


# -- files ----------------------------------------------------------------------------------------
def _folder(folder: str | os.PathLike | None) -> Path:
    return Path(folder) if folder is not None else models_dir()


def manifest(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest (``manifest.json``) of the shipped models, or of ``folder``'s."""
    path = _folder(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {path.parent}: the shipped models are missing from this "
            "installation. Regenerate them with `attnviz models --regenerate --out DIR` and "
            "pass folder=DIR"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an attnviz models manifest ({FORMAT})")
    return data


def entry(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Manifest entry of model ``name``: recipe, accuracy, scores, checksum, ..."""
    _recipe(name)
    models = manifest(folder)["models"]
    if name not in models:
        raise KeyError(
            f"{name!r} is not in the manifest yet: `attnviz models --regenerate "
            f"--only {name}` trains it"
        )
    return models[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_file(name: str, folder: str | os.PathLike | None) -> Path:
    info = entry(name, folder)
    path = _folder(folder) / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: `attnviz models --regenerate --only {name}`")
    digest = _sha256(path)
    if digest != info["sha256"]:
        raise ValueError(
            f"{path} does not match its manifest (SHA-256 {digest[:12]}..., manifest "
            f"{info['sha256'][:12]}...): the file was changed or damaged. Restore it (git "
            f"checkout) or regenerate it: attnviz models --regenerate --only {name}"
        )
    return path


def load(
    name: str,
    *,
    device: str | torch.device | None = "cpu",
    folder: str | os.PathLike | None = None,
) -> nn.Module:
    """Shipped model ``name``, trained, in eval mode, float32, on ``device``.

    The file's SHA-256 is checked against the manifest and it is read with
    ``torch.load(weights_only=True)``; every key and shape must fit (nothing is loaded
    otherwise). ``device=None`` picks CUDA, then MPS, then the CPU.
    """
    from .train import load_checkpoint, pick_device

    path = _checked_file(name, folder)
    model = build(name)
    load_checkpoint(path, model)
    return model.to(pick_device(device)).eval()


def history(name: str, folder: str | os.PathLike | None = None) -> Any:
    """The training history saved with model ``name``: a :class:`~attnviz.train.History`
    (epochs and theta snapshots), or a :class:`~attnviz.train.PhasedHistory` for
    ``stcnn_upright``."""
    from .train import History, PhasedHistory, load_checkpoint

    state = load_checkpoint(_checked_file(name, folder))
    phases = state.get("meta", {}).get("phases")
    if phases:
        return PhasedHistory({k: History.from_dict(v) for k, v in phases.items()})
    return state["history"]


# -- regenerate -----------------------------------------------------------------------------------
def regenerate(
    only: Sequence[str] | None = None,
    *,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the shipped models from scratch, write them and their manifest entries.

    Each model is trained by its recipe on ``device`` (default: CUDA, MPS or CPU), saved as
    a float16 state dict with its history (atomically), then loaded back and measured on
    the CPU: accuracy and scores in the manifest are those of the file. The manifest is
    rewritten after every model, so an interrupted run keeps what it finished.

    Returns the manifest.
    """
    from .train import PhasedHistory, load_checkpoint, pick_device, save_checkpoint

    todo = list(only) if only else names()
    for name in todo:
        _recipe(name)
    folder = _folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        data = manifest(folder)
    except FileNotFoundError:
        data = {"format": FORMAT, "models": {}}
    dev = pick_device(device)
    for name in todo:
        recipe = RECIPES[name]
        test = test_data(name)
        model = build(name)
        start = time.time()
        hist = _train(recipe, model, test, str(dev))
        seconds = time.time() - start
        model = model.cpu().eval()
        float32 = _accuracy(model, test)
        path = folder / f"{name}.pt"
        if isinstance(hist, PhasedHistory):
            phases = {k: h.to_dict() for k, h in hist.phases.items()}
            save_checkpoint(path, model.half(), phases=phases)
        else:
            save_checkpoint(path, model.half(), history=hist)
        shipped = build(name)
        load_checkpoint(path, shipped)
        shipped.eval()
        measured = _accuracy(shipped, test)
        kind, kwargs = recipe.train
        data["models"][name] = {
            "title": recipe.title,
            "notebooks": list(recipe.notebooks),
            "file": path.name,
            "sha256": _sha256(path),
            "bytes": path.stat().st_size,
            "dtype": "float16",
            "recipe": {
                "model": {
                    "constructor": f"attnviz.models.{recipe.model[0]}",
                    "arguments": recipe.model[1],
                },
                "train": {"function": f"attnviz.train.{kind}", "arguments": kwargs},
                "data": recipe.data,
                "seed": recipe.seed,
            },
            "data_seed": recipe.seed,
            "epochs": recipe.epochs,
            "train_seconds": round(seconds, 1),
            "trained_on": f"{dev.type} ({torch.get_num_threads()} CPU threads, "
            f"{platform.machine()})",
            "torch": torch.__version__,
            "attnviz": version(),
            "date": datetime.date.today().isoformat(),
            **measured,
            "test_accuracy_float32": float32["test_accuracy"],
            "scores": _scores(recipe, shipped, test),
        }
        data["models"] = {k: data["models"][k] for k in names() if k in data["models"]}
        data["command"] = "attnviz models --regenerate"
        storage.atomic_write_text(json.dumps(data, indent=1) + "\n", folder / MANIFEST)
        log(
            f"{name}: test accuracy {measured['test_accuracy']:.2%} (float32 "
            f"{float32['test_accuracy']:.2%}), {seconds:.0f} s on {dev.type}"
        )
    return data


# -- checking and quoting ---------------------------------------------------------------------
@dataclass
class Verification:
    """What :func:`verify` measured beside what the manifest says."""

    name: str
    manifest: dict[str, Any]
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_matches(self) -> bool:
        return self.measured["test_correct"] == self.manifest["test_correct"]


def verify(name: str, folder: str | os.PathLike | None = None) -> Verification:
    """Load model ``name`` (checksum checked) and re-measure its accuracy and scores on the
    CPU, on the test split it was scored on."""
    info = entry(name, folder)
    model = load(name, folder=folder)
    test = test_data(name)
    measured = _accuracy(model, test)
    measured["scores"] = _scores(_recipe(name), model, test)
    return Verification(name, info, measured)


def _headline(scores: Mapping[str, Any]) -> str:
    """The attention figures of a manifest entry, in words."""
    parts = []
    if "translation_corr" in scores:
        parts.append(
            f"undoes translation r {scores['translation_corr']:.2f}, zoom r "
            f"{scores['zoom_corr']:.2f}, rotation r {scores['rotation_corr']:.2f}"
        )
    if "sampled_iou" in scores:
        parts.append(f"sampled box IoU {scores['sampled_iou']:.2f}")
    if "class_specificity" in scores:
        last = list(scores["class_specificity"].items())[-1]
        parts.append(f"class specificity of {last[0]} {last[1]:.2f}")
    if "cbam_maps" in scores:
        block, row = list(scores["cbam_maps"].items())[-1]
        parts.append(
            f"Ms of {block} points at the digit in {row['pointing_game']:.0%} "
            f"({row['pointing_game_4px']:.0%} within 4 px)"
        )
    if "on_object_ratio" in scores:
        parts.append(
            f"attention from the digit on the digit {scores['on_object']:.0%}, "
            f"{scores['on_object_ratio']:.2f}x its area"
        )
    return "; ".join(parts) or "—"


def summary(models: Sequence[str] | None = None, folder: str | os.PathLike | None = None) -> str:
    """A Markdown table of shipped models from the manifest: accuracy, attention, training."""
    rows = [
        "| shipped model | test accuracy (float32 before rounding) | attention | epochs | "
        "trained |",
        "|---|---:|---|---:|---|",
    ]
    for name in models or names():
        e = entry(name, folder)
        rows.append(
            f"| `{name}`: {e['title']} | {e['test_accuracy']:.2%} "
            f"({e['test_accuracy_float32']:.2%}) | {_headline(e['scores'])} | {e['epochs']} | "
            f"{e['train_seconds']:.0f} s, "
            f"{e['trained_on']}, torch {e['torch']} |"
        )
    return "\n".join(rows)
