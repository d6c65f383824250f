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
vit_small          06        small ViT (conv stem, class token), digits on photos
vit_small_reg      05, 06    the same with 4 register tokens
=================  ========  ===================================================

The files live in ``assets/models/`` (inside the package as ``attnviz/_models`` in a
wheel): ``<name>.pt`` and ``manifest.json``, which records for every model the recipe
(model constructor, training function and their arguments), the data and its seed, the
epochs, the torch version and device it was trained with, its SHA-256, the test accuracy
and the attention scores the notebooks quote, all measured on the CPU from the shipped
float16 weights (and the float32 accuracy before rounding, to show what float16 costs).

    import attnviz.shipped as shipped
    model = shipped.load("resnet10_se")         # checksum checked, weights_only loading
    model, history = shipped.obtain("resnet10_se", train=TRAIN, quick=QUICK)  # a notebook's cell
    shipped.entry("resnet10_se")["test_accuracy"]
    shipped.verify("resnet10_se")               # re-measures accuracy and scores

How each model is built and trained lives in :mod:`attnviz.recipes`; this module keeps
the files, the manifest, their verification and the summary table.

Regenerate every model from scratch (CPU or GPU; on a 2-core CPU about 25 minutes for
the CNNs and 26 to 28 minutes per ViT)::

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
import torch.nn.functional as F
from torch import nn

from . import storage
from ._resources import models_dir, version
from .analysis import channel_stats, spatial_maps
from .attribution import explain_maps
from .capture import capture
from .metrics import (
    attention_on_object,
    sampled_box_iou,
    score_maps,
    score_methods,
    transform_agreement,
)
from .recipes import RECIPES, Recipe, get, names
from .train import History, PhasedHistory, logits, pick_device, save_checkpoint

__all__ = [
    "COMPARED",
    "RECIPES",
    "Recipe",
    "best_cbam_block",
    "build",
    "entry",
    "history",
    "load",
    "manifest",
    "names",
    "obtain",
    "regenerate",
    "summary",
    "test_data",
    "verify",
]

#: the shipped attention models notebook 06 and ``benchmarks/bench_truth.py`` explain
#: side by side on the same test split (all trained on digits on photos, seed 0)
COMPARED = {
    "ViT": "vit_small",
    "ViT + registers": "vit_small_reg",
    "ResNet-10 + CBAM": "resnet10_cbam",
    "ResNet-10 + SE": "resnet10_se",
    "ResNet-10 + non-local": "resnet10_nonlocal",
}

FORMAT = "attnviz-models-1"
MANIFEST = "manifest.json"


def _shipped(name: str) -> Recipe:
    return get(name, experiments=False)


def build(name: str) -> nn.Module:
    """The untrained model of recipe ``name`` (seeded as the recipe seeds it)."""
    return _shipped(name).build()


def test_data(name: str, *, train: bool = False, quick: bool = False, seed: int = 0) -> Any:
    """The test split that goes with :func:`obtain` called with the same arguments.

    By default the split model ``name`` was scored on (its recipe's, seed 0), generated
    from data attnviz ships; with ``train=True`` the split of data seed ``seed``, smaller
    with ``quick=True`` (what the model trained there was tested on).
    """
    recipe = _shipped(name)
    if not train:
        return recipe.test_data()
    return (recipe.quick() if quick else recipe).test_data(seed)


def obtain(
    name: str,
    *,
    train: bool = False,
    quick: bool = False,
    seed: int = 0,
    data_seed: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[nn.Module, Any]:
    """Shipped model ``name`` the way a notebook wants it: ``(model, history)``, in eval mode.

    ``train=False`` opens the shipped file (checksum checked, ``weights_only`` loading) and
    its saved history; ``quick`` does not apply. ``train=True`` trains by the recipe here,
    with ``seed`` (model initialisation and training) and ``data_seed`` (default ``seed``);
    ``quick=True`` runs the recipe's one-epoch smoke test (:meth:`Recipe.quick`). Either
    way the recipe is :data:`attnviz.recipes.RECIPES`'s, the one the file was trained by.

    Args:
        name: one of :func:`names`.
        train: train here instead of opening the shipped file.
        quick: with ``train``: one epoch, fewer images (CI, a first look).
        seed: with ``train``: the seed (the shipped models were trained with 0).
        data_seed: with ``train``: the data's seed, when it should differ from ``seed``.
        device: where the model runs (``None``: CUDA, then MPS, then the CPU).
        progress: with ``train``: a tqdm progress bar.

    Raises:
        KeyError: ``name`` is not a shipped model.
        ValueError: ``seed`` other than the shipped one without ``train=True``.
    """
    recipe = _shipped(name)
    if not train:
        if seed != recipe.seed or data_seed not in (None, recipe.seed):
            raise ValueError(
                f"the shipped {name} was trained with seed {recipe.seed}; to get seed {seed} "
                "pass train=True (trains it here by the same recipe)"
            )
        return load(name, device=device), history(name)
    recipe = recipe.quick() if quick else recipe
    model = recipe.build(seed)
    hist = recipe.fit(
        model, seed=seed, data_seed=data_seed, device=pick_device(device), progress=progress
    )
    return model.eval(), hist


# -- scores -------------------------------------------------------------------------------------
def _scores(recipe: Recipe, model: nn.Module, test: Any) -> dict[str, Any]:
    """The attention figures the notebooks quote, measured on the test split (CPU)."""
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
        elif kind == "attention_maps":
            out["attention_maps"] = _attention_scores(model, test)
        else:  # pragma: no cover - a recipe names a score this module does not know
            raise ValueError(f"unknown score {kind!r}")
    return out


#: the class-token maps a shipped transformer's manifest entry scores (no backward but one)
ATTENTION_MAPS = ("attention_mean", "rollout", "relevance")


def _attention_scores(model: nn.Module, test: Any) -> dict[str, dict[str, float]]:
    """Pointing game (exact, ±4 px) and energy in mask of a transformer's class-token
    maps and the centre baseline on the test split (:mod:`attnviz.attribution`)."""
    found = explain_maps(model, test.images, test.labels, methods=ATTENTION_MAPS)
    summary = score_methods(found, test.masks, tolerance=4).summary
    keys = ("pointing", "pointing_tol", "energy", "jaccard")
    return {m: {k: row[k][0] for k in keys} for m, row in summary.items()}


def _accuracy(model: nn.Module, test: Any) -> dict[str, Any]:
    """Test accuracy, loss and the smallest gap between the top two logits (CPU)."""
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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}): restore it (git checkout) or regenerate the "
            "models with `attnviz models --regenerate`"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an attnviz models manifest ({FORMAT})")
    if not isinstance(data.get("models"), dict):
        raise ValueError(f'{path} has no "models" table: it is damaged; restore or regenerate it')
    return data


def entry(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Manifest entry of model ``name``: recipe, accuracy, scores, checksum, ..."""
    _shipped(name)
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
    missing = [k for k in ("file", "sha256") if not isinstance(info.get(k), str)]
    if missing:
        raise ValueError(
            f"{_folder(folder) / MANIFEST}: the entry of {name!r} lacks {' and '.join(missing)}"
            " (without its checksum the file cannot be trusted); restore the manifest or "
            f"regenerate it: attnviz models --regenerate --only {name}"
        )
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
    path = _checked_file(name, folder)
    model = build(name)
    storage.read_checkpoint(path, model)
    return model.to(pick_device(device)).eval()


def history(name: str, folder: str | os.PathLike | None = None) -> Any:
    """The training history saved with model ``name``: a :class:`~attnviz.train.History`
    (epochs and theta snapshots), or a :class:`~attnviz.train.PhasedHistory` for
    ``stcnn_upright``."""
    state = storage.read_checkpoint(_checked_file(name, folder))
    phases = state.get("meta", {}).get("phases")
    if phases:
        return PhasedHistory({k: History.from_dict(v) for k, v in phases.items()})
    return History.from_dict(state["history"]) if state.get("history") is not None else None


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
    todo = list(only) if only else names()
    for name in todo:
        _shipped(name)
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
        hist = recipe.fit(model, test, device=str(dev), progress=False)
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
        storage.read_checkpoint(path, shipped)
        shipped.eval()
        measured = _accuracy(shipped, test)
        data["models"][name] = {
            "title": recipe.title,
            "notebooks": list(recipe.notebooks),
            "file": path.name,
            "sha256": _sha256(path),
            "bytes": path.stat().st_size,
            "dtype": "float16",
            "recipe": recipe.describe(),
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
    measured["scores"] = _scores(_shipped(name), model, test)
    return Verification(name, info, measured)


def _most_on_digit(maps: Mapping[str, Mapping[str, float]]) -> str:
    """Of CBAM blocks' scores, the block whose map holds the most of its mass on the digit."""
    return max(maps, key=lambda block: maps[block]["energy"])


def best_cbam_block(name: str = "resnet10_cbam", folder: str | os.PathLike | None = None) -> str:
    """The CBAM block of shipped model ``name`` whose spatial map holds the most of its mass
    in the digit's box (its energy in the manifest): the block notebook 03 opens on, the
    README picture shows and :func:`summary` quotes."""
    return _most_on_digit(entry(name, folder)["scores"]["cbam_maps"])


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
        block = _most_on_digit(scores["cbam_maps"])
        row = scores["cbam_maps"][block]
        parts.append(
            f"Ms of {block} points at the digit in {row['pointing_game']:.0%} "
            f"({row['pointing_game_4px']:.0%} within 4 px), {row['energy']:.2f} of its mass "
            f"in the digit's box, mask IoU {row['mask_iou']:.2f}"
        )
    if "on_object_ratio" in scores:
        parts.append(
            f"attention from the digit on the digit {scores['on_object']:.0%}, "
            f"{scores['on_object_ratio']:.2f}x its area"
        )
    if "attention_maps" in scores:
        maps = {k: v for k, v in scores["attention_maps"].items() if "baseline" not in k}
        best = max(maps, key=lambda m: maps[m]["energy"])
        row, centre = maps[best], scores["attention_maps"]["centre baseline"]
        parts.append(
            f"{best} points at the digit in {row['pointing']:.0%} ({row['pointing_tol']:.0%} "
            f"within 4 px; centre baseline {centre['pointing']:.0%}), {row['energy']:.2f} of "
            f"its mass on the digit (centre baseline {centre['energy']:.2f})"
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
