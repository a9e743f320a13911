"""Time limits: interrupt an attempt that runs too long, abandon one that won't stop.

Each worker has an :class:`AttemptGuard`; a :class:`Watchdog` checks the
guards at their deadlines from the scheduler's thread. An attempt past its
deadline gets :class:`TimeLimitExceeded` raised inside its thread as an
asynchronous exception (``PyThreadState_SetAsyncExc``, the technique
Dramatiq uses for thread time limits). Such an exception is delivered only
when the thread next runs Python bytecode: a thread blocked in C (a
``time.sleep``, a socket read without timeout, a long C computation) is not
interrupted. If the thread has not come back within a grace period, the
watchdog abandons it: ``on_abandon`` settles the attempt and replaces the
worker, and the guard makes sure the late thread's result is ignored.

Every change of a guard's state happens under the guard's lock, so the
worker finishing an attempt and the watchdog expiring it cannot both win.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from typing import Any, Callable, Optional

from .errors import TimeLimitExceeded

__all__ = ["AttemptGuard", "Watchdog", "raise_in_thread"]

log = logging.getLogger(__name__)

_IDLE, _RUNNING, _INTERRUPTED, _ABANDONED = "idle", "running", "interrupted", "abandoned"


def raise_in_thread(ident: int, exc_type: Optional[type]) -> bool:
    """Make thread ``ident`` raise ``exc_type`` at its next bytecode; None clears it.

    Returns:
        Whether a thread with that id was found.
    """
    found = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type is not None else None)
    return bool(found)


class AttemptGuard:
    """The time-limit state of one worker's current attempt.

    Args:
        owner: what ``on_abandon`` is told about (the worker).
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.ident: Optional[int] = None
        """The worker thread's id; set by the worker when it starts."""
        self.lock = threading.Lock()
        self.state = _IDLE
        self.deadline = 0.0
        self.abandon_at = 0.0
        self.check_at: Optional[float] = None
        """When the watchdog will next look at this guard (None: no look planned)."""
        self.check: Callable[[], None] = lambda: None  # set by Watchdog.watch

    def disarm(self) -> bool:
        """End the attempt from the worker's side; idempotent.

        Returns:
            False if the watchdog abandoned the attempt: its outcome belongs
            to the watchdog, and the worker must touch nothing more.
        """
        with self.lock:
            if self.state != _RUNNING:
                # The exception may be set but not yet delivered: cancel it, so
                # that it cannot fire later inside the worker's own code.
                raise_in_thread(self.ident, None)  # type: ignore[arg-type]
            if self.state == _ABANDONED:
                return False
            self.state = _IDLE
            return True

    @property
    def abandoned(self) -> bool:
        """Whether the watchdog gave up on this worker's thread."""
        return self.state == _ABANDONED


class Watchdog:
    """Enforces time limits for a pool's workers.

    Args:
        schedule: ``schedule(callback, due)`` runs ``callback()`` at ``due``.
        clock: the clock deadlines are measured on.
        grace: seconds a thread gets to come back after the exception was
            raised in it, before it is abandoned.
        on_abandon: ``on_abandon(owner, exception)``, called from the
            watchdog's thread when a thread is abandoned; it must settle the
            attempt with ``exception`` and replace the worker.
    """

    def __init__(
        self,
        schedule: Callable[[Callable[[], None], float], object],
        clock: Callable[[], float],
        grace: float,
        on_abandon: Callable[[Any, TimeLimitExceeded], None],
    ) -> None:
        self._schedule = schedule
        self._clock = clock
        self._grace = grace
        self._on_abandon = on_abandon

    def watch(self, guard: AttemptGuard) -> None:
        """Prepare ``guard`` to be checked by this watchdog."""
        guard.check = functools.partial(self._check, guard)

    def arm(self, guard: AttemptGuard, deadline: float) -> None:
        """Start an attempt that must end by ``deadline``."""
        with guard.lock:
            guard.state = _RUNNING
            guard.deadline = deadline
            # One planned look per worker is enough, unless this deadline is
            # earlier: the heap holds O(workers) checks, not one per attempt.
            if guard.check_at is None or deadline < guard.check_at:
                guard.check_at = deadline
                self._schedule(guard.check, deadline)

    def _check(self, guard: AttemptGuard) -> None:
        abandon = False
        with guard.lock:
            guard.check_at = None
            now = self._clock()
            if guard.state == _RUNNING:
                if now >= guard.deadline:
                    raise_in_thread(guard.ident, TimeLimitExceeded)  # type: ignore[arg-type]
                    guard.state = _INTERRUPTED
                    guard.abandon_at = now + self._grace
                    self._plan(guard, guard.abandon_at)
                else:
                    self._plan(guard, guard.deadline)
            elif guard.state == _INTERRUPTED:
                if now >= guard.abandon_at:
                    guard.state = _ABANDONED
                    abandon = True
                else:
                    self._plan(guard, guard.abandon_at)
        if abandon:
            self._on_abandon(guard.owner, TimeLimitExceeded(
                f"the attempt ran past its time limit and its thread did not stop "
                f"within {self._grace}s; the thread was abandoned"))

    def _plan(self, guard: AttemptGuard, due: float) -> None:
        # Called with guard.lock held.
        guard.check_at = due
        self._schedule(guard.check, due)
