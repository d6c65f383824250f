"""Channel attention (SE) on digits-on-photos: accuracy, training time, extraction cost.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. A plain ResNet-10 and the same
network with an SE block (r = 4) on every residual branch (width 16, stem stride 2) train
on the same digits-on-photos split with the same budget and seed (Adam, lr 3e-3,
one-cycle, batch 64). Then the SE network's excitations s (eq. 3, every block) are
extracted for the whole test set, in batches of 256 under ``torch.no_grad()``, with one
``attnviz.capture(kinds="channel", dtype=torch.float16)`` per batch that keeps only the
weights: throughput against the plain forward of the same network, and the process's
resident memory (psutil RSS) over three repeated extractions, which should stay flat.
"""

from __future__ import annotations

import gc
import statistics
import time

import psutil
import torch
from _common import Contention

from attnviz import capture
from attnviz.data import digits_on_photos
from attnviz.models import small_resnet
from attnviz.train import fit

SEED = 0
BATCH = 256  # images per forward of the extraction
REPEATS = 3  # extractions over the test set for the memory check
MIB = 2**20


def _train(attention: str | None, train, test, epochs: int):
    torch.manual_seed(SEED)
    model = small_resnet(10, attention=attention, width=16, stem_stride=2)
    hist = fit(model, train, test, epochs=epochs, lr=3e-3, seed=SEED, progress=False, device="cpu")
    return model, hist


def _forward(model: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        for i in range(0, len(images), BATCH):
            model(images[i : i + BATCH])


def _extract(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every SE block's s for every image: block name -> N x C float16."""
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(images), BATCH):
            with capture(model, kinds="channel", dtype=torch.float16) as rec:
                model(images[i : i + BATCH])
            for name, r in rec.items():
                parts.setdefault(name, []).append(r.weights)
    return {name: torch.cat(p) for name, p in parts.items()}


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _throughput(model, images, rounds: int) -> dict:
    """Images/s of the plain and the hooked pass over ``images``, interleaved, median."""
    _forward(model, images)  # warm-up
    _extract(model, images)
    plain, hooked = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        _forward(model, images)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        _extract(model, images)
        hooked.append(time.perf_counter() - start)
    n = len(images)
    p, h = n / statistics.median(plain), n / statistics.median(hooked)
    return {"plain_images_per_s": p, "capture_images_per_s": h, "ratio": h / p}


def _memory(model, images) -> dict:
    """RSS before and after each of REPEATS extractions; only the latest weights are kept."""
    proc = psutil.Process()
    kept = _extract(model, images)
    gc.collect()
    before = proc.memory_info().rss
    after = []
    for _ in range(REPEATS):
        kept = _extract(model, images)
        gc.collect()
        after.append(proc.memory_info().rss)
    size = sum(t.numel() * t.element_size() for t in kept.values())
    return {
        "rss_before_mib": before / MIB,
        "rss_after_mib": [a / MIB for a in after],
        "rss_growth_mib": (after[-1] - before) / MIB,
        "kept_kib": size / 1024,
        "kept_shapes": {k: list(t.shape) for k, t in kept.items()},
        "kept_dtype": str(next(iter(kept.values())).dtype),
    }


def run(quick: bool = False) -> dict:
    contention = Contention()
    n_train, n_test, epochs = (500, 200, 1) if quick else (10000, 2000, 4)
    rounds = 2 if quick else 5
    train = digits_on_photos("train", n=n_train, seed=SEED)
    test = digits_on_photos("test", n=n_test, seed=SEED)
    _, h_plain = _train(None, train, test, epochs)
    se, h_se = _train("se", train, test, epochs)
    base = h_plain.train_seconds

    rows = []
    table = [
        "| model | epochs | train seconds | test accuracy | train time / plain |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, h in (("ResNet-10 (plain)", h_plain), ("ResNet-10 + SE (r = 4)", h_se)):
        acc, secs = h.final.test_acc, h.train_seconds
        table.append(f"| {name} | {h.final.epoch} | {secs:.1f} | {acc:.2%} | {secs / base:.2f} |")
        rows.append(
            {
                "model": name,
                "epochs": h.final.epoch,
                "train_seconds": secs,
                "test_acc": acc,
                "time_ratio": secs / base,
            }
        )

    hooks_before = _hooks(se)
    speed = _throughput(se, test.images, rounds)
    mem = _memory(se, test.images)
    hooks_after = _hooks(se)
    after = ", ".join(f"{a:.1f}" for a in mem["rss_after_mib"])
    table += [
        "",
        f"| SE network over the {n_test} test images, batches of {BATCH}, no_grad "
        "| images/s | capture / plain |",
        "|---|---:|---:|",
        f"| plain forward | {speed['plain_images_per_s']:.0f} | 1.00 |",
        f"| forward + capture of every SE block's s (float16, weights kept) "
        f"| {speed['capture_images_per_s']:.0f} | {speed['ratio']:.2f} |",
        "",
        f"| RSS before, MiB | RSS after each of {REPEATS} extractions, MiB | growth, MiB "
        "| kept weights, KiB |",
        "|---:|---:|---:|---:|",
        f"| {mem['rss_before_mib']:.1f} | {after} | {mem['rss_growth_mib']:+.1f} "
        f"| {mem['kept_kib']:.1f} |",
    ]
    channels = sum(s[1] for s in mem["kept_shapes"].values())
    notes = [
        f"Training: {n_train} train / {n_test} test images (64 x 64), {epochs} epoch(s), seed "
        f"{SEED}, Adam lr 3e-3 one-cycle, batch 64, CPU, torch threads "
        f"{torch.get_num_threads()}. Train seconds exclude evaluation. "
        "'train time / plain': SE's training seconds over the plain network's (1.00 = free).",
        "Extraction: images/s of one pass over the test set, median of "
        f"{rounds} interleaved passes each. 'capture / plain': the hooked pass's images/s "
        "over the plain pass's (1.00 = capture costs nothing; 0.50 = half the throughput). "
        "The hooked pass opens one attnviz.capture per batch and keeps only the weights.",
        f"Memory: RSS after one warm-up extraction, then after each of {REPEATS} more, each "
        f"replacing the kept weights ({len(mem['kept_shapes'])} blocks, {channels} weights "
        f"per image, {mem['kept_dtype']}); flat means the growth stays near zero, well "
        "below one extraction's kept weights times the repeats. Forward hooks on the model "
        f"before / after all extractions: {hooks_before} / {hooks_after}.",
    ]
    notes.append(contention.note())
    if quick:
        notes.append("Quick run: tiny budget, checks the plumbing; accuracies mean nothing.")
    return {
        "title": "Channel attention (SE) on digits-on-photos",
        "table": "\n".join(table),
        "rows": rows,
        "extraction": speed,
        "memory": mem,
        "hooks_left": hooks_after,
        "notes": notes,
    }
