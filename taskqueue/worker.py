"""The worker loop: take a task, run one attempt, report the outcome.

A worker holds no policy. It is handed its queue, a clock and the pool's
callbacks, and does four things in a loop: get a handle, start an attempt,
call the task, and report what happened (``report_success`` /
``report_failure``). The pool decides what the outcome means.

A task's exceptions of any kind, ``BaseException`` included, fail that
attempt and nothing more. If the worker's own code fails (a bug in
taskqueue, or a fault injected between a task and its acknowledgement), the
thread ends through ``on_crash``, which puts the in-flight task back and
starts a replacement: the task may run twice, it is never dropped.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from .events import EventKind, Listeners
from .stats import WorkerTally

if TYPE_CHECKING:
    from .task import TaskHandle
    from .workqueue import WorkQueue

__all__ = ["Worker", "STOP"]

STOP = object()
"""The sentinel that stops a worker; each worker passes it on to the next."""


class Worker:
    """One worker thread of a pool.

    Args:
        index: the worker's number in the pool (part of its thread name).
        work: the queue to take handles from.
        tally: the counters this worker (alone) writes.
        clock: returns the current time in seconds.
        listeners: told when an attempt starts.
        report_success: ``(handle, result, tally)``, called after an attempt returned.
        report_failure: ``(handle, exception, tally)``, called after one raised.
        on_crash: ``(worker, exception)``, called from the dying thread if
            the worker's own code raised.
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
        name: str,
    ) -> None:
        self.index = index
        self.tally = tally
        self.current: Optional[TaskHandle] = None
        """The handle whose attempt this worker has started and not yet reported."""
        self._work = work
        self._clock = clock
        self._listeners = listeners
        self._report_success = report_success
        self._report_failure = report_failure
        self._on_crash = on_crash
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # taskqueue's own code failed, not a task
            self._on_crash(self, exc)

    def _loop(self) -> None:
        get = self._work.get
        clock = self._clock
        tally = self.tally
        listeners = self._listeners
        while True:
            handle = get()
            if handle is STOP:
                self._work.wake_workers(STOP)  # pass it on to a sibling
                return
            if not handle._begin():
                continue  # cancelled while queued; counted when it was cancelled
            self.current = handle
            tally.running = 1
            started = clock()
            tally.waits.append(started - (handle._enqueued_at or handle._submitted_at))
            if listeners.callbacks:
                listeners.emit(EventKind.STARTED, handle)
            try:
                kwargs = handle._kwargs
                if kwargs:
                    result = handle._fn(*handle._args, **kwargs)  # type: ignore[misc]
                else:
                    result = handle._fn(*handle._args)  # type: ignore[misc]
            except BaseException as exc:  # any error fails this attempt only
                self._timed(started)
                self._report_failure(handle, exc, tally)
            else:
                self._timed(started)
                self._report_success(handle, result, tally)
            finally:
                # Drop this thread's references to the task, its result and
                # its error before blocking on the next get(): otherwise an
                # idle worker keeps the last task's data alive.
                handle = result = exc = kwargs = None  # type: ignore[assignment]
            self.current = None

    def _timed(self, started: float) -> None:
        ended = self._clock()
        self.tally.runs.append(ended - started)
        self.tally.ends.append(ended)
