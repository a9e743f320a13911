"""A queue's lifecycle: new, running, closed; starting, shutting down, breaking.

:class:`Lifecycle` owns the one piece of state every public method checks
(may this queue be used?). It starts the queue: the broker opened, the
consumers started, what a durable broker's last run left taken back, and
only then ready, so a submit racing the first one waits and never writes
what recovery would read as left over. It runs the shutdown sequence, like
``ThreadPoolExecutor.shutdown``: a flag under a lock, then the broker
closed, then what must be cancelled cancelled, then the consumers told to
stop, then the threads joined, then the broker's own threads and files let
go. It holds the queue's parts but not the queue: a ``TaskQueue`` that is
dropped without ``shutdown()`` is collected, and its finalizer winds the
parts down here (as ``ThreadPoolExecutor``'s workers watch a weak
reference to their executor), so its threads do not outlive it.

Shutdown waits only when it may. Called from a thread the queue owns (a
worker, the timer or the broker's thread, where a done callback or a
listener runs), waiting would wait for itself: the winding down then goes on
in the background. Time limits keep being enforced while attempts still
run: the timer stops only after the last worker has ended.
"""

from __future__ import annotations

import logging
import threading
import weakref
from time import monotonic
from typing import TYPE_CHECKING, Callable, List, Optional

from . import process
from .errors import QueueBroken, QueueClosed

if TYPE_CHECKING:
    from .brokers.base import Broker, Consumer
    from .periodic import Periodic
    from .scheduler import Scheduler
    from .settle import Settle
    from .supervisor import Supervisor
    from .task import TaskHandle

__all__ = ["Lifecycle"]

log = logging.getLogger(__name__)

NEW, OPEN, RUNNING, CLOSED = "new", "open", "running", "closed"


class Lifecycle:
    """Starts and winds down one queue's parts; every method is safe from any thread.

    Args:
        name: the queue's name, for messages and the wind-down thread.
        pid: the process that made the queue.
        broker, settle, timer: the queue's parts.

    Its :attr:`supervisor` is set once made (the supervisor is told of a
    broken pool through :meth:`broken`, so it comes second).
    """

    supervisor: Supervisor
    """The queue's supervisor of worker threads."""

    def __init__(self, name: str, pid: int, broker: Broker, settle: Settle,
                 timer: Scheduler) -> None:
        self._name = name
        self._pid = pid
        self._broker = broker
        self._settle = settle
        self._timer = timer
        self._lock = threading.Lock()
        self.phase = NEW
        """``"new"``, ``"open"`` (taking tasks, not running them here), ``"running"``
        or ``"closed"``."""
        self.consuming = False
        """Whether this process runs the queue's workers."""
        self.ready = False
        """True only while accepting: the one check on submit's fast path."""
        self.forked = False
        """True in a forked child: the queue's threads do not exist here."""
        self._recovery: Optional[threading.Event] = None  # set once recovery has run
        self._recovering_thread: Optional[int] = None
        self._broken: Optional[QueueBroken] = None
        self._stopping = False
        self._wind_down: Optional[threading.Thread] = None
        self.periodics: weakref.WeakSet[Periodic] = weakref.WeakSet()
        """The queue's live Periodics (a cancelled one is held by nothing)."""

    # -- starting -----------------------------------------------------------------------

    def start(self, consume: bool = True) -> Optional[List[TaskHandle]]:
        """Get the queue going, taking back what a durable broker's last run left.

        Args:
            consume: start the workers too. A queue on a shared broker
                consumes only where its ``start()`` is called: a submit
                opens only the broker's producer side (``consume=False``).

        Returns:
            If this call ran the broker's recovery, the handles of the tasks
            it took back (see :meth:`Broker.recover`); None otherwise. Recovery
            runs once, on the first start that gets past opening and starting
            consumers; a call racing it returns once it has run.

        Raises:
            QueueClosed: the queue was shut down, is broken, or belongs to a parent process.
            JournalError: a journal could not be read back (the queue runs on).
        """
        with self._lock:
            self.check_usable()
            if self.phase == NEW:
                self._broker.open()
                self.phase = OPEN
            if consume and not self.consuming:
                self._timer.start()
                self._broker.start()  # before the workers: they receive from it at once
                self.supervisor.start()
                self.consuming = True
                self.phase = RUNNING
            recovery, ours = self._recovery, self._recovery is None
            if ours:
                recovery = self._recovery = threading.Event()
                self._recovering_thread = threading.get_ident()
        if not ours:
            # A journal takes every row in its file for one left by the last
            # run: no submit may commit one until recovery has read them. So
            # a racing first submit waits for it, outside the lock (shutdown
            # and broken() take the lock meanwhile). Not in the recovering
            # thread itself (a signal handler that submits): it would wait
            # for itself.
            if self._recovering_thread != threading.get_ident():
                recovery.wait()  # type: ignore[union-attr]
            return None
        try:
            # Outside the lock: a shutdown meanwhile closes the broker, and
            # recovery stops there (the rest stays in the file). No events
            # are sent here: they run user code, which the caller sends them to.
            return self._broker.recover()
        finally:
            with self._lock:
                # A failed recovery leaves the rows for next time; a shutdown
                # or a break meanwhile has said not ready for good.
                self.ready = self.phase != CLOSED and self._broken is None and not self.forked
            self._recovering_thread = None
            recovery.set()  # type: ignore[union-attr]

    def check_usable(self) -> None:
        """Raise the error a caller gets from a queue it may not use (none if it may)."""
        self.refuse_if_forked()
        if self._broken is not None:
            raise self._broken
        if process.exiting():
            # Caused by the interpreter's exit, in CPython's own words: code
            # that catches RuntimeError catches it (QueueClosed is one), a
            # logged traceback shows the cause, and the error raised is still
            # a QueueClosed. (CPython 3.10+ prints an atexit callback's error
            # without its cause: there only the QueueClosed line shows.)
            raise self.closed_error() from RuntimeError(process.EXIT_MESSAGE)
        if self.phase == CLOSED:
            raise self.closed_error()

    def closed_error(self) -> QueueClosed:
        """The error a producer gets from this queue once it is closed."""
        if self._broken is not None:
            return self._broken
        if process.exiting():
            return QueueClosed(f"{self._name}: {process.EXIT_MESSAGE}")
        return self._broker.closed_error()

    def refuse_if_forked(self) -> None:
        """Raise QueueClosed in a forked child (touching no lock: it may be held by a ghost)."""
        if self.forked:
            raise QueueClosed(
                f"{self._name} was created in process {self._pid} and cannot be used "
                "in a forked child; create a new TaskQueue in the child")

    def disown_after_fork(self) -> None:
        """In a forked child: refuse all use from now on, without touching any lock."""
        self.forked = True
        self.ready = False
        self._lock = threading.Lock()
        self._broker.disown_after_fork()

    def owns_current_thread(self) -> bool:
        """Whether the caller is a thread of this queue (a worker, its timer, its broker's)."""
        current = threading.current_thread()
        return (self.supervisor.on_worker_thread() or current is self._wind_down
                or current in self._timer.threads() or current in self._broker.threads())

    # -- breaking ---------------------------------------------------------------------

    def broken(self, consumer: Consumer, exc: BaseException) -> None:
        """An initializer raised: refuse new work, fail what waits, stop the workers.

        As with ``ThreadPoolExecutor``: every task not started fails with
        the :class:`QueueBroken` error, and so does every later submit. On a
        shared broker what waits is the other workers' to run: only this
        process stops (its handles still end with the tasks' outcomes).
        """
        with self._lock:
            if self._broken is not None:
                return
            self._broken = QueueBroken(
                f"{self._name}: a thread initializer failed ({type(exc).__name__}: {exc}); "
                "the pool is not usable any more")
            self.ready = False
            self._broker.close()
        if not self._broker.shared:
            for message in self._broker.seal():
                self._settle.refused(consumer, message, self._broken)
            consumer.flush()  # the acknowledgements of what it failed count now
        self._broker.stop_consumers()

    # -- shutting down ----------------------------------------------------------------

    def shutdown(self, wait: bool, cancel_futures: bool, timeout: Optional[float]) -> None:
        """Stop accepting and wind down (see ``TaskQueue.shutdown``); idempotent."""
        deadline = None if timeout is None else monotonic() + timeout
        with self._lock:
            if self.forked:
                return  # the parent's threads do not exist in this process
            self.ready = False
            self._broker.close()
            started = self.phase != NEW
            self.phase = CLOSED
            earlier = self._wind_down
        if not started:
            self._broker.shutdown()
            return
        for periodic in list(self.periodics):
            periodic.cancel()
        # On a shared broker, what has not started is the other workers' to
        # run: only an explicit cancel_futures takes it out of the queue.
        local = not self._broker.shared
        if cancel_futures or (timeout == 0 and local):
            # Before returning, whatever the caller does next: the deadline
            # has passed (or was asked for), so nothing more may start.
            self.cancel_not_started()
        if not wait or self.owns_current_thread():
            self._wind_down_in_background(deadline)
            return
        if earlier is not None:  # an earlier shutdown(wait=False) is still cancelling
            earlier.join(None if deadline is None else max(0.0, deadline - monotonic()))
        remaining = None if deadline is None else max(0.0, deadline - monotonic())
        if not self._broker.wait_idle(remaining) and local:
            self.cancel_not_started()
        self._stop(deadline)

    def cancel_not_started(self) -> None:
        """Cancel every task that has not started: queued, or waiting for a due time."""
        self._settle.cancel_all(self._broker.seal())

    def forget(self) -> None:
        """The queue was dropped without ``shutdown()``: drain in the background, then end."""
        try:
            self.shutdown(wait=False, cancel_futures=False, timeout=None)
        except Exception:  # pragma: no cover - at interpreter teardown
            pass

    def _stop(self, deadline: Optional[float]) -> None:
        # Only after the drain: the consumers may stop. The timer and the
        # broker's threads go once the workers have ended, so that time
        # limits are enforced for as long as an attempt runs. A later call
        # waits for the workers again (at most until its own deadline), so
        # that shutdown() after shutdown(timeout=...) still waits for them.
        with self._lock:
            first, self._stopping = not self._stopping, True
        if first:
            self._broker.stop_consumers()
        if self.supervisor.join(deadline):
            self._release()
        elif first:
            self._in_background(self._join_then_release, "finish")

    def _join_then_release(self) -> None:
        self.supervisor.join(None)
        self._release()

    def _release(self) -> None:
        # Idempotent: the timer's stop and the broker's shutdown are.
        self._timer.stop()
        self._broker.shutdown()

    def _wind_down_in_background(self, deadline: Optional[float]) -> None:
        def wind_down() -> None:
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            if not self._broker.wait_idle(remaining) and not self._broker.shared:
                self.cancel_not_started()
            self._stop(None)

        with self._lock:
            if self._wind_down is not None:
                return
            # Known as the queue's own before it runs (a done callback it runs
            # may call shutdown(), which must then not wait for this thread),
            # and started before the lock goes (a later shutdown joins it).
            self._wind_down = self._in_background(wind_down, "shutdown", start=False)
            self._wind_down.start()

    def _in_background(self, target: Callable[[], None], what: str, *,
                       start: bool = True) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"{self._name}-{what}", daemon=True)
        if start:
            thread.start()
        return thread
