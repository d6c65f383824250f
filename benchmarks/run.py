"""Run every benchmark and write one report: build/bench/results.md and results.json.

    make bench                  # full run
    python benchmarks/run.py --quick --only stn

Each ``benchmarks/bench_*.py`` exposes ``run(quick: bool) -> dict`` with a
``title``, a Markdown ``table`` and the raw ``rows``. Timings depend on the
machine, so the report starts with a description of it and states the torch
thread count; compare figures as ratios measured in the same run.
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

HERE = Path(__file__).resolve().parent


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    report = ["# attnviz benchmarks", "",
              "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]  # fmt: skip
    results = {"machine": info, "quick": args.quick, "benchmarks": {}}
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        res = module.run(quick=args.quick)
        res["wall_seconds"] = round(time.perf_counter() - start, 1)
        results["benchmarks"][name] = res
        report += [f"## {res['title']}", "", res["table"], "", *res.get("notes", []), ""]
        print(res["table"], flush=True)
    (out / "results.md").write_text("\n".join(report))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
