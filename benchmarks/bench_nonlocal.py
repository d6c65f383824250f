"""Cost of a non-local block (C = 64) at 16x16, 32x32 and 64x64, with and without subsampling.

The attention matrix is N x N_keys (N = H W): it grows with the fourth power of the side,
and the paper's 2 x 2 max pooling of phi and g (Wang et al., CVPR 2018, Sec. 3.3) cuts it
four times. Forward time is the median of repeated batch-1 forwards in eval mode under
``torch.no_grad()``, alone and under ``attnviz.capture`` (which copies the matrix). Peak
memory is the high-water mark of the CPU allocations the torch profiler records
(``profile_memory=True``) during one forward, summed in time order: the input and the
weights, allocated before, are not included.
"""

from __future__ import annotations

import torch

import attnviz
from attnviz.analysis import forward_cost
from attnviz.modules import NonLocal

CHANNELS = 64
SIZES = (16, 32, 64)


def _measure(size: int, subsample: bool, reps: int) -> dict:
    block = NonLocal(CHANNELS, subsample=subsample).eval()
    x = torch.randn(1, CHANNELS, size, size)

    class Captured(torch.nn.Module):  # the same forward, with every record copied out
        def forward(self, t):
            with attnviz.capture(block):
                return block(t)

    plain, captured = forward_cost(block, x, reps), forward_cost(Captured(), x, reps)
    keys = (size // 2) ** 2 if subsample else size * size
    return {
        "size": size,
        "subsample": subsample,
        "queries": size * size,
        "keys": keys,
        "forward_ms": plain["ms"],
        "capture_ms": captured["ms"],
        "peak_mib": plain["peak_mib"],
        "matrix_mib": size * size * keys * 4 / 2**20,
    }


def run(quick: bool = False) -> dict:
    reps = 3 if quick else 20
    rows = [_measure(s, sub, reps) for s in SIZES for sub in (False, True)]
    table = [
        "| feature map | subsample | queries x keys | forward ms | forward + capture ms "
        "| peak MiB | matrix MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['size']}x{r['size']} | {'2x2 max pool' if r['subsample'] else 'no'} "
            f"| {r['queries']} x {r['keys']} | {r['forward_ms']:.2f} | {r['capture_ms']:.2f} "
            f"| {r['peak_mib']:.2f} | {r['matrix_mib']:.2f} |"
        )
    notes = [
        f"C = {CHANNELS}, inner = {CHANNELS // 2}, batch 1, embedded Gaussian, float32, "
        f"torch threads {torch.get_num_threads()}; median of {reps} forwards.",
        "Peak MiB: torch profiler allocations during one forward (about two N x N_keys "
        "matrices: theta^T phi and its softmax). Matrix MiB: one copy of A, what a capture "
        "stores per image.",
    ]
    return {
        "title": "Non-local block: time and memory against feature-map size",
        "table": "\n".join(table),
        "rows": rows,
        "notes": notes,
    }
