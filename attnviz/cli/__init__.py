"""The ``attnviz`` command: the notebook gallery and the core picture without Jupyter.

attnviz demo [--full] [--out build/demo]       run every notebook, write an HTML gallery
attnviz overlay PHOTO --model NAME -o out.png  Grad-CAM and attention maps of a photo
attnviz app [--port 8866]                      every explorer on the shipped models (Voila)
attnviz export WHAT --out F.html [--images N]  stn, channels, nonlocal or vit: one offline page
attnviz models [--check | --regenerate]        the shipped trained models and their manifest
attnviz stats --model M --data DIR --out F.pt  attention statistics over a data set (torchrun)
attnviz plot F.pt [-o classwise.png]           the class-wise figure or a channel's top images
"""

from __future__ import annotations

import argparse
import sys

from . import app, demo, export, models, overlay, stats
from .export import EXPORTS, VIT_MODEL
from .models import _close as _close  # re-exported: tests compare scores with it

__all__ = ["EXPORTS", "VIT_MODEL", "main"]

#: the commands, one module each, in the order ``attnviz --help`` lists them
COMMANDS = (demo, overlay, stats, app, export, models)


def main(argv: list[str] | None = None) -> int:
    """Run the ``attnviz`` command line (``argv`` default: ``sys.argv[1:]``); its exit code."""
    parser = argparse.ArgumentParser(prog="attnviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
