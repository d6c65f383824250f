"""Capture overhead and widget redraws.

(a) What recording costs: the median time of a forward pass in eval mode under
``torch.no_grad()``, alone and inside ``attnviz.capture(model)`` (every attention module
recorded, copies to the CPU; entering and leaving the context, i.e. adding and removing
the hooks, is timed too), for torchvision's MobileNetV3-Small (its nine SE blocks,
random weights, batch 16 at 224 x 224), a CBAM and an SE ResNet-10 (four blocks, batch 64
at 64 x 64) and timm's ResNet-50 + SE (16 SE blocks, batch 8 at 224 x 224).

(b) What a slider step costs in the widgets, which redraw from cached captures by
swapping PNG bytes in persistent ``ipywidgets.Image``s, against the naive notebook way of
drawing the same panels: a new matplotlib figure saved to PNG at every step. Both read
the same cached data (no forward pass is timed on either side): for ``ChannelExplorer``
one SE block's weights s and input U (bar chart of the C weights, u_c and s_c u_c
overlaid on the image); for ``STNInspector`` A_theta of one image and snapshot (the input
with the sampled quadrilateral and the digit's box, and the crop V, resampled each step
on both sides).

(c) Why redraws run torch on one thread: a 256 x 256 overlay (an 8 x 8 map normalised,
upsampled, coloured and blended over an image, ``attnviz.render.overlay``) on two torch
threads and on one, and inside ``attnviz.running.single_threaded()`` (what the widgets
do), on the quiet machine, beside two CPU-bound Python processes, and beside two
processes running torch on two threads each (a small network's forward passes, as a
training run beside the notebook does).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import Busy, Contention, ms, paired_ratio, rotated_ms
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle
from torchvision.models import mobilenet_v3_small

import attnviz
from attnviz import maps, render
from attnviz.data import digits_on_photos, distorted_mnist
from attnviz.models import small_resnet
from attnviz.running import single_threaded
from attnviz.widgets import ChannelExplorer, QueryExplorer, SpatialExplorer, STNInspector

SEED = 0
SNAPSHOTS = 5  # STN snapshots: identity .. the true transform
STN_OUTPUT = (28, 28)
OVERLAY_SIDE = 256  # (c): the image an overlay is drawn on
OVERLAY_MAP = 8  # (c): the map's side (a CBAM block-3 map on 64 x 64 digits)


# -- (a) capture overhead --------------------------------------------------------------------
def _overhead(name: str, model: torch.nn.Module, x: torch.Tensor, reps: int) -> dict:
    model.eval()
    kept = {}

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def hooked() -> None:
        with torch.no_grad(), attnviz.capture(model) as rec:
            model(x)
        kept["rec"] = rec

    # rounds in rotating order, the ratio of each round's own pair: a busy neighbour slows
    # both alike (benchmarks/_common.rotated_ms)
    times = rotated_ms([("plain", plain), ("capture", hooked)], reps, warmup=2)
    rec = kept["rec"]
    stored = sum(r.data.numel() * r.data.element_size() for r in rec.values())
    return {
        "model": name,
        "input": f"{x.shape[0]} x {x.shape[1]} x {x.shape[2]} x {x.shape[3]}",
        "records": len(rec),
        "recorded_kib": stored / 1024,
        "plain_ms": statistics.median(times["plain"]),
        "capture_ms": statistics.median(times["capture"]),
        "ratio": paired_ratio(times, "capture"),
    }


# -- (b) widget steps against a new matplotlib figure per step --------------------------------
def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _naive_channel(image: np.ndarray, weights: torch.Tensor, feats: torch.Tensor, c: int) -> bytes:
    """Bar chart of the C weights, u_c and s_c u_c over the image: a new figure, as PNG."""
    before = feats[c]
    after = before * weights[c]
    lo = min(float(before.min()), float(after.min()))
    hi = max(float(before.max()), float(after.max()))
    cmap = "inferno" if lo >= 0 else "coolwarm"
    lo, hi = (0.0, hi) if lo >= 0 else (-max(-lo, hi), max(-lo, hi))
    h, w = image.shape[:2]
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    bars = fig.add_subplot(2, 1, 1)
    colours = ["tab:blue"] * len(weights)
    colours[c] = "tab:orange"
    bars.bar(np.arange(len(weights)), weights.numpy(), color=colours)
    bars.set(xlabel="channel", ylabel="weight s_c")
    for k, (title, fmap) in enumerate((("u_c", before), ("s_c u_c", after))):
        ax = fig.add_subplot(2, 2, 3 + k)
        ax.imshow(image)
        ax.imshow(
            fmap.numpy(),
            cmap=cmap,
            vmin=lo,
            vmax=hi,
            alpha=0.6,
            extent=(0, w, h, 0),
            interpolation="bilinear",
        )
        ax.set_title(title)
        ax.axis("off")
    return _png(fig)


def _channel_steps(steps: int) -> dict:
    torch.manual_seed(SEED)
    model = small_resnet(10, attention="se", width=16, stem_stride=2).eval()
    images = digits_on_photos("test", n=8, seed=SEED).images
    with torch.no_grad(), attnviz.capture(model, kinds="channel", features=True) as rec:
        model(images[:1])  # what the naive plot draws from: the widget caches the same
    block = list(rec)[-1]  # the last SE block: the most channels
    weights, feats = rec[block].weights[0], rec[block].features[0]
    c_total = len(weights)
    order = [(k + 1) % c_total for k in range(steps + 1)]  # every step changes the channel
    shown = []
    app = ChannelExplorer(model, images)
    try:
        app.block = block

        def widget_step(c: int) -> None:
            app.channel = c
            shown.append(app.current()["channel"] == c)

        image = images[0].permute(1, 2, 0).numpy()
        widget, naive = [], []
        for c in order:  # interleaved, so a busy neighbour slows both alike
            widget.append(ms(lambda c=c: widget_step(c)))
            naive.append(ms(lambda c=c: _naive_channel(image, weights, feats, c)))
    finally:
        app.close()
    widget_ms, naive_ms = statistics.median(widget[1:]), statistics.median(naive[1:])
    return {
        "app": "ChannelExplorer",
        "step": f"channel slider ({block}, C = {c_total})",
        "widget_ms": widget_ms,
        "naive_ms": naive_ms,
        "ratio": naive_ms / widget_ms,
        "steps_shown_right": f"{sum(shown)} / {len(shown)}",
    }


def _stn_parts(n: int) -> dict:
    """RTS digits (42 x 42) with E snapshots of theta going from the identity to the truth."""
    ds = distorted_mnist("RTS", "test", seed=SEED)
    truth = ds.theta[:n].float()
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    steps = torch.linspace(0, 1, SNAPSHOTS)[:, None, None, None]
    return {
        "images": ds.images[:n],
        "thetas": eye + steps * (truth - eye),
        "boxes": ds.boxes[:n].double(),
        "labels": ds.labels[:n].tolist(),
    }


def _naive_stn(image: torch.Tensor, theta: torch.Tensor, box: torch.Tensor) -> bytes:
    """The input with A_theta's quadrilateral and the box, and the crop: a new figure, as PNG."""
    h, w = image.shape[-2:]
    corners = maps.theta_corners(theta, (h, w))[0]
    maps.polygon_iou(corners, box)  # the widget prints it; the naive plot computes it too
    crop = maps.resample(image, theta, STN_OUTPUT)
    fig = Figure(figsize=(4.8, 2.4), dpi=100)
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
    ax.add_patch(Polygon(corners.numpy(), closed=True, fill=False, edgecolor="tab:orange"))
    x0, y0, x1, y1 = box.tolist()
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="tab:green"))
    ax.axis("off")
    ax = fig.add_subplot(1, 2, 2)
    ax.imshow(crop[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    return _png(fig)


def _stn_steps(steps: int) -> list[dict]:
    n = 16
    parts = _stn_parts(n)
    app = STNInspector(
        parts["images"],
        parts["thetas"],
        boxes=parts["boxes"],
        labels=parts["labels"],
        output_size=STN_OUTPUT,
    )
    out = []
    try:
        for what, size in (("snapshot", SNAPSHOTS), ("index", n)):
            widget, naive = [], []
            for k in range(1, steps + 2):  # every step moves the slider by one
                value = k % size
                i = value if what == "index" else app.index
                e = value if what == "snapshot" else app.snapshot
                widget.append(ms(lambda what=what, value=value: setattr(app, what, value)))
                args = parts["images"][i], parts["thetas"][e, i], parts["boxes"][i]
                naive.append(ms(lambda args=args: _naive_stn(*args)))
            w_ms, n_ms = statistics.median(widget[1:]), statistics.median(naive[1:])
            label = f"{what} slider (42 x 42 input, x4; {STN_OUTPUT[0]} x {STN_OUTPUT[1]} crop)"
            out.append(
                {
                    "app": "STNInspector",
                    "step": label,
                    "widget_ms": w_ms,
                    "naive_ms": n_ms,
                    "ratio": n_ms / w_ms,
                }
            )
    finally:
        app.close()
    return out


def _slider_apps() -> list[tuple[str, str, object, Callable[[int], None]]]:
    """(app, step, the app, step k) for every slider of every explorer that redraws from
    its cache: each step sets the slider to a new value, as a user dragging it does."""
    torch.manual_seed(SEED)
    images = digits_on_photos("test", n=8, seed=SEED).images
    se = small_resnet(10, attention="se", width=16, stem_stride=2).eval()
    cbam = small_resnet(
        10, attention="cbam", width=16, stem_stride=2, attention_kwargs={"spatial_kernel": 3}
    ).eval()
    nl = small_resnet(
        10, attention="nonlocal", nonlocal_stages=(2, 3), width=16, stem_stride=2
    ).eval()
    channels = ChannelExplorer(se, images)
    channels.block = "layer4.0.attention"
    spatial = SpatialExplorer(cbam, images)
    query = QueryExplorer(nl, images)
    parts = _stn_parts(16)
    stn = STNInspector(
        parts["images"],
        parts["thetas"],
        boxes=parts["boxes"],
        labels=parts["labels"],
        output_size=STN_OUTPUT,
    )
    c = len(channels.current()["weights"])
    qh, qw = query.current()["query_size"]
    h, w = query.image_size

    def opacity(app):
        return lambda k: setattr(app, "opacity", 0.3 + 0.02 * (k % 20))

    return [
        (
            "ChannelExplorer",
            f"channel (C = {c}, 3 panels)",
            channels,
            lambda k: setattr(channels, "channel", (k + 1) % c),
        ),
        ("ChannelExplorer", "opacity", channels, opacity(channels)),
        ("SpatialExplorer", "opacity (CBAM map, gate, Grad-CAM)", spatial, opacity(spatial)),
        (
            "QueryExplorer",
            f"query x ({qh} x {qw} query grid)",
            query,
            lambda k: setattr(query, "query", ((k + 1) * w // (qw + 1) % w, h // 2)),
        ),
        ("QueryExplorer", "opacity", query, opacity(query)),
        ("STNInspector", "snapshot", stn, lambda k: setattr(stn, "snapshot", (k + 1) % SNAPSHOTS)),
        ("STNInspector", "image", stn, lambda k: setattr(stn, "index", (k + 1) % 16)),
    ]


def _busy_steps(steps: int, processes: int = 2) -> list[dict]:
    """Median slider step of every explorer, quiet and beside ``processes`` busy ones."""
    apps = _slider_apps()

    def median_ms(step: Callable[[int], None]) -> float:
        times = [ms(lambda k=k: step(k)) for k in range(steps + 1)]
        return statistics.median(times[1:])

    try:
        quiet = [median_ms(step) for *_, step in apps]
        with Busy(processes):
            busy = [median_ms(step) for *_, step in apps]
    finally:
        for _, _, app, _ in apps:
            app.close()
    return [
        {
            "app": a,
            "step": s,
            "quiet_ms": q,
            "busy_ms": b,
            "slowdown": b / q,
            "target_met": b < 10.0,
        }
        for (a, s, _, _), q, b in zip(apps, quiet, busy)
    ]


# -- (c) one overlay on two torch threads and on one, quiet and busy ----------------------------
def _overlay_variants() -> list[tuple[str, int, Callable[[], object]]]:
    """(variant, torch threads set before the call, the call) for one 256 x 256 overlay."""
    rng = np.random.default_rng(SEED)
    image = rng.integers(0, 256, (OVERLAY_SIDE, OVERLAY_SIDE, 3), dtype=np.uint8)
    gen = torch.Generator().manual_seed(SEED)
    heat = torch.rand(OVERLAY_MAP, OVERLAY_MAP, generator=gen)

    def draw() -> np.ndarray:
        return render.overlay(image, heat)

    def widget() -> np.ndarray:
        with single_threaded():
            return render.overlay(image, heat)

    return [
        ("2 threads", 2, draw),
        ("1 thread", 1, draw),
        ("2 threads, drawn in single_threaded() (the widgets)", 2, widget),
    ]


def _overlay_ms(reps: int) -> dict[str, float]:
    """Median ms of each variant over ``reps`` rounds (one warm-up), the order rotating."""
    variants = _overlay_variants()
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    try:
        for i in range(reps + 1):
            shift = i % len(variants)
            for name, n, fn in variants[shift:] + variants[:shift]:
                torch.set_num_threads(n)  # outside the timing
                t = ms(fn)
                if i:
                    times[name].append(t)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(t) for name, t in times.items()}


#: a neighbour: small convolutions in a loop on 2 torch threads, until it is terminated
_TORCH_WORK = """
import torch
torch.set_num_threads(2)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.rand(8, 16, 32, 32)
with torch.no_grad():
    conv(x)
    print("ready", flush=True)
    while True:
        conv(x).relu().sum()
"""


class TorchBusy:
    """``with TorchBusy(2):`` runs two processes beside the benchmark, each running torch on
    two threads on small tensors (what a small network's training run does): unlike
    ``_common.Busy``'s pure-Python spinners, their threads meet at torch's parallel
    regions, so they wait for each other's cores as the benchmarked process does."""

    def __init__(self, processes: int = 2) -> None:
        self.processes = processes

    def __enter__(self) -> TorchBusy:
        self._procs = [
            subprocess.Popen([sys.executable, "-c", _TORCH_WORK], stdout=subprocess.PIPE, text=True)
            for _ in range(self.processes)
        ]
        for p in self._procs:  # wait until each one computes
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


#: overlay conditions: (column, the context the overlays are timed in)
NEIGHBOURS: list[tuple[str, Callable[[], object]]] = [
    ("no neighbour started", lambda: contextlib.nullcontext()),
    ("beside 2 CPU-bound Python processes", lambda: Busy(2)),
    ("beside 2 torch processes (2 threads each)", lambda: TorchBusy(2)),
]


def _overlay_threads(trials: int, reps: int) -> list[dict]:
    """Each condition of :data:`NEIGHBOURS` ``trials`` times (the neighbours started afresh
    each time): every trial's median ms of each overlay variant over ``reps`` rounds. How
    long two threads wait for each other depends on how the scheduler happens to place
    the threads, so one trial can be fast and the next slow: the trials show the spread."""
    rows = []
    for condition, context in NEIGHBOURS:
        runs = []
        for _ in range(trials):
            with context():
                runs.append(_overlay_ms(reps))
        two = [r["2 threads"] for r in runs]
        one = [r["1 thread"] for r in runs]
        row: dict = {"condition": condition, "trials": trials, "rounds_per_trial": reps}
        for name in runs[0]:
            t = [r[name] for r in runs]
            row[name] = {"median_ms": statistics.median(t), "worst_ms": max(t), "each_ms": t}
        row["two_over_one_median"] = statistics.median(a / b for a, b in zip(two, one))
        row["trials_two_threads_over_10x"] = sum(a > 10 * b for a, b in zip(two, one))
        rows.append(row)
    return rows


def run(quick: bool = False) -> dict:
    contention = Contention()
    reps = 3 if quick else 20
    steps = 5 if quick else 30
    torch.manual_seed(SEED)
    mobilenet = mobilenet_v3_small(weights=None)
    cbam = small_resnet(10, attention="cbam", width=16, stem_stride=2)
    se = small_resnet(10, attention="se", width=16, stem_stride=2)
    overhead = [
        _overhead("MobileNetV3-Small (9 SE blocks)", mobilenet, torch.rand(16, 3, 224, 224), reps),
        _overhead("ResNet-10 + CBAM (4 blocks)", cbam, torch.rand(64, 3, 64, 64), reps),
        _overhead("ResNet-10 + SE (4 blocks)", se, torch.rand(64, 3, 64, 64), reps),
    ]
    if not quick:
        import timm

        seresnet50 = timm.create_model("seresnet50", pretrained=False)
        x = torch.rand(8, 3, 224, 224)
        overhead.append(_overhead("ResNet-50 + SE (timm, 16 SE blocks)", seresnet50, x, reps))
    redraws = [_channel_steps(steps), *_stn_steps(steps)]
    contended = _busy_steps(steps)
    overlays = _overlay_threads(trials=2 if quick else 8, reps=5 if quick else 15)

    table = [
        "| model | input | records | recorded KiB | forward ms | forward in capture ms "
        "| capture / plain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in overhead:
        table.append(
            f"| {r['model']} | {r['input']} | {r['records']} | {r['recorded_kib']:.1f} "
            f"| {r['plain_ms']:.1f} | {r['capture_ms']:.1f} | {r['ratio']:.3f} |"
        )
    table += [
        "",
        "| app | step | widget redraw ms | new matplotlib figure + PNG ms | naive / widget |",
        "|---|---|---:|---:|---:|",
    ]
    for r in redraws:
        table.append(
            f"| {r['app']} | {r['step']} | {r['widget_ms']:.1f} | {r['naive_ms']:.1f} "
            f"| {r['ratio']:.1f} |"
        )
    table += [
        "",
        "| app | slider | quiet ms | beside 2 busy processes ms | busy / quiet "
        "| under 10 ms busy |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in contended:
        table.append(
            f"| {r['app']} | {r['step']} | {r['quiet_ms']:.1f} | {r['busy_ms']:.1f} "
            f"| {r['slowdown']:.1f} | {'yes' if r['target_met'] else '**no**'} |"
        )
    variants = [name for name, _, _ in _overlay_variants()]
    table += [
        "",
        f"| {OVERLAY_SIDE} x {OVERLAY_SIDE} overlay of an {OVERLAY_MAP} x {OVERLAY_MAP} map "
        "| trials "
        + "".join(f"| {v}: median / slowest trial, ms " for v in variants)
        + "| 2 threads / 1 thread, median of trials | trials with 2 threads > 10x 1 thread |",
        "|---|---:|" + "---:|" * len(variants) + "---:|---:|",
    ]
    for r in overlays:
        table.append(
            f"| {r['condition']} | {r['trials']} "
            + "".join(f"| {r[v]['median_ms']:.1f} / {r[v]['worst_ms']:.1f} " for v in variants)
            + f"| {r['two_over_one_median']:.1f} | {r['trials_two_threads_over_10x']} "
            f"of {r['trials']} |"
        )
    notes = [
        f"torch threads {torch.get_num_threads()} (set by the runner). The widgets redraw "
        "with torch on one thread (attnviz.running.single_threaded): on tiny maps, "
        "multi-threaded torch ops spend their time waiting for each other once another "
        "process competes for the cores.",
        f"Slider steps quiet vs busy: median of {steps} steps of each slider, each to a new "
        "value (first dropped), first on the quiet machine, then with 2 CPU-bound Python "
        "processes spinning beside it (benchmarks/_common.Busy) on this "
        f"{os.cpu_count()}-core machine. Target: under 10 ms busy. Untrained ResNet-10s "
        "(SE; CBAM; non-local at stages 2-3) on 64 x 64 digits-on-photos, the RTS "
        "STNInspector as above. PhotoExplainer has no slider (its dropdowns recompute "
        "Grad-CAM).",
        f"Capture: {reps} rounds of a plain forward and one inside attnviz.capture, in "
        "rotating order, eval mode, no_grad, random weights and inputs; 'forward' columns "
        "are medians, 'capture / plain' the median of each round's own ratio (the capture "
        "constructed, entered and left, every record copied to the CPU and checked); 1.00 "
        "means recording is free. Target 1.02. The previous run "
        "(benchmarks/results/2026-12-03-capture.md, before the kernel tracker skipped "
        "modules whose own code starts no kernel): 1.09 MobileNetV3-Small, 1.24 CBAM "
        "ResNet-10.",
        f"Redraws: median of {steps} slider steps, each to a new value (first step dropped). "
        "Widget: setting .channel / .snapshot / .index, which redraws synchronously into "
        "persistent ipywidgets.Image (PNG, compress_level 1) from cached captures. Naive: "
        "a new matplotlib Figure per step (bar chart of the C weights + two imshow overlays "
        "at 640 x 480 px; for the STN the input with a Polygon and the box + the crop at "
        "480 x 240 px), savefig to PNG. 'naive / widget': how many times slower the naive "
        "re-plot is. Neither side runs the network.",
        "ChannelExplorer runs on an untrained SE ResNet-10 (width 16) and 64 x 64 "
        "digits-on-photos (rendering cost does not depend on the weights); STNInspector on "
        f"16 RTS digits with {SNAPSHOTS} snapshots of theta from the identity to the true "
        "distortion.",
        f"Overlay threads: attnviz.render.overlay of a random {OVERLAY_MAP} x {OVERLAY_MAP} "
        f"map over a random {OVERLAY_SIDE} x {OVERLAY_SIDE} RGB image (normalise, upsample, "
        "colour, blend; the torch part is the upsampling), in each "
        "trial the median of "
        f"{5 if quick else 15} rounds per variant (one warm-up round dropped, the order "
        "rotating every round), the thread count set before each timed call; "
        f"{2 if quick else 8} trials per condition, the neighbours started afresh for each: "
        "with no "
        "neighbour started (whether the machine was quiet: the last note), beside 2 "
        "CPU-bound Python processes (benchmarks/_common.Busy), and beside "
        "2 processes each running a 16-channel 3 x 3 convolution on 8 x 16 x 32 x 32 "
        "tensors in a loop on 2 torch threads (TorchBusy, here). '2 threads / 1 thread': "
        "each trial's 2-thread median over its 1-thread median, the median over the "
        "trials. The single_threaded() column includes switching the thread count there "
        "and back.",
        contention.note(),
    ]
    return {
        "title": "Capture overhead and widget redraws",
        "table": "\n".join(table),
        "rows": overhead + redraws + contended + overlays,
        "notes": notes,
    }
