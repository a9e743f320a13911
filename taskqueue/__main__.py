"""``python -m taskqueue``: the command line (see :mod:`taskqueue.cli`)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
