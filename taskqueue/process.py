"""The whole process: interpreter exit and fork.

Every queue registers here when it is made. At interpreter exit, queues
still open are drained (a script that forgets ``shutdown()`` still gets its
work done, as with ``ThreadPoolExecutor``). In a forked child, every
inherited queue is told that its threads do not exist there.

A queue offers ``shutdown()``, ``owner_pid`` and ``disown_after_fork()``.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Any

__all__ = ["register"]

_live: weakref.WeakSet[Any] = weakref.WeakSet()
_live_lock = threading.Lock()


def register(queue: Any) -> None:
    """Remember ``queue`` (weakly) for interpreter exit and fork."""
    with _live_lock:
        _live.add(queue)


def _drain_at_exit() -> None:
    # atexit callbacks run after non-daemon threads were joined, while the
    # daemon workers are still alive: the last moment they can drain.
    with _live_lock:
        queues = list(_live)
    for queue in queues:
        if queue.owner_pid == os.getpid():
            queue.shutdown(wait=True)


def _before_fork() -> None:
    _live_lock.acquire()  # no queue registers half-way through a fork


def _after_fork_in_parent() -> None:
    _live_lock.release()


def _after_fork_in_child() -> None:
    global _live_lock
    _live_lock = threading.Lock()  # the copied one is held by the forking thread
    for queue in list(_live):
        queue.disown_after_fork()
    _live.clear()


atexit.register(_drain_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
