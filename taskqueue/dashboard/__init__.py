"""A live dashboard of a queue, served over HTTP by the standard library.

``queue.serve_dashboard()`` serves one from the process that owns the
queue; ``python -m taskqueue dashboard --journal PATH`` (or ``--broker
URL``) serves one for a journal file whose program runs elsewhere, or for
a queue in Redis. The page (``static/``: plain HTML, CSS and JavaScript,
nothing fetched from the internet) polls a small JSON API, documented in
the README. Safe by default: loopback only without a token, and read-only
without one.

Uses only the public names of :mod:`taskqueue`.
"""

from __future__ import annotations

from .server import Dashboard, serve
from .sources import JournalSource, QueueSource

__all__ = ["Dashboard", "serve", "QueueSource", "JournalSource"]
