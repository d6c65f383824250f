"""Channel attention (SE) on digits-on-photos: accuracy, training time, extraction cost.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. A plain ResNet-10 and the same
network with an SE block (r = 4) on every residual branch (width 16, stem stride 2) train
on the same digits-on-photos split with the same budget and seed (Adam, lr 3e-3,
one-cycle, batch 64). Then the SE network's excitations s (eq. 3, every block) are
extracted for the whole test set, in batches of 256 under ``torch.no_grad()``, with one
``attnviz.capture(kinds="channel", dtype=torch.float16)`` per batch that keeps only the
weights: throughput against the plain forward of the same network (paired passes), and
the process's resident memory (psutil RSS) over ten repeated extractions, which should
stay flat: no trend across the repeats (a leak grows with every one). RSS is read as it
is, and again after glibc's ``malloc_trim(0)`` hands freed heap back to the system: the
allocator keeps or returns the tens of MiB of a batch's freed activations as it likes,
which moves the first reading up and down by that much from one extraction to the next;
the second counts the memory still in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics

import psutil
import torch
from _common import Contention, paired_ratio, rotated_ms, training_table

from attnviz import capture, recipes

SEED = 0
BATCH = 256  # images per forward of the extraction
REPEATS = 10  # extractions over the test set for the memory check
MIB = 2**20


def _train(name: str, test, epochs: int, n_train: int):
    """The shipped recipe ``name`` (attnviz.recipes) with this benchmark's budget."""
    recipe = recipes.get(name).variant(train={"epochs": epochs}, n_train=n_train)
    model = recipe.build(SEED)
    hist = recipe.fit(model, test, seed=SEED, device="cpu", progress=False)
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
    """Images/s of the plain and the hooked pass over ``images``: ``rounds`` pairs after
    a warm-up, the order alternating; the ratio is the median of each pair's own ratio."""
    times = rotated_ms(
        [("plain", lambda: _forward(model, images)), ("hooked", lambda: _extract(model, images))],
        rounds,
    )
    plain, hooked = times["plain"], times["hooked"]
    n = len(images)
    pairs = [p / h for p, h in zip(plain, hooked)]  # hooked images/s over plain images/s
    return {
        "plain_images_per_s": 1000 * n / statistics.median(plain),
        "capture_images_per_s": 1000 * n / statistics.median(hooked),
        "ratio": paired_ratio(times, "plain", base="hooked"),
        "pair_ratios": pairs,
    }


def _malloc_trim() -> bool:
    """Hand the heap's free memory back to the system (glibc); False where there is none."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def _series(before: float, after: list[float]) -> dict:
    """RSS readings (MiB) after each extraction: range, trend and halves."""
    half = len(after) // 2
    return {
        "before_mib": before,
        "after_mib": after,
        "last_minus_before_mib": after[-1] - before,
        "min_mib": min(after),
        "max_mib": max(after),
        "trend_mib_per_extraction": statistics.linear_regression(
            range(1, len(after) + 1), after
        ).slope,
        "second_half_minus_first_half_mib": statistics.median(after[half:])
        - statistics.median(after[:half]),
    }


def _memory(model, images) -> dict:
    """RSS before and after each of REPEATS extractions, as read and after malloc_trim;
    only the latest weights are kept."""
    proc = psutil.Process()

    def rss() -> float:
        return proc.memory_info().rss / MIB

    kept = _extract(model, images)
    gc.collect()
    before = rss()
    trimmed = _malloc_trim()
    before_trimmed = rss()
    raw, trim = [], []
    for _ in range(REPEATS):
        kept = _extract(model, images)
        gc.collect()
        raw.append(rss())
        _malloc_trim()
        trim.append(rss())
    size = sum(t.numel() * t.element_size() for t in kept.values())
    return {
        "rss": _series(before, raw),
        "rss_after_malloc_trim": _series(before_trimmed, trim) if trimmed else None,
        "kept_kib": size / 1024,
        "kept_shapes": {k: list(t.shape) for k, t in kept.items()},
        "kept_dtype": str(next(iter(kept.values())).dtype),
    }


def run(quick: bool = False) -> dict:
    contention = Contention()
    n_train, n_test, epochs = (500, 200, 1) if quick else (10000, 2000, 4)
    rounds = 2 if quick else 15
    test = recipes.get("resnet10_se").variant(n_test=n_test).test_data(SEED)
    _, h_plain = _train("resnet10_plain", test, epochs, n_train)
    se, h_se = _train("resnet10_se", test, epochs, n_train)
    table, rows = training_table({"ResNet-10 (plain)": h_plain, "ResNet-10 + SE (r = 4)": h_se})

    hooks_before = _hooks(se)
    speed = _throughput(se, test.images, rounds)
    mem = _memory(se, test.images)
    hooks_after = _hooks(se)
    table += [
        "",
        f"| SE network over the {n_test} test images, batches of {BATCH}, no_grad "
        "| images/s | capture / plain |",
        "|---|---:|---:|",
        f"| plain forward | {speed['plain_images_per_s']:.0f} | 1.00 |",
        f"| forward + capture of every SE block's s (float16, weights kept) "
        f"| {speed['capture_images_per_s']:.0f} | **{speed['ratio']:.2f}** (pairs "
        f"{min(speed['pair_ratios']):.2f} to {max(speed['pair_ratios']):.2f}) |",
        "",
        f"| RSS, MiB | before | after each of {REPEATS} extractions | last - before "
        "| lowest / highest after | trend per extraction "
        f"| median of last {REPEATS - REPEATS // 2} - median of first {REPEATS // 2} |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("as read", "rss"),
        ("after malloc_trim (memory in use)", "rss_after_malloc_trim"),
    ):
        m = mem[key]
        if m is None:
            table.append(f"| {label} | no glibc malloc_trim here | | | | | |")
            continue
        after = ", ".join(f"{a:.0f}" for a in m["after_mib"])
        table.append(
            f"| {label} | {m['before_mib']:.1f} | {after} | {m['last_minus_before_mib']:+.1f} "
            f"| {m['min_mib']:.1f} / {m['max_mib']:.1f} "
            f"| **{m['trend_mib_per_extraction']:+.2f}** "
            f"| {m['second_half_minus_first_half_mib']:+.1f} |"
        )
    channels = sum(s[1] for s in mem["kept_shapes"].values())
    notes = [
        f"Training: {n_train} train / {n_test} test images (64 x 64), {epochs} epoch(s), seed "
        f"{SEED}, Adam lr 3e-3 one-cycle, batch 64, CPU, torch threads "
        f"{torch.get_num_threads()}. Train seconds exclude evaluation. "
        "'train time / plain': SE's training seconds over the plain network's (1.00 = free).",
        "Extraction: images/s of one pass over the test set, median of "
        f"{rounds} pairs of passes (plain and hooked, the order alternating). 'capture / "
        "plain': the median over the pairs of the hooked pass's images/s over the plain "
        "pass's in the same pair (1.00 = capture costs nothing; 0.50 = half the throughput). "
        "The hooked pass opens one attnviz.capture per batch and keeps only the weights.",
        f"Memory: RSS after one warm-up extraction, then after each of {REPEATS} more, each "
        f"replacing the kept weights ({len(mem['kept_shapes'])} blocks, {channels} weights "
        f"per image, {mem['kept_dtype']}, {mem['kept_kib']:.1f} KiB), read after gc.collect() "
        "as it is, then again after glibc's malloc_trim(0). 'trend': the least-squares "
        f"slope of the {REPEATS} readings (keeping every extraction's weights would add "
        f"{mem['kept_kib'] / 1024:.2f} MiB per extraction); flat means the trend and the "
        "half-to-half difference stay near zero. The readings as read move up and down "
        "with the freed batch activations the allocator keeps or returns; after malloc_trim "
        "they count the memory in use. Forward hooks on the model "
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
