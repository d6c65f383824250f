"""Does the transformer turn digits upright? The two-stage recipe against for_rts().

Each recipe is trained from scratch with 3 seeds on fresh distortions of the same 4,000
training digits every epoch, and tested on the same 1,000 held-out digits.
``transform_agreement`` compares the theta each test digit got with the transform that
would undo its distortion: the correlation of rotations, zooms and translations (1: the
transformer undoes that part image by image), and the mean rotation applied against the
mean rotation needed.

- ``STCNN.for_upright()`` trained by ``fit_upright`` (``UPRIGHT_RECIPES``): classifier
  first on nearly upright digits, then the transformer with the classifier frozen, then a
  short joint fine-tune; on RTS and on R (rotations of ±90°);
- ``STCNN.for_rts()`` trained jointly from the start (30 epochs), the comparison.
"""

from __future__ import annotations

import statistics

import torch
from _common import Contention

import attnviz
from attnviz.data import distorted_mnist
from attnviz.metrics import transform_agreement
from attnviz.models import STCNN
from attnviz.train import UPRIGHT_RECIPES, fit, fit_upright, stn_param_groups

SEEDS = (0, 1, 2)


def _measure(model, kind: str, seconds: float, seed: int) -> dict:
    test = distorted_mnist(kind, "test", seed=0)
    with torch.no_grad(), attnviz.capture(model) as rec:
        logits = model(test.images)
    theta = [r for r in rec.values() if r.kind == "transform"][-1].theta
    agree = transform_agreement(theta, test.transforms)
    acc = (logits.argmax(1) == test.labels).float().mean().item()
    return {"kind": kind, "seed": seed, "test_acc": acc, "train_seconds": seconds, **agree}


def upright(kind: str, seed: int, quick: bool) -> dict:
    recipe = UPRIGHT_RECIPES[kind]
    torch.manual_seed(seed)
    model = STCNN.for_upright(**recipe["model"])
    epochs = {k: 1 for k in recipe["fit"]} if quick else recipe["fit"]
    h = fit_upright(
        model,
        lambda e: distorted_mnist(kind, "train", seed=1000 + e),
        seed=seed,
        progress=False,
        **epochs,
    )
    return _measure(model.eval(), kind, h.train_seconds, seed)


def for_rts(seed: int, quick: bool) -> dict:
    torch.manual_seed(seed)
    model = STCNN.for_rts()
    h = fit(
        model,
        lambda e: distorted_mnist("RTS", "train", seed=1000 + e),
        None,
        epochs=1 if quick else 30,
        param_groups=stn_param_groups(model, stn_lr=1e-3),
        seed=seed,
        progress=False,
    )
    return _measure(model.eval(), "RTS", h.train_seconds, seed)


def _row(name: str, runs: list[dict]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def each(key: str, fmt: str) -> str:
        return " / ".join(format(r[key], fmt) for r in runs)

    return (
        f"| {name} | {runs[0]['kind']} | {med('test_acc'):.2%} ({each('test_acc', '.1%')}) | "
        f"{med('rotation_corr'):.3f} ({each('rotation_corr', '.2f')}) | "
        f"{med('zoom_corr'):.3f} | {med('translation_corr'):.3f} | "
        f"{med('rotation_deg'):.1f} / {med('ideal_rotation_deg'):.1f} | "
        f"{med('train_seconds'):.1f} ({each('train_seconds', '.0f')}) |"
    )


def run(quick: bool = False) -> dict:
    meter = Contention()
    seeds = SEEDS[:1] if quick else SEEDS
    rows = {
        "two-stage (STCNN.for_upright + fit_upright)": [upright("RTS", s, quick) for s in seeds],
        "two-stage, R recipe": [upright("R", s, quick) for s in seeds],
        "heat-map head (STCNN.for_rts, joint)": [for_rts(s, quick) for s in seeds],
    }
    table = [
        "| recipe | data | test accuracy, median (each seed) | rotation r (each seed) | "
        "zoom r | translation r | mean rotation applied / needed (deg) | "
        "train seconds, median (each) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    table += [_row(name, runs) for name, runs in rows.items()]
    return {
        "title": "Spatial transformers that turn digits upright (3 seeds)",
        "table": "\n".join(table),
        "rows": rows,
        "notes": [
            f"Medians over seeds {', '.join(map(str, seeds))}; 4,000 training digits (fresh "
            "distortions each epoch), 1,000 test digits; seconds are training time only. "
            "Zoom and translation r mean nothing on R (nothing to undo there). "
            f"{torch.get_num_threads()} torch threads. " + meter.note()
        ],
    }
