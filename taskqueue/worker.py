"""The worker loop: take a task, run one attempt, report the outcome.

A worker holds no policy. It is handed its queue, a clock and the pool's
callbacks, and does four things in a loop: get a handle, start an attempt,
call the task, and report what happened (``report_success`` /
``report_failure``). The pool decides what the outcome means; it may leave
an immediate retry to the same worker (``handle._rerun_here``), which then
runs it next instead of taking a new handle. A task that succeeded is
marked done on the queue by its worker, in the same trip through the
queue's mutex that takes the next handle.

A task's exceptions of any kind, ``BaseException`` included, fail that
attempt and nothing more. If the worker's own code fails (a bug in
taskqueue, or a fault injected between a task and its acknowledgement), the
thread ends through ``on_crash``, which puts the in-flight task back and
starts a replacement: the task may run twice, it is never dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import TimeLimitExceeded
from .events import EventKind, Listeners
from .stats import WorkerTally
from .timelimit import AttemptGuard

if TYPE_CHECKING:
    from .task import TaskHandle
    from .workqueue import WorkQueue

__all__ = ["Worker", "STOP"]

log = logging.getLogger(__name__)

class _Stop:
    """The sentinel that stops a worker; each worker passes it on to the next."""

    _priority = float("-inf")  # queued behind every task

    def __repr__(self) -> str:
        return "STOP"


STOP = _Stop()


class _Abandoned(BaseException):
    """Raised in a worker whose thread the watchdog gave up on: it must stop."""


class Worker:
    """One worker thread of a pool.

    Args:
        index: the worker's number in the pool (part of its thread name).
        work: the queue to take handles from.
        tally: the counters this worker (alone) writes.
        clock: returns the current time in seconds.
        listeners: told when an attempt starts.
        report_success: ``(handle, result, tally)``, called after an attempt
            returned; the task is then marked done on the queue by the worker
            (with its next get, see :attr:`unacknowledged`).
        report_failure: ``(handle, exception, tally)``, called after one raised.
        on_crash: ``(worker, exception)``, called from the dying thread if
            the worker's own code raised.
        arm: ``(guard, deadline)``, called when an attempt with a time limit starts.
        time_limit: the default time limit of an attempt (None: no limit).
        name: the thread's name.
    """

    def __init__(
        self,
        index: int,
        work: WorkQueue,
        tally: WorkerTally,
        *,
        clock: Callable[[], float],
        listeners: Listeners,
        report_success: Callable[[TaskHandle, Any, WorkerTally], None],
        report_failure: Callable[[TaskHandle, BaseException, WorkerTally], None],
        on_crash: Callable[[Worker, BaseException], None],
        arm: Callable[[AttemptGuard, float], None],
        time_limit: Optional[float],
        name: str,
    ) -> None:
        self.index = index
        self.tally = tally
        self.current: Optional[TaskHandle] = None
        """The handle whose attempt this worker has started and not yet reported."""
        self.unacknowledged = 0
        """Tasks this worker saw succeed and has not yet marked done on the queue."""
        self._work = work
        self._clock = clock
        self._listeners = listeners
        self._report_success = report_success
        self._report_failure = report_failure
        self._on_crash = on_crash
        self._arm = arm
        self._time_limit = time_limit
        self.guard = AttemptGuard(self)
        """This worker's side of time limits (see :mod:`taskqueue.timelimit`)."""
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        self.guard.ident = threading.get_ident()
        try:
            self._loop()
        except BaseException as exc:  # taskqueue's own code failed, not a task
            self._on_crash(self, exc)

    def _loop(self) -> None:
        finish_and_get = self._work.finish_and_get
        clock = self._clock
        tally = self.tally
        listeners = self._listeners
        emit, started_kind = listeners.emit, EventKind.STARTED  # looked up once, used per task
        default_limit = self._time_limit
        again: Optional[TaskHandle] = None
        while True:
            if again is not None:
                handle, again = again, None
                if self._work.sealed:  # shutdown is cancelling what has not started
                    handle.cancel()
                    self.current = None
                    continue
            else:
                # A success is marked done on the queue here, with the next
                # get: one trip through the queue's mutex per task, not two.
                finished, self.unacknowledged = self.unacknowledged, 0
                handle = finish_and_get(finished)
            if handle is STOP:
                self._work.wake_workers(STOP)  # pass it on to a sibling
                return
            if not handle._begin():
                continue  # cancelled while queued; counted when it was cancelled
            self.current = handle
            tally.running = 1
            if handle._attempts > 1:
                tally.retried += 1
            started = clock()
            tally.waits.append(started - (handle._enqueued_at or handle._submitted_at))
            if listeners.callbacks:
                emit(started_kind, handle)
            limit = handle._time_limit or default_limit
            try:
                if limit is not None:
                    result = self._call_limited(handle, started + limit)
                elif handle._kwargs:
                    result = handle._fn(*handle._args, **handle._kwargs)  # type: ignore[misc]
                else:
                    result = handle._fn(*handle._args)  # type: ignore[misc]
            except _Abandoned:
                log.warning("abandoned thread %s came back from %r after its time limit; "
                            "its late outcome is ignored", self.thread.name, handle)
                return  # a new worker has taken this one's place
            except BaseException as exc:  # any error fails this attempt only
                ended = clock()
                tally.runs.append(ended - started)
                tally.ends.append(ended)
                self._report_failure(handle, exc, tally)
                if handle._rerun_here:  # an immediate retry, left to this worker
                    handle._rerun_here = False
                    again = handle
            else:
                ended = clock()
                tally.runs.append(ended - started)
                tally.ends.append(ended)
                self._report_success(handle, result, tally)
                # Owed to the queue from here on, paid with the next get (or
                # by the crash handler): both marks set together, no call between.
                handle._acked = True
                self.unacknowledged += 1
            finally:
                # Drop this thread's references to the task, its result and
                # its error before blocking on the next get(): otherwise an
                # idle worker keeps the last task's data alive.
                handle = result = None  # type: ignore[assignment]
            if again is None:  # an immediate retry stays this worker's own
                self.current = None

    def _call_limited(self, handle: TaskHandle, deadline: float) -> Any:
        # The watchdog may raise TimeLimitExceeded in this thread while the
        # task runs, or abandon the thread; disarm() settles which of the two
        # owns the outcome. The exception can also be delivered just after
        # the task returned, before disarm(): then it is still this attempt's.
        guard = self.guard
        try:
            try:
                # Inside the try: the exception can arrive as arm() returns,
                # and the guard must then still be disarmed.
                self._arm(guard, deadline)
                if handle._kwargs:
                    return handle._fn(*handle._args, **handle._kwargs)  # type: ignore[misc]
                return handle._fn(*handle._args)  # type: ignore[misc]
            finally:
                if not guard.disarm():
                    raise _Abandoned()
        except TimeLimitExceeded:
            if not guard.disarm():
                raise _Abandoned() from None
            raise
