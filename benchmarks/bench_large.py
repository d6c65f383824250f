"""Attention at any size: what capture keeps, and what it costs, at thousands of tokens.

A fused ``scaled_dot_product_attention`` never forms its matrix; a capture with
``attention="factors"`` (the default) keeps the kernel's q, k, values and scale and
computes rows when asked, ``attention="full"`` computes and keeps every matrix during the
forward. Measured on timm's ViTs with random weights, batch 2: the records' memory, the
captured forward over a plain one (paired runs), and what the views cost afterwards: one
query's row, the class-token rollout through every block, and a redraw of the query
explorer at a new query pixel.
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import Contention, ms, paired_ratio, rotated_ms

import attnviz
from attnviz import maps

#: (label, timm model, image side, modes measured: "full" only where the matrices fit)
CASES = [
    ("ViT-B/16 at 224 (197 tokens)", "vit_base_patch16_224", 224, ("factors", "full")),
    ("ViT-B/14 at 518 (1,370 tokens; DINOv2)", "vit_base_patch14_dinov2", 518, ("factors", "full")),
    ("ViT-S/8 at 480 (3,601 tokens; DINO's figures)", "vit_small_patch8_224", 480, ("factors",)),
]


def _case(label: str, name: str, side: int, modes: tuple[str, ...], reps: int) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, img_size=side).eval()
    x = torch.randn(2, 3, side, side)
    held: dict[str, float] = {}
    kept: dict[str, object] = {}

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def captured(mode: str):
        def fn() -> None:
            with torch.no_grad(), attnviz.capture(model, attention=mode) as rec:
                model(x)
            assert all(c.ok for c in rec.checks)
            held[mode] = rec.nbytes / 2**20
            kept[mode] = rec

        return fn

    runs = [("plain", plain)] + [(m, captured(m)) for m in modes]
    times = rotated_ms(runs, reps, warmup=0)
    row: dict = {"model": label, "tokens": None, "plain_ms": statistics.median(times["plain"])}
    rec = kept["factors"]
    r = next(iter(rec.values()))
    row["tokens"] = r.tokens
    qk = sum((t.q.numel() + t.k.numel()) * t.q.element_size() for t in rec.values())
    row["qk_mib"] = qk / 2**20
    for m in modes:
        row[f"{m}_ratio"] = paired_ratio(times, m)
        row[f"{m}_mib"] = held[m]
    # views afterwards, from the factored records
    last = list(rec.values())[-1]
    h, w = last.query_size
    row["row_ms"] = statistics.median(
        ms(lambda: last.key_row((side // 3, side // 2), (side, side))) for _ in range(20)
    )
    t = time.perf_counter()
    maps.rollout_map(rec)
    row["rollout_ms"] = (time.perf_counter() - t) * 1000
    row["rollout_ratio"] = row["rollout_ms"] / row["plain_ms"]
    row["grid"] = f"{h} x {w}"
    return row


def _explorer_redraw(quick: bool) -> float:
    """Median ms for the query explorer to redraw at a new query pixel, at 3,601 tokens."""
    import timm

    from attnviz.widgets import QueryExplorer

    side = 96 if quick else 480
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch8_224", img_size=side).eval()
    app = QueryExplorer(model, torch.rand(1, 3, side, side))
    times = []
    for i in range(9):
        t = time.perf_counter()
        app.query = ((7 + 37 * i) % side, (11 + 53 * i) % side)
        times.append((time.perf_counter() - t) * 1000)
    app.close()
    return statistics.median(times)


def run(quick: bool = False) -> dict:
    meter = Contention()
    reps = 1 if quick else 3
    cases = [(lbl, n, 64 if quick else s, m) for lbl, n, s, m in CASES]
    rows = [_case(*c, reps) for c in cases]
    redraw = _explorer_redraw(quick)
    table = [
        "| model | tokens | plain ms | factors: captured / plain | factors: records | q + k "
        "| full: captured / plain | full: records | one query's row | class-token rollout "
        "(x a forward) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        full = (
            f"{r['full_ratio']:.2f}x | {r['full_mib']:,.0f} MiB"
            if "full_ratio" in r
            else "not measured: the matrices would not fit | -"
        )
        table.append(
            f"| {r['model']} | {r['tokens']:,} | {r['plain_ms']:,.0f} | "
            f"**{r['factors_ratio']:.2f}x** | {r['factors_mib']:,.0f} MiB | {r['qk_mib']:,.0f} MiB "
            f"| {full} | {r['row_ms']:.2f} ms | {r['rollout_ms']:,.0f} ms "
            f"({r['rollout_ratio']:.2f}x) |"
        )
    return {
        "title": "Attention at any size: factored records against whole matrices",
        "table": "\n".join(table),
        "rows": rows,
        "explorer_redraw_ms": redraw,
        "notes": [
            f"Batch 2, random weights, {torch.get_num_threads()} torch threads; medians of "
            f"{reps} runs in rotating order, ratios the median of each run's own. Query "
            f"explorer at 3,601 tokens (ViT-S/8 at 480): a new query pixel redraws in "
            f"{redraw:.0f} ms (median of 9), no matrix formed. " + meter.note()
        ],
    }
