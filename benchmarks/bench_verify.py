"""What the faithfulness check costs, and how exact every recognised layer's record is.

(a) Cost: the median time of a forward pass (eval, ``torch.no_grad()``, batch 8 at
224 x 224) alone, inside ``attnviz.capture(model, verify=False)`` and inside
``attnviz.capture(model)`` (the default: every record checked against its module's
output on a sample of positions), for ResNet-50 + SE (timm ``seresnet50``, 16 SE blocks)
and EfficientNet-B0 (torchvision, 16 SE blocks); random weights. Runs are interleaved so
a busy neighbour slows all three alike. On 2 cores a forward's own time varies by several
per cent from run to run, more than the capture costs, so the time attnviz itself spends
(constructing the capture, entering, in every hook it installs, leaving) is also measured
directly, and the cost stated as (plain + attnviz's own time) / plain. Target: the
checked capture at most 1.03x plain.

(b) Exactness: for every attention layer timm's ``create_attn`` builds (and the
EfficientNet SE block), attnviz's own modules and torchvision's SE block, an example model
with random weights and random normalisation statistics, captured once; the largest
relative error any check of that layer type saw (output vs input combined with the
record, rows summing to one, ...). The README's
table of recognised modules is generated from these figures and the registry.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torchvision
from _common import (
    Contention,
    exactness_table,
    paired_ratio,
    rotated_ms,
    worst_check_errors,
)
from timm.layers.gather_excite import GatherExcite
from torch import nn

import attnviz

# create_attn name -> (model, input side); the same models as tests/test_timm.py
EXAMPLES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    name: (functools.partial(timm.create_model, model, pretrained=False, **kw), size)
    for name, (model, kw, size) in {
        "se": ("seresnet18", {}, 64),
        "ese": ("ese_vovnet19b_dw", {}, 64),
        "eca": ("ecaresnet26t", {}, 64),
        "ceca": ("resnet18", {"block_args": {"attn_layer": "ceca"}}, 64),
        "ge": (
            "resnet18",
            {
                "block_args": {
                    "attn_layer": functools.partial(GatherExcite, use_mlp=False, extent=2)
                }
            },
            64,
        ),
        "gc": ("resnet18", {"block_args": {"attn_layer": "gc"}}, 64),
        "gca": ("gcresnet33ts", {}, 64),
        "cbam": ("resnet18", {"block_args": {"attn_layer": "cbam"}}, 64),
        "lcbam": ("resnet18", {"block_args": {"attn_layer": "lcbam"}}, 64),
        "coord": ("resnet18", {"block_args": {"attn_layer": "coord"}}, 64),
        "scoord": ("resnet18", {"block_args": {"attn_layer": "scoord"}}, 64),
        "ela": ("resnet18", {"block_args": {"attn_layer": "ela"}}, 64),
        "strip": ("resnet18", {"block_args": {"attn_layer": "strip"}}, 64),
        "sk": ("skresnet18", {}, 64),
        "splat": ("resnest14d", {}, 64),
        "nl": ("resnet18", {"block_args": {"attn_layer": "nl"}}, 64),
        "bat": ("bat_resnext26ts", {}, 256),
        "bottleneck": ("botnet26t_256", {}, 256),
        "halo": ("halonet26t", {}, 256),
        "efficientnet-se": ("efficientnet_b0", {}, 64),
        "legacy-se": ("legacy_seresnet18", {}, 64),
    }.items()
}


def _own(kind: str) -> Callable[[], nn.Module]:
    from attnviz.models import STCNN, small_resnet

    if kind == "stn":
        return lambda: STCNN.for_rts()
    if kind == "upright":
        return lambda: STCNN.for_upright()
    return lambda: small_resnet(attention=kind, width=8)


# attnviz's own modules and torchvision's SE block
EXAMPLES.update(
    {
        "attnviz-se": (_own("se"), 64),
        "attnviz-cbam": (_own("cbam"), 64),
        "attnviz-nonlocal": (_own("nonlocal"), 64),
        "attnviz-stn": (_own("stn"), 42),
        "attnviz-upright": (_own("upright"), 42),
        "torchvision-se": (torchvision.models.mobilenet_v3_small, 64),
    }
)
_CHANNELS = {"attnviz-stn": 1, "attnviz-upright": 1}


def exactness(quick: bool) -> dict[str, float]:
    """Registered qualified name -> the largest check error over its example model."""
    return worst_check_errors(
        (builder, (1 if quick else 2, _CHANNELS.get(name, 3), size, size))
        for name, (builder, size) in EXAMPLES.items()
    )


class _OwnTime:
    """Times attnviz's own work in a capture (constructing it, entering, every hook it
    installs, leaving), on the side of a normal run: the cost of capturing and checking,
    free of the noise of the forward pass around it."""

    def __init__(self) -> None:
        import importlib

        self.cls = importlib.import_module("attnviz.capture").capture
        self.seconds = 0.0
        self.saved = {}

    def _wrap(self, fn, factory: bool):
        own = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                own.seconds += time.perf_counter() - start
            return own._wrap(out, False) if factory else out

        return timed

    def __enter__(self) -> _OwnTime:
        for name, factory in (
            ("__init__", False),
            ("__enter__", False),
            ("__exit__", False),
            ("_begin", True),
            ("_tap", True),
            ("_end", True),
        ):
            self.saved[name] = getattr(self.cls, name)
            setattr(self.cls, name, self._wrap(self.saved[name], factory))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self.saved.items():
            setattr(self.cls, name, fn)


def _own_ms(model: nn.Module, x: torch.Tensor, verify: bool, reps: int) -> float:
    """Median milliseconds of attnviz's own work per captured forward."""
    out = []
    for _ in range(reps):
        with _OwnTime() as own, torch.no_grad(), attnviz.capture(model, verify=verify):
            model(x)
        out.append(1000 * own.seconds)
    return statistics.median(out)


def _cost(name: str, model: nn.Module, x: torch.Tensor, reps: int) -> dict:
    model.eval()

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def unchecked() -> None:
        with torch.no_grad(), attnviz.capture(model, verify=False):
            model(x)

    def checked() -> None:
        with torch.no_grad(), attnviz.capture(model) as rec:
            model(x)
        assert rec.checks and all(c.ok for c in rec.checks)

    runs = [("plain", plain), ("unchecked", unchecked), ("checked", checked)]
    times = rotated_ms(runs, reps, warmup=2)
    med = {k: statistics.median(v) for k, v in times.items()}
    # each rep runs all three back to back: its ratios are paired, the noise mostly shared
    paired = {k: paired_ratio(times, k) for k in ("unchecked", "checked")}
    n = sum(1 for _ in attnviz.find_attention_modules(model))
    own = {v: _own_ms(model, x, v, max(3, reps // 2)) for v in (False, True)}
    return {
        "own_unchecked_ms": own[False],
        "own_checked_ms": own[True],
        "own_ratio": (med["plain"] + own[True]) / med["plain"],
        "model": name,
        "modules": n,
        "input": " x ".join(map(str, x.shape)),
        "plain_ms": med["plain"],
        "unchecked_ms": med["unchecked"],
        "checked_ms": med["checked"],
        "capture_ratio": paired["unchecked"],
        "checked_ratio": paired["checked"],
        "reps": reps,
    }


def run(quick: bool = False) -> dict:
    meter = Contention()
    batch, reps = (1, 1) if quick else (8, 12)
    x = torch.randn(batch, 3, 224, 224)
    torch.manual_seed(0)
    rows = [
        _cost("ResNet-50 + SE (timm seresnet50)", timm.create_model("seresnet50"), x, reps),
        _cost("EfficientNet-B0 (torchvision)", torchvision.models.efficientnet_b0(), x, 3 * reps),
    ]
    table = [
        "| model | SE modules | input | plain ms | capture, unchecked ms | capture, checked "
        "(default) ms | wall-clock checked / plain | attnviz's own ms, unchecked / checked | "
        "(plain + own, checked) / plain |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['modules']} | {r['input']} | {r['plain_ms']:.0f} | "
            f"{r['unchecked_ms']:.0f} ({r['capture_ratio']:.3f}x) | {r['checked_ms']:.0f} | "
            f"{r['checked_ratio']:.3f}x | {r['own_unchecked_ms']:.1f} / "
            f"{r['own_checked_ms']:.1f} | **{r['own_ratio']:.3f}x** |"
        )
    errors = exactness(quick)
    table += exactness_table(errors)
    return {
        "title": "Faithfulness check: cost and exactness",
        "table": "\n".join(table),
        "rows": rows,
        "exactness": errors,
        "notes": [
            f"Times: medians of {reps} interleaved runs (order rotated; 3x as many for "
            "EfficientNet-B0); "
            "ratios: the median over runs of each run's own ratio (the three variants of a run "
            "share the machine's state). "
            f"{torch.get_num_threads()} torch threads. " + meter.note()
        ],
    }
