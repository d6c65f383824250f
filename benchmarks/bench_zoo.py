"""The transformer zoo: what capturing every attention matrix costs, beyond plain ViTs.

Attention found by what each module computes (attnviz.probes.kernels): Swin's shifted
windows (timm), EVA-02's rotary attention (fused kernel, q and k rotated before it),
Hugging Face's ViT-B through its default ``sdpa`` implementation, and MaxViT's block and
grid attention beside its SE gates. Random weights, batch 8 at 224 x 224. Measured: the
wall-clock ratio of a captured forward (records stored on CPU, every check run) to a
plain one, paired runs in rotating order, and the memory the records hold.
"""

from __future__ import annotations

import statistics

import torch
from _common import Contention, paired_ratio, rotated_ms

import attnviz


class _HF(torch.nn.Module):
    """Hugging Face's ViTModel called as ``model(pixel_values=x)``, unchanged inside."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        self.vit = ViTModel._from_config(ViTConfig(), attn_implementation="sdpa")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x).last_hidden_state


def _models(quick: bool):
    import timm

    yield (
        "Swin-T (timm swin_tiny_patch4_window7_224)",
        lambda: timm.create_model("swin_tiny_patch4_window7_224"),
    )
    yield (
        "EVA-02-S (timm eva02_small_patch14_224, RoPE)",
        lambda: timm.create_model("eva02_small_patch14_224"),
    )
    try:
        import transformers  # noqa: F401

        yield "ViT-B/16 (Hugging Face ViTModel, sdpa)", _HF
    except ImportError:
        pass
    yield "MaxViT-T (timm maxvit_tiny_tf_224)", lambda: timm.create_model("maxvit_tiny_tf_224")


def _cost(name: str, model: torch.nn.Module, x: torch.Tensor, reps: int) -> dict:
    model.eval()
    seen: dict[str, float] = {}

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def captured() -> None:
        with torch.no_grad(), attnviz.capture(model) as rec:
            model(x)
        assert rec.checks and all(c.ok for c in rec.checks) and not rec.unrecorded
        seen["mib"] = rec.nbytes / 2**20
        seen["records"] = len(rec)
        seen["worst"] = max(float(c.error or 0) for c in rec.checks)

    runs = [("plain", plain), ("captured", captured)]
    times = rotated_ms(runs, reps)
    return {
        "model": name,
        "input": " x ".join(map(str, x.shape)),
        "plain_ms": statistics.median(times["plain"]),
        "captured_ms": statistics.median(times["captured"]),
        "ratio": paired_ratio(times, "captured"),
        "records": seen["records"],
        "mib": seen["mib"],
        "worst_check": seen["worst"],
        "reps": reps,
    }


def run(quick: bool = False) -> dict:
    meter = Contention()
    batch, reps = (1, 1) if quick else (8, 5)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    rows = [_cost(name, build(), x, reps) for name, build in _models(quick)]
    table = [
        "| model | input | plain ms | captured ms | captured / plain | records | record memory "
        "| largest check error |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['input']} | {r['plain_ms']:.0f} | {r['captured_ms']:.0f} | "
            f"**{r['ratio']:.3f}x** | {r['records']} | {r['mib']:.0f} MiB | "
            f"{r['worst_check']:.1e} |"
        )
    return {
        "title": "The transformer zoo: capture cost (Swin, EVA-02, Hugging Face ViT, MaxViT)",
        "table": "\n".join(table),
        "rows": rows,
        "notes": [
            f"Target: captured / plain <= 1.10x. Medians of {reps} runs, each pair back to "
            "back in alternating order; the ratio is the median of each pair's own ratio. "
            f"Random weights; {torch.get_num_threads()} torch threads. " + meter.note()
        ],
    }
