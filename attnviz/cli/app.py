"""``attnviz app``: every explorer on the shipped models, served by Voila."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["app", "register"]


def app(args: argparse.Namespace) -> int:
    """Serve every explorer on the shipped models with Voila (``attnviz.app.serve``) until
    stopped. A refused setting (port, address, token, models folder, a port in use) or a
    missing Voila is reported as ``attnviz app: <why>`` with exit status 2, before Voila
    starts."""
    from ..app import serve

    try:
        return serve(
            port=args.port,
            ip=args.ip,
            allow_remote=args.allow_remote,
            token=args.token,
            open_browser=args.browser,
            photo_weights=None if args.no_download else "DEFAULT",
            folder=args.models,
        )
    except (ImportError, OSError, ValueError) as e:
        print(f"attnviz app: {e}", file=sys.stderr)
        return 2


def register(sub: Any) -> None:
    """Add the command's parser to ``attnviz``'s subparsers."""
    a = sub.add_parser("app", help="every explorer on the shipped models, served by Voila")
    a.add_argument(
        "--port", default="8866", help="port to listen on, 1 to 65535 (default 8866); never another"
    )
    a.add_argument(
        "--ip",
        default="127.0.0.1",
        help="address to listen on: a loopback one (default 127.0.0.1: this machine only; "
        "::1, localhost) unless --allow-remote",
    )
    a.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow an --ip other machines can reach (e.g. 0.0.0.0); the app then requires a "
        "token (printed in its URL) and answers any Host header",
    )
    a.add_argument(
        "--token", help="require this token (default: none; a new one with --allow-remote)"
    )
    a.add_argument("--browser", action="store_true", help="open a browser tab")
    a.add_argument(
        "--no-download", action="store_true", help="photo tab with random weights: download nothing"
    )
    a.add_argument("--models", help="folder of shipped models (default: the ones attnviz ships)")
    a.set_defaults(run=app)
