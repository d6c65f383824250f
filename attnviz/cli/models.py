"""``attnviz models``: list, check or regenerate the shipped trained models."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["models", "register"]


def models(args: argparse.Namespace) -> int:
    """List, check or regenerate the shipped models."""
    from .. import shipped

    try:
        if args.regenerate:
            shipped.regenerate(
                args.only, out=args.out, device=args.device, log=lambda s: print(s, flush=True)
            )
            return 0
        folder = args.out
        if args.check:
            bad = 0
            for name in args.only or shipped.names():
                v = shipped.verify(name, folder)
                same = v.accuracy_matches and _close(v.measured["scores"], v.manifest["scores"])
                bad += not same
                print(
                    f"{name}: sha256 ok, test accuracy {v.measured['test_accuracy']:.2%} "
                    f"(manifest {v.manifest['test_accuracy']:.2%}), scores "
                    f"{'match' if same else 'DIFFER'}",
                    flush=True,
                )
            return 1 if bad else 0
        print(shipped.summary(args.only, folder))
        return 0
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"attnviz models: {e}", file=sys.stderr)
        return 2


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    """Scores equal up to ``tol`` (float rounding between machines), keys and nesting equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def register(sub: Any) -> None:
    """Add the command's parser to ``attnviz``'s subparsers."""
    m = sub.add_parser("models", help="list, check or regenerate the shipped trained models")
    m.add_argument(
        "--check",
        action="store_true",
        help="load each (checksum, weights_only) and re-measure accuracy and scores",
    )
    m.add_argument(
        "--regenerate",
        action="store_true",
        help="train them from scratch by their recipes and rewrite the manifest",
    )
    m.add_argument("--only", nargs="+", metavar="NAME", help="only these models")
    m.add_argument("--out", help="folder of the models (default: the ones attnviz ships)")
    m.add_argument("--device", help="training device for --regenerate (default: CUDA if any)")
    m.set_defaults(run=models)
