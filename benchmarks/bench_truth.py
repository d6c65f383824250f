"""Which map tells the truth: every explanation method of every shipped attention model
scored on the same test images, and what each method costs.

The shipped models (two small ViTs, ResNet-10 with CBAM, SE and a non-local block),
the first ``IMAGES`` images of the shipped test split (digits on photos, their masks the ground
truth), blocks and the best head chosen on 256 training images. Every score of
:func:`attnviz.metrics.score_methods` with its 95% bootstrap interval, the centre and
random baselines beside each model's methods. The whole table is timed (target: at most
5 minutes on 2 cores), and each method's cost per image as a ratio to one forward pass of
its model (the record-based methods share one captured forward; Grad-CAM and the
gradient-weighted relevance need a backward).
"""

from __future__ import annotations

import time

import torch

from attnviz import attribution, shipped
from attnviz.data import digits_on_photos

IMAGES = 500
#: the scores the "best method" table reports
WINNERS = ("pointing", "pointing_tol", "energy", "jaccard", "deletion", "positive")
BACKWARD = {m.title.split(" (")[0] for m in attribution.METHODS.values() if m.backward}


def run(quick: bool = False) -> dict:
    n = 32 if quick else IMAGES
    test = shipped.test_data("vit_small")
    calibration = digits_on_photos("train", n=64 if quick else 256, seed=0)
    models = {name: shipped.load(key) for name, key in shipped.COMPARED.items()}
    for model in models.values():  # first calls (grad-cam's set-up, kernels) are not the cost
        attribution.explain_maps(model, test.images[:4], test.labels[:4])
    start = time.perf_counter()
    c = attribution.compare(
        models,
        test.images[:n],
        test.labels[:n],
        test.masks[:n],
        calibration=(calibration.images, calibration.masks),
        fractions=(0, 0.5, 1) if quick else None,
    )
    seconds = time.perf_counter() - start
    cost = ["| model | method | cost / forward | needs a backward |", "|---|---|---:|---|"]
    for model, per in c.cost.items():
        for method, ratio in per.items():
            back = "yes" if method.split(" (")[0] in BACKWARD else "no"
            cost.append(f"| {model} | {method} | {ratio:.1f}x | {back} |")
    wins = c.winners_table(
        ("pointing", "pointing_tol", "energy", "jaccard", "deletion", "positive")
    )
    table = "\n\n".join(
        [
            f"{n} test images, {len(models)} models: the whole table in {seconds:.0f} s "
            f"(target 300 s).",
            c.table(),
            "Best method per model and score (baselines excluded):",
            wins,
            "Cost per image, as a ratio to one forward of the same model:",
            "\n".join(cost),
        ]
    )
    return {
        "title": "Which map tells the truth: methods scored side by side",
        "table": table,
        "rows": {
            "seconds": seconds,
            "images": n,
            "summary": {m: s.summary for m, s in c.scores.items()},
            "cost": c.cost,
            "accuracy": c.accuracy,
            "choices": {m: {k: str(v) for k, v in ch.items()} for m, ch in c.choices.items()},
            "threads": torch.get_num_threads(),
        },
    }
