"""The progress line: live on a terminal, one plain line per scenario otherwise.

On a terminal the line is rewritten in place (``\\r``) as each run starts,
and erased before the table is printed. In a log (CI, a pipe) rewriting
would leave a mess of carriage returns, so only the start of each scenario
is written, once, as an ordinary line.
"""

from __future__ import annotations

import time
from typing import Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """Reports which scenario and run is going on, on ``stream`` (stderr).

    Args:
        stream: where to write; progress never goes to stdout, which holds the table.
        live: rewrite one line in place; defaults to ``stream.isatty()``.
        total: how many scenarios the run has.
    """

    def __init__(self, stream: TextIO, *, total: int, live: Optional[bool] = None) -> None:
        self._stream = stream
        self._live = _isatty(stream) if live is None else live
        self._total = total
        self._index = 0
        self._scenario = ""
        self._started = time.monotonic()
        self._width = 0

    def scenario(self, name: str) -> None:
        """Say that the next scenario, ``name``, starts."""
        self._index += 1
        self._scenario = name
        if self._live:
            self.update("")
        else:
            self._stream.write(f"[{self._index}/{self._total}] {name}\n")
            self._stream.flush()

    def update(self, detail: str) -> None:
        """Show ``detail`` (which run is going on) on the live line; nothing in a log."""
        if not self._live:
            return
        elapsed = time.monotonic() - self._started
        text = f"[{self._index}/{self._total}] {self._scenario} {detail}".rstrip()
        text = f"{text}  ({elapsed:.0f}s)"
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()

    def done(self) -> None:
        """Erase the live line, so that the table starts on a clean line."""
        if self._live and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream is no terminal
        return False
