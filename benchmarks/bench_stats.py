"""`attnviz stats` throughput: against plain inference over the same loader, over images of
mixed sizes against one size, and 1 vs 2 processes under torchrun.

Data: digits on photos (64 x 64) written as an image folder of PNGs (decoded by the
DataLoader, as a real folder is); models: the shipped SE ResNet-10 (every SE weight of
4 blocks reduced per class, with histograms and top-16 per channel) and torchvision's
mobilenet_v3_large at 224 x 224. Plain inference is one DataLoader over the same images
in the same batches (the shard size is a multiple of the batch size) with the model's
forward and nothing else.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import Contention
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import ToTensor

from attnviz import render, shipped
from attnviz.data import digits_on_photos
from attnviz.stats import dataset_stats, input_transform, open_dataset

#: the mixed folder's sizes, in turn: about the pixels of 64 x 64 each (4,096 to 4,160), so
#: decoding costs the same and the difference is the resizing that mixed sizes need
MIXED_SIZES = [(64, 64), (80, 52), (52, 80), (72, 57), (57, 72)]


def _folder(root: Path, n: int, sizes: list[tuple[int, int]] | None = None) -> Path:
    """n digits on photos as an image folder of PNGs, 64 x 64 or resized to ``sizes`` in
    turn."""
    data = digits_on_photos("test", n=n, seed=3)
    for k in range(10):
        (root / str(k)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = render.as_pil(data.images[i])
        if sizes:
            image = image.resize(sizes[i % len(sizes)])
        image.save(root / str(int(data.labels[i])) / f"{i:05d}.png")
    return root


def _mixed_vs_same(model, n: int, reps: int, workers: int, tmp: Path) -> dict:
    """attnviz stats as the CLI runs it by default (every image resized and centre-cropped to
    64 x 64) over a folder of one size and one of mixed sizes: paired runs, order
    alternated."""
    same = open_dataset(_folder(tmp / "same", n), input_transform(64))
    mixed = open_dataset(_folder(tmp / "mixed", n, MIXED_SIZES), input_transform(64))
    _stats(model, Subset(same, range(64)), 64, 512, 0, tmp / "warm.pt")
    times: dict[str, list[float]] = {"same": [], "mixed": []}
    for r in range(reps):
        order = ["same", "mixed"] if r % 2 == 0 else ["mixed", "same"]
        for key in order:
            data = same if key == "same" else mixed
            times[key].append(_stats(model, data, 64, 512, workers, tmp / f"{key}-{r}.pt"))
    ratios = [s / m for s, m in zip(times["same"], times["mixed"])]
    return {
        "images": n,
        "same_s": statistics.median(times["same"]),
        "mixed_s": statistics.median(times["mixed"]),
        "throughput_ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def _plain(model, dataset, batch: int, workers: int) -> float:
    """Inference alone through one DataLoader (the same batches as the stats run: its shard
    size is a multiple of the batch size)."""
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in DataLoader(dataset, batch_size=batch, num_workers=workers):
            model(x)
    return time.perf_counter() - start


def _stats(model, dataset, batch: int, shard: int, workers: int, out: Path) -> float:
    start = time.perf_counter()
    dataset_stats(
        model,
        dataset,
        out=out,
        batch_size=batch,
        shard_size=shard,
        num_workers=workers,
        num_classes=10,
        progress=False,
    )
    return time.perf_counter() - start


def _torchrun(folder: Path, out: Path, procs: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(29500 + procs),
        "-m",
        "attnviz.cli",
        "stats",
        "--model",
        "shipped:resnet10_se",
        "--data",
        str(folder),
        "--out",
        str(out),
        "--batch-size",
        "64",
        "--shard-size",
        "256",
        "--no-progress",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def _ratio(model, dataset, batch: int, shard: int, workers: int, reps: int, tmp: Path) -> dict:
    """Paired runs of plain inference and attnviz stats over the same loader."""
    _plain(model, Subset(dataset, range(min(len(dataset), batch))), batch, 0)  # warm-up
    plain, stats = [], []
    for r in range(reps):
        order = [("plain", plain), ("stats", stats)]
        for key, times in order if r % 2 == 0 else order[::-1]:
            if key == "plain":
                times.append(_plain(model, dataset, batch, workers))
            else:
                times.append(_stats(model, dataset, batch, shard, workers, tmp / f"{batch}-{r}.pt"))
    ratios = [p / s for p, s in zip(plain, stats)]
    return {
        "images": len(dataset),
        "batch": batch,
        "plain_s": statistics.median(plain),
        "stats_s": statistics.median(stats),
        "throughput_ratio": statistics.median(ratios),
        "ratios": ratios,
        "plain_runs_s": plain,
        "stats_runs_s": stats,
    }


def run(quick: bool = False) -> dict:
    import torchvision

    meter = Contention()
    n, n_big, reps = (256, 32, 1) if quick else (4000, 384, 5)
    shard, workers = 512, 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp) / "images", n)
        small = open_dataset(folder, ToTensor())
        rows.append(
            {
                "model": "shipped SE ResNet-10 (64 x 64 PNGs; a 1 ms forward)",
                **_ratio(shipped.load("resnet10_se"), small, 64, shard, workers, reps, Path(tmp)),
            }
        )
        weights = torchvision.models.MobileNet_V3_Large_Weights.DEFAULT
        big = Subset(open_dataset(folder, weights.transforms()), range(n_big))
        torch.manual_seed(0)
        mobilenet = torchvision.models.mobilenet_v3_large().eval()  # random weights: offline
        rows.append(
            {
                "model": "torchvision mobilenet_v3_large (the same PNGs resized to 224)",
                **_ratio(mobilenet, big, 32, 128, workers, reps, Path(tmp)),
            }
        )
        sizes = _mixed_vs_same(shipped.load("resnet10_se"), n, reps, workers, Path(tmp))
        one = _torchrun(folder, Path(tmp) / "one.pt", 1, 1)
        two = _torchrun(folder, Path(tmp) / "two.pt", 2, 1)
        one_two_threads = _torchrun(folder, Path(tmp) / "one2.pt", 1, 2)
    table = [
        "| model | images | batch | plain inference | attnviz stats | stats throughput / "
        "plain (median of pairs) | each pair |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        pairs = " / ".join(f"{x:.2f}" for x in r["ratios"])
        table.append(
            f"| {r['model']} | {r['images']} | {r['batch']} | {r['plain_s']:.1f} s | "
            f"{r['stats_s']:.1f} s | **{r['throughput_ratio']:.2f}x** | "
            f"{pairs} |"
        )
    table += [
        "",
        "| `attnviz stats` under torchrun, shipped SE ResNet-10, "
        f"{n} images | 1 process x 1 thread | 2 processes x 1 thread | speed-up 1 -> 2 | "
        "1 process x 2 threads |",
        "|---|---:|---:|---:|---:|",
        f"| wall seconds (process start and model load included) | {one:.1f} s | "
        f"{two:.1f} s | **{one / two:.2f}x** | {one_two_threads:.1f} s |",
    ]
    mixed_sizes = ", ".join(f"{w}x{h}" for w, h in MIXED_SIZES)
    table += [
        "",
        "| `attnviz stats` defaults (resize and centre-crop to 64 x 64), shipped SE "
        f"ResNet-10, {n} PNGs | one size (64 x 64) | mixed sizes ({mixed_sizes}) | mixed "
        "throughput / one size (median of pairs) | each pair |",
        "|---|---:|---:|---:|---|",
        f"| wall seconds | {sizes['same_s']:.1f} s | {sizes['mixed_s']:.1f} s | "
        f"**{sizes['throughput_ratio']:.2f}x** | "
        f"{' / '.join(f'{x:.2f}' for x in sizes['ratios'])} |",
    ]
    procs = {
        "torchrun_1x1_s": one,
        "torchrun_2x1_s": two,
        "torchrun_1x2_s": one_two_threads,
        "speedup_1_to_2": one / two,
    }
    return {
        "title": "Dataset statistics: throughput and processes",
        "table": "\n".join(table),
        "rows": rows,
        "mixed_sizes": sizes,
        "processes": procs,
        "notes": [
            f"Same batches through one DataLoader each ({workers} worker process decoding "
            f"PNGs; stats in shards of {shard} for ResNet-10, 128 for MobileNet); medians of "
            f"{reps} paired runs, order alternated; the stats run includes the faithfulness "
            "checks of every capture, writing its state after every shard and the final file. "
            "MobileNet has random weights (no download here): the cost does not depend on "
            "the weights. " + meter.note()
        ],
    }
