"""Helpers shared by the benchmarks (imported from benchmarks/, which run.py puts on the path)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil
import torch


class Contention:
    """CPU seconds that other processes used while the benchmark ran (machine-wide busy
    time minus this process's), the sign that a timing was slowed by a neighbour."""

    def __init__(self) -> None:
        self.start = time.perf_counter(), _busy(psutil.cpu_times()), _own()

    def measure(self) -> dict:
        """Wall seconds so far, CPU seconds other processes used, and whether that was
        little enough (under 10% of one core) to call the machine quiet."""
        wall, busy, own = self.start
        wall = time.perf_counter() - wall
        other = max(0.0, _busy(psutil.cpu_times()) - busy - (_own() - own))
        return {"wall": wall, "other_cpu_seconds": other, "quiet": other <= 0.1 * wall}

    def note(self) -> str:
        m = self.measure()
        wall, other = m["wall"], m["other_cpu_seconds"]
        verdict = (
            "the machine was quiet"
            if m["quiet"]
            else "a neighbour competed for the cores, so the timings are slowed: rerun on a "
            "quiet machine"
        )
        return (
            f"Other processes used {other:.1f} CPU-seconds during these {wall:.0f} s "
            f"({other / wall:.0%} of one core; {os.cpu_count()} cores, this run at "
            f"{torch.get_num_threads()} torch threads): {verdict}."
        )


def _busy(t) -> float:
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _own() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _spin(stop) -> None:  # a CPU-bound neighbour: pure Python, one core, no memory traffic
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i


class Busy:
    """``with Busy(2):`` runs two CPU-bound processes beside the benchmark, the machine a
    notebook user has while something else (a training run, a browser) uses the cores."""

    def __init__(self, processes: int = 2) -> None:
        self.processes = processes

    def __enter__(self) -> Busy:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._procs = [
            ctx.Process(target=_spin, args=(self._stop,), daemon=True)
            for _ in range(self.processes)
        ]
        for p in self._procs:
            p.start()
        time.sleep(1.0)  # let them start spinning (spawn imports take a moment)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def ms(fn: Callable[[], object]) -> float:
    """Milliseconds of one call."""
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def rotated_ms(
    runs: list[tuple[str, Callable[[], object]]], reps: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Milliseconds of each named run over ``reps`` rounds, after ``warmup`` untimed
    rounds; the order rotates every round, so no variant always follows another."""
    for _ in range(warmup):
        for _, fn in runs:
            fn()
    times: dict[str, list[float]] = {k: [] for k, _ in runs}
    for i in range(reps):
        shift = i % len(runs)
        for key, fn in runs[shift:] + runs[:shift]:
            times[key].append(ms(fn))
    return times


def paired_ratio(times: dict[str, list[float]], key: str, base: str = "plain") -> float:
    """The median of each round's own ``key`` / ``base`` time ratio."""
    return statistics.median(a / b for a, b in zip(times[key], times[base]))


def training_table(
    histories: dict[str, Any], *, prefix: str = ""
) -> tuple[list[str], list[dict[str, Any]]]:
    """A Markdown table and raw rows of trained models' epochs, seconds and accuracy, each
    model's training time over the first one's (the baseline, e.g. the plain network).
    ``prefix`` goes before each name in the table (not in the rows)."""
    base = next(iter(histories.values())).train_seconds
    table = [
        "| model | epochs | train seconds | test accuracy | train time / plain |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = []
    for name, h in histories.items():
        acc, secs = h.final.test_acc, h.train_seconds
        table.append(
            f"| {prefix}{name} | {h.final.epoch} | {secs:.1f} | {acc:.2%} | {secs / base:.2f} |"
        )
        rows.append(
            {
                "model": name,
                "epochs": h.final.epoch,
                "train_seconds": secs,
                "test_acc": acc,
                "time_ratio": secs / base,
            }
        )
    return table, rows


def worst_check_errors(
    examples: Iterable[tuple[Callable[[], torch.nn.Module], tuple[int, ...]]],
) -> dict[str, float]:
    """Registered qualified name -> the largest faithfulness-check error over example
    models: each built (after ``torch.manual_seed(0)``), given non-trivial normalisation
    statistics (``attnviz.testing.randomise``) and captured with ``verify="raise"`` on a
    random input of the given shape."""
    import attnviz
    from attnviz.testing import randomise

    worst: dict[str, float] = {}
    for build, shape in examples:
        torch.manual_seed(0)
        model = randomise(build())
        x = torch.randn(*shape)
        with torch.no_grad(), attnviz.capture(model, verify="raise") as rec:
            model(x)
        for check in rec.checks:
            m = model.get_submodule(check.name)
            q = f"{type(m).__module__}.{type(m).__qualname__}"
            worst[q] = max(worst.get(q, 0.0), check.error)
    return worst


def exactness_table(errors: dict[str, float]) -> list[str]:
    """The Markdown lines of a table of :func:`worst_check_errors`, a blank line first."""
    rows = [f"| `{q}` | {e:.1e} |" for q, e in sorted(errors.items())]
    return ["", "| recognised layer | largest relative error of its checks |", "|---|---:|", *rows]
