"""Run the benchmark suite: ``python -m benchmarks --help``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
