"""Periodic work: run a task every so many seconds, at a fixed rate.

Runs are due at ``start + k * interval`` for k = 1, 2, ...: the rate does
not drift however long each run or each hand-over takes. A run that is still
going (or waiting for a retry) when the next one falls due is not stacked up
behind it: that tick is skipped and counted. Each run is an ordinary task,
so retries, stats, events and dead letters apply to it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from .errors import QueueClosed
from .task import Task, TaskHandle

__all__ = ["Periodic", "periodic_task"]

log = logging.getLogger(__name__)


def periodic_task(fn: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Task:
    """The Task each run of ``every(interval, fn, *args, **kwargs)`` submits.

    Raises:
        TypeError: ``fn`` is not callable, or a Task came with arguments.
        ValueError: the Task has a delay or a key (each run is a new task,
            started when the interval says).
    """
    if type(fn) is Task:
        if args or kwargs:
            raise TypeError("every(interval, task) takes no further arguments")
        if fn.delay or fn.key is not None:
            raise ValueError("every() takes a Task without delay or key: the interval "
                             "sets when runs start, and each run is a new task")
        return fn
    if callable(fn):
        return Task(fn, args, kwargs)
    raise TypeError(f"fn must be callable or a Task, got {fn!r}")


class Periodic:
    """A task that runs every ``interval`` seconds until cancelled.

    Made by :meth:`TaskQueue.every`; it stops by itself when its queue shuts
    down. Every method is safe from any thread.

    Args:
        task: the work each run does.
        interval: seconds between due times (> 0).
        submit: submits one run and returns its handle (never blocking).
        schedule: ``schedule(callback, due)`` calls ``callback()`` at ``due``
            and returns a token for ``unschedule``.
        unschedule: ``unschedule(token)`` drops a scheduled callback.
        clock: the clock due times are measured on.
        claim: on a shared broker, ``claim(name, tick, interval) -> bool``
            says whether this process runs tick number ``tick`` (of a grid
            of the wall clock's multiples of ``interval``): every process
            that consumes fires each tick, one of them runs it.
        wall: the wall clock that grid is of (``time.time``).

    Once cancelled, nothing of the queue refers to it any more: the tick it
    had scheduled is dropped at once, not kept until it would have fired.
    """

    def __init__(
        self,
        task: Task,
        interval: float,
        *,
        submit: Callable[[Task], TaskHandle],
        schedule: Callable[[Callable[[], None], float], Any],
        unschedule: Callable[[Any], object],
        clock: Callable[[], float],
        claim: Optional[Callable[[str, int, float], bool]] = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.task = task
        """The work each run does."""
        self.interval = interval
        """Seconds between the due times of two runs."""
        self._submit = submit
        self._schedule = schedule
        self._unschedule = unschedule
        self._clock = clock
        self._claim = claim
        self._lock = threading.Lock()
        self._start = clock()
        self._epoch = 0  # the number of the tick before the first, on a shared grid
        if claim is not None:
            # On a shared broker the grid is the wall clock's multiples of the
            # interval, the same in every process, and each tick is claimed:
            # the process that claims it first runs it.
            now_wall = wall()
            self._epoch = int(now_wall // interval)
            self._start -= now_wall - self._epoch * interval
        self._tick = 1  # the due time now scheduled: start + tick * interval
        self._runs = 0
        self._skipped = 0
        self._cancelled = False
        self._last: Optional[TaskHandle] = None
        with self._lock:
            self._timer = self._schedule(self._fire, self._start + interval)

    @property
    def runs(self) -> int:
        """How many runs have been submitted so far."""
        return self._runs

    @property
    def skipped(self) -> int:
        """How many due times passed without a run, because the last run was not done."""
        return self._skipped

    @property
    def cancelled(self) -> bool:
        """Whether no further runs will be submitted."""
        return self._cancelled

    @property
    def last(self) -> Optional[TaskHandle]:
        """The handle of the latest run, or None before the first."""
        return self._last

    def cancel(self) -> None:
        """Submit no further runs. A run already submitted is left to finish."""
        with self._lock:
            self._cancelled = True
            timer, self._timer = self._timer, None
        if timer is not None:
            self._unschedule(timer)

    def _fire(self) -> None:
        # Runs on the scheduler's thread (only there) at each due time. The
        # submit happens outside the lock: it calls listeners, which may
        # call cancel().
        with self._lock:
            if self._cancelled:
                return
            busy = self._last is not None and not self._last.done()
            if busy:
                self._skipped += 1
                log.debug("periodic %s skipped tick %d: its last run is not done",
                          self.task.name, self._epoch + self._tick)
        ours = busy or self._claim is None or self._claim_tick()
        handle = None if busy or not ours else self._submit_run()
        with self._lock:
            if handle is not None:
                self._last = handle
                self._runs += 1
            self._timer = None
            if not self._cancelled:
                self._timer = self._schedule(self._fire, self._next_due())

    def _claim_tick(self) -> bool:
        # Whether this process runs this tick (another may have claimed it).
        try:
            return self._claim(f"{self.task.name}@{self.interval}", self._epoch + self._tick,  # type: ignore[misc]
                               self.interval)
        except Exception:
            log.exception("periodic %s could not claim its tick; it is skipped here",
                          self.task.name)
            return False

    def _submit_run(self) -> Optional[TaskHandle]:
        try:
            return self._submit(self.task)
        except QueueClosed:
            pass  # the queue shut down: so do we
        except Exception:
            log.exception("periodic %s could not submit a run; it stops", self.task.name)
        self.cancel()
        return None

    def _next_due(self) -> float:
        # The next due time after now; ticks missed while the scheduler was
        # held up count as skipped rather than firing in a burst.
        elapsed = self._clock() - self._start
        following = max(self._tick + 1, math.floor(elapsed / self.interval) + 1)
        if following > self._tick + 1:
            self._skipped += following - self._tick - 1
            log.debug("periodic %s skipped ticks %d to %d: its timer was held up",
                      self.task.name, self._epoch + self._tick + 1, self._epoch + following - 1)
        self._tick = following
        return self._start + following * self.interval

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else f"every {self.interval}s"
        return f"<Periodic {self.task.name!r} {state} runs={self._runs} skipped={self._skipped}>"
