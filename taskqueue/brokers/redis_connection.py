"""What a RedisBroker's threads share about their server: redis-py, safe names, backoff, outages.

Several threads talk to one Redis server for a broker (the producer's result
listener, the maintenance thread, each worker's consumer) and meet the same
faults there. What they agree on lives here, below every part of the broker,
so that each part imports it from here and none from another:

- redis-py, imported only when a RedisBroker is made;
- the server's URL and redis-py's error messages, shown without the password;
- how long a blocking call waits on the server, and the reconnect backoff;
- an outage, logged once when it begins and once when it ends;
- the logger all the parts write to.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["safe_url"]

# The broker's parts log as one, under the name they had as one module, so
# that logging set up for taskqueue.brokers.redis still covers all of them.
log = logging.getLogger("taskqueue.brokers.redis")

# How long a blocked receive waits on the server before it looks again
# (a stop is also told through the process's own wake list, at once).
_BLOCK = 1.0
# Reconnecting after a Redis fault: the first wait, and the longest.
_BACKOFF_FIRST, _BACKOFF_MOST = 0.1, 5.0


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError("RedisBroker needs redis-py: pip install 'taskqueue[redis]'") from None
    return redis


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs).

    Both places redis-py reads a password from are masked: the user info
    (``redis://user:secret@host``) and the query (``?password=secret``).
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
        query = "&".join(_masked_parameter(p) for p in parts.query.split("&")) \
            if parts.query else ""
        if (netloc, query) == (parts.netloc, parts.query):
            return url  # nothing to hide
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<a Redis URL>"


def _masked_parameter(parameter: str) -> str:
    name, sep, _ = parameter.partition("=")
    return f"{name}=***" if sep and name.lower() == "password" else parameter


def _safe_text(exc: BaseException, client: Any) -> str:
    # redis-py's messages can hold the URL; never its password.
    text = str(exc)
    kwargs = getattr(client.connection_pool, "connection_kwargs", None) or {}
    password = kwargs.get("password")
    return text.replace(password, "***") if password else text


class _Outage:
    """Logs a Redis outage once when it begins and once when it ends."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._down = False
        self._lock = threading.Lock()

    def began(self, exc: BaseException) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        log.warning("lost Redis at %s (%s); reconnecting with backoff", self._url,
                    type(exc).__name__)

    def over(self) -> None:
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("Redis at %s is back", self._url)
