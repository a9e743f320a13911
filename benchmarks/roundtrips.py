"""Counting the round trips clients make to Redis, with ``MONITOR``.

``INFO commandstats`` cannot tell them apart: it counts every command a
Lua script runs as a call of its own (one EVALSHA of taskqueue's ENQUEUE
shows as a dozen), and it counts every client of the server, where a shared
server has others. ``MONITOR`` streams each command the server runs with
the client that sent it, and shows a script's own commands as sent by
``lua``; so :class:`RoundTrips` keeps the commands of clients, leaves out
the scripts' insides, and keeps only the connections that named the run's
namespace (in a key, a channel or a script's arguments), whose other
commands (a connection's HELLO) count too.

The window is marked by two ``ECHO`` commands of its own, so that what the
monitor reads late still falls in or out of it by the server's order, not
by when this process got to it. A transaction (MULTI ... EXEC, as
redis-py's pipelines send it) is one round trip; a pipeline without one
would show as one line per command, so it counts each (taskqueue sends
none on the path of a task); a blocking BLPOP shows once, when it is sent,
however long it waits; a pub/sub message pushed to a subscriber is no
command, so it is not seen.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["RoundTrips", "script_names"]

# How long the reader may take to catch up with the end marker.
_DRAIN_TIMEOUT = 60.0


def script_names(scripts: Mapping[str, str]) -> Dict[str, str]:
    """Return the SHA1 -> name of Lua scripts given by name, as EVALSHA names them."""
    return {hashlib.sha1(source.encode()).hexdigest(): name for name, source in scripts.items()}


class RoundTrips:
    """Counts, between :meth:`start` and :meth:`stop`, the commands clients of one namespace send.

    Args:
        url: the Redis server.
        namespace: what every key, channel or argument of the run contains.
        scripts: SHA1 -> name, so that EVALSHA shows as ``EVALSHA ENQUEUE``.

    Use it from one thread: ``start()``, the run, ``stop()``, then
    :meth:`by_command`.
    """

    def __init__(self, url: str, namespace: str, scripts: Optional[Mapping[str, str]] = None
                 ) -> None:
        import redis

        self._client = redis.Redis.from_url(url, protocol=2)
        self._namespace = namespace.encode()
        self._scripts = dict(scripts or {})
        token = uuid.uuid4().hex
        self._begin, self._end = f"begin-{token}".encode(), f"end-{token}".encode()
        self._lines: List[bytes] = []
        self._stack = ExitStack()
        self._monitor: Any = None
        self._done = threading.Event()
        self._failure: Optional[BaseException] = None

    def start(self) -> None:
        """Begin monitoring; returns once the window's first marker is in."""
        self._monitor = self._stack.enter_context(self._client.monitor())
        threading.Thread(target=self._read, name="round-trips", daemon=True).start()
        self._client.echo(self._begin)

    def stop(self) -> None:
        """End the window; returns once every command in it has been read.

        Raises:
            TimeoutError: the monitor did not catch up within a minute.
            redis.RedisError: the monitor's connection failed.
        """
        self._client.echo(self._end)
        finished = self._done.wait(_DRAIN_TIMEOUT)
        self._stack.close()  # disconnects the monitor, which ends the reader if need be
        self._client.close()
        if not finished:
            raise TimeoutError(f"MONITOR did not reach the end of the window in "
                               f"{_DRAIN_TIMEOUT:.0f} s")
        if self._failure is not None:
            raise self._failure

    def _read(self) -> None:
        # Raw lines only: parsing waits until the window is closed, so the
        # reader keeps up with the server while the run goes on.
        connection = self._monitor.connection
        inside = False
        try:
            while True:
                line = connection.read_response()
                if not isinstance(line, bytes):
                    continue
                if not inside:
                    inside = self._begin in line
                    continue
                if self._end in line:
                    return
                self._lines.append(line)
        except Exception as exc:  # handed to stop(), not lost in a thread
            if not self._done.is_set():
                self._failure = exc
        finally:
            self._done.set()

    def by_command(self) -> Dict[str, int]:
        """Return how many commands of each name the namespace's clients sent in the window."""
        sent: Dict[bytes, List[bytes]] = defaultdict(list)  # client address -> its commands
        ours = set()
        for line in self._lines:
            client, _, command = line.partition(b"] ")
            address = client.rpartition(b" ")[2]
            if address == b"lua":
                continue  # a command a script ran: part of its EVALSHA's round trip
            sent[address].append(command)
            if self._namespace in command:
                ours.add(address)
        counts: Counter = Counter()
        for address in ours:
            queued = False  # inside MULTI ... EXEC: sent in one write, answered in one read
            for command in sent[address]:
                name = self._name(command)
                if name == "MULTI":
                    queued = True
                elif name == "EXEC":
                    queued = False
                    counts["MULTI/EXEC"] += 1
                elif not queued:
                    counts[name] += 1
        return dict(counts.most_common())

    def _name(self, command: bytes) -> str:
        words = command.split(b'"')
        name = words[1].decode().upper() if len(words) > 1 else "?"
        if name == "EVALSHA" and len(words) > 3:
            return f"EVALSHA {self._scripts.get(words[3].decode(), words[3].decode()[:8])}"
        return name
