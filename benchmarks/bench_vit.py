"""Capturing every attention matrix of a vision transformer: cost and memory.

Each block of a ViT-B/16 applies a heads x tokens x tokens matrix (12 x 197 x 197 at
224 x 224); a capture records all of them (12 blocks) and checks each against the block's
output. Measured: the wall-clock ratio of a captured forward to a plain one (batch 8,
paired runs, order rotated), and the memory the records hold.

- torchvision ``vit_b_16``: ``nn.MultiheadAttention`` asked for its per-head weights;
- timm ``vit_base_patch16_224``: fused ``scaled_dot_product_attention``, the matrix
  computed from the kernel's own q and k.
"""

from __future__ import annotations

import statistics

import torch
import torchvision
from _common import Contention, exactness_table, paired_ratio, rotated_ms, worst_check_errors

import attnviz


def _cost(name: str, model: torch.nn.Module, x: torch.Tensor, reps: int) -> dict:
    model.eval()
    sizes: dict[str, int] = {}

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def captured(dtype=None, key="float32"):
        def fn() -> None:
            with torch.no_grad(), attnviz.capture(model, dtype=dtype) as rec:
                model(x)
            assert rec.checks and all(c.ok for c in rec.checks)
            sizes[key] = rec.nbytes

        return fn

    runs = [
        ("plain", plain),
        ("float32", captured()),
        ("float16", captured(torch.float16, "float16")),
    ]
    times = rotated_ms(runs, reps)
    ratio = {k: paired_ratio(times, k) for k in ("float32", "float16")}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "input": " x ".join(map(str, x.shape)),
        "plain_ms": med["plain"],
        "captured_ms": med["float32"],
        "ratio": ratio["float32"],
        "ratio_fp16": ratio["float16"],
        "mib": sizes["float32"] / 2**20,
        "mib_fp16": sizes["float16"] / 2**20,
        "reps": reps,
    }


def exactness(quick: bool) -> dict[str, float]:
    """Registered qualified name -> the largest check error over example vision
    transformers with random weights (torchvision's; timm's fused and plain)."""
    models = [torchvision.models.vit_b_16]
    try:
        import timm

        for fused in (True, False):

            def build(fused=fused):
                m = timm.create_model("deit_tiny_distilled_patch16_224")
                for block in m.blocks:
                    block.attn.fused_attn = fused
                return m

            models.append(build)
    except ImportError:
        pass
    return worst_check_errors((build, (1 if quick else 2, 3, 224, 224)) for build in models)


def run(quick: bool = False) -> dict:
    meter = Contention()
    batch, reps = (1, 1) if quick else (8, 9)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    rows = [_cost("ViT-B/16 (torchvision vit_b_16)", torchvision.models.vit_b_16(), x, reps)]
    try:
        import timm

        rows.append(
            _cost(
                "ViT-B/16 (timm, fused attention)",
                timm.create_model("vit_base_patch16_224"),
                x,
                reps,
            )
        )
    except ImportError:
        pass
    table = [
        "| model | input | plain ms | captured ms | captured / plain | records (float32) | "
        "captured / plain, float16 records | records (float16) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['input']} | {r['plain_ms']:.0f} | {r['captured_ms']:.0f} | "
            f"**{r['ratio']:.3f}x** | {r['mib']:.0f} MiB | {r['ratio_fp16']:.3f}x | "
            f"{r['mib_fp16']:.0f} MiB |"
        )
    errors = exactness(quick)
    table += exactness_table(errors)
    return {
        "title": "Vision transformers: capturing every attention matrix",
        "table": "\n".join(table),
        "rows": rows,
        "exactness": errors,
        "notes": [
            f"12 blocks x 12 heads x 197 x 197 per image, checked (the default). Medians of "
            f"{reps} runs, each run's variants back to back in rotating order; ratios: the "
            "median of each run's own ratio. Records: the matrices (and timm's values), "
            f"as stored on CPU. {torch.get_num_threads()} torch threads. " + meter.note()
        ],
    }
