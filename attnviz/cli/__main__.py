"""``python -m attnviz.cli``: the ``attnviz`` command (what torchrun runs)."""

import sys

from . import main

sys.exit(main())
