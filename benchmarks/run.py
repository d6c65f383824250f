"""Run every benchmark and write one report: build/bench/results.md and results.json.

    make bench                  # full run
    python benchmarks/run.py --quick --only stn
    python benchmarks/run.py --only verify --record   # also keep it in benchmarks/results/

Each ``benchmarks/bench_*.py`` exposes ``run(quick: bool) -> dict`` with a
``title``, a Markdown ``table`` and the raw ``rows``. Timings depend on the
machine, so the report starts with a description of it and states the torch
thread count; compare figures as ratios measured in the same run. Every benchmark's
entry in results.json says whether the machine was quiet while it ran (other processes
used under 10% of one core) or contended.

``--record`` keeps the run in the repository, ``benchmarks/results/<date>-<names>.md``
and ``.json`` (``-quick`` for quick runs, ``-contended`` when any benchmark ran on a busy
machine): the README's figures cite these files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch
from _common import Contention

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the plumbing")
    parser.add_argument("--only", nargs="*", help="benchmark names, e.g. stn")
    parser.add_argument("--out", default="build/bench", help="output folder")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (stated in the report)"
    )
    parser.add_argument("--record", action="store_true", help="also keep it in benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    report = [
        "# attnviz benchmarks",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
    ]
    results = {"machine": info, "quick": args.quick, "benchmarks": {}}
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"== {name}", flush=True)
        meter = Contention()
        res = module.run(quick=args.quick)
        res["machine_state"] = meter.measure()
        res["wall_seconds"] = round(res["machine_state"]["wall"], 1)
        results["benchmarks"][name] = res
        state = "quiet" if res["machine_state"]["quiet"] else "CONTENDED"
        report += [
            f"## {res['title']}",
            "",
            f"Machine {state} during this benchmark.",
            "",
            res["table"],
            "",
            *res.get("notes", []),
            "",
        ]
        print(res["table"], flush=True)
    (out / "results.md").write_text("\n".join(report))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    if args.record:
        quiet = all(r["machine_state"]["quiet"] for r in results["benchmarks"].values())
        stem = "-".join(
            [time.strftime("%Y-%m-%d"), *(args.only or ["all"])]
            + (["quick"] if args.quick else [])
            + ([] if quiet else ["contended"])
        )
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{stem}.md").write_text("\n".join(report))
        (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str))
        print(f"recorded {RESULTS / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
