"""The whole process: interpreter exit and fork.

Every queue registers here when it is made. At interpreter exit, the queues
still open are drained together: first each stops its periodic runs, then
all are drained until every one is idle at once, and only then is any of
them shut down. A script that forgets ``shutdown()`` still gets its work
done, as with ``ThreadPoolExecutor``, and a pipeline (a task of queue A
submitting to queue B) loses no hand-off whichever queue was made first.
After that, :data:`exiting` is true: a submit says "cannot schedule new
futures after interpreter shutdown", as CPython's executors do.

In a forked child, every inherited queue is told that its threads do not
exist there.

A queue offers ``owner_pid``, ``shutdown()``, ``disown_after_fork()`` and,
for the drain, ``_exit_drain()``: a ``(stop_periodics, idle, join)`` triple
(see :func:`drain`), or None for a queue with nothing to drain in this
process (never started, or only submitting to a shared broker: its tasks
run elsewhere, and exit does not wait for them).
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Any, Callable, List, Sequence, Tuple

__all__ = ["register", "drain", "exiting", "EXIT_MESSAGE"]

EXIT_MESSAGE = "cannot schedule new futures after interpreter shutdown"
"""What a submit says once the interpreter-exit drain has closed the queues."""

_live: weakref.WeakSet[Any] = weakref.WeakSet()
_live_lock = threading.Lock()
_state = {"exiting": False}


def exiting() -> bool:
    """Whether the interpreter-exit drain has run: no queue takes work any more."""
    return _state["exiting"]


def register(queue: Any) -> None:
    """Remember ``queue`` (weakly) for interpreter exit and fork."""
    with _live_lock:
        _live.add(queue)


Drainable = Tuple[Callable[[], object], Callable[[], Tuple[bool, int]], Callable[[], object]]


def drain(queues: Sequence[Drainable]) -> None:
    """Drain queues together until all are idle at once.

    Each queue is ``(stop_periodics, idle, join)``: ``idle()`` returns
    whether nothing is unfinished and how many tasks were ever submitted;
    ``join()`` waits until nothing is. A pass joins every queue in turn;
    the drain ends after a pass in which each was idle and no submission
    happened anywhere, so that work handed from one queue to another (in
    either direction) is waited for too.
    """
    for stop_periodics, _, _ in queues:
        stop_periodics()
    while True:
        before = [idle() for _, idle, _ in queues]
        for _, _, join in queues:
            join()
        after = [idle() for _, idle, _ in queues]
        if all(done for done, _ in after) and after == before:
            return


def _drain_at_exit() -> None:
    # atexit callbacks run after non-daemon threads were joined, while the
    # daemon workers are still alive: the last moment they can drain.
    with _live_lock:
        queues = [queue for queue in _live if queue.owner_pid == os.getpid()]
    plans = [(queue, queue._exit_drain()) for queue in queues]
    drain([plan for _, plan in plans if plan is not None])
    _state["exiting"] = True
    for queue, plan in plans:
        # A queue with nothing to drain here (one that only submits to a
        # shared broker) does not wait for tasks that run elsewhere.
        queue.shutdown(wait=plan is not None)


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
