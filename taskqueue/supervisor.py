"""The supervisor: starts, replaces and abandons a pool's worker threads.

A :class:`Supervisor` keeps a fixed number of :class:`~taskqueue.worker.Worker`
threads alive, each with a consumer of the queue's broker and a tally of
its own (:class:`~taskqueue.stats.WorkerTally`). It runs the pool's
initializer in each new thread; if that raises, the pool is broken (as
``ThreadPoolExecutor``'s is) and ``on_broken`` is told. When a worker's
own code fails, its consumer puts back what it held and a new thread takes
the old one's place and tally. When an attempt runs past its time limit
and its thread does not stop (see :mod:`taskqueue.timelimit`), the
supervisor settles the attempt on its behalf, abandons the thread and
starts a new one. Either way the pool keeps its size and its counts.

It owns the set of worker threads: "is this one of the pool's workers?"
(a worker may submit past the bound; ``join()`` from one is refused) is
answered here, without a lock.
"""

from __future__ import annotations

import logging
import threading
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

from .errors import TimeLimitExceeded
from .stats import WorkerTally
from .timelimit import Watchdog
from .validate import wait_seconds
from .worker import Worker

if TYPE_CHECKING:
    from .brokers.base import Broker, Consumer
    from .events import Listeners
    from .scheduler import Scheduler
    from .settle import Settle

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

_current_thread = threading.current_thread


class Supervisor:
    """Keeps ``workers`` worker threads running for one queue.

    Args:
        broker: the queue's broker (each worker gets a consumer of it).
        settle: what each outcome means.
        timer: the queue's timer, on which the watchdog checks time limits.
        listeners: told when attempts start.
        workers: how many threads.
        thread_name: the name of the thread with a given index.
        clock: the queue's monotonic clock.
        time_limit: the default time limit of an attempt (None: none).
        grace: seconds a thread past its limit gets to stop before it is abandoned.
        initializer: called in each new worker thread before it runs
            anything, with ``initargs`` (as ``ThreadPoolExecutor``'s).
        on_broken: ``(consumer, exception)``, told once if an initializer raised.

    ``start`` and the replacing are serialised by one lock; every other
    method is safe from any thread without it.
    """

    def __init__(self, broker: Broker, settle: Settle, timer: Scheduler, listeners: Listeners,
                 *, workers: int, thread_name: Callable[[int], str], clock: Callable[[], float],
                 time_limit: Optional[float], grace: float,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Tuple[Any, ...] = (),
                 on_broken: Callable[[Consumer, BaseException], None]) -> None:
        self._broker = broker
        self._settle = settle
        self._listeners = listeners
        self.count = workers
        """How many worker threads it keeps (set before :meth:`start`)."""
        self._thread_name = thread_name
        self._clock = clock
        self._time_limit = time_limit
        self._initializer = initializer
        self._initargs = initargs
        self._on_broken = on_broken
        self._watchdog = Watchdog(timer.schedule, clock, grace, self._abandon)
        self._lock = threading.Lock()
        self._workers: List[Worker] = []
        self._tallies: List[WorkerTally] = []
        # The worker threads, replaced whole (never changed in place), so
        # read without a lock. Thread objects, not idents: the OS reuses idents.
        self._threads: frozenset[threading.Thread] = frozenset()

    def start(self) -> None:
        """Start every worker thread (once)."""
        with self._lock:
            for index in range(self.count):
                tally = WorkerTally()
                self._tallies.append(tally)
                self._start_worker(index, tally)

    @property
    def tallies(self) -> Sequence[WorkerTally]:
        """Every worker's tally, replaced workers' included (their counts carry on)."""
        return tuple(self._tallies)

    def on_worker_thread(self) -> bool:
        """Whether the caller is one of this pool's worker threads."""
        return _current_thread() in self._threads

    def alive(self) -> List[threading.Thread]:
        """The worker threads still running."""
        with self._lock:
            return [worker.thread for worker in self._workers if worker.thread.is_alive()]

    def join(self, deadline: Optional[float]) -> bool:
        """Wait for every worker thread to end, at most until ``deadline`` (monotonic).

        Returns:
            True if they all ended.
        """
        while True:
            alive = self.alive()
            if not alive:
                return True
            for thread in alive:
                if thread is _current_thread():
                    return False  # a worker waits for its siblings, never itself
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                thread.join(None if remaining is None else wait_seconds(remaining))

    # -- a worker's start, crash and abandonment -------------------------------------

    def _start_worker(self, index: int, tally: WorkerTally) -> None:
        # Called with self._lock held.
        worker = Worker(
            index, self._broker.consumer(tally), self._settle,
            clock=self._clock,
            listeners=self._listeners,
            on_start=self._initialize,
            on_crash=self._crashed,
            arm=self._watchdog.arm,
            time_limit=self._time_limit,
            name=self._thread_name(index),
        )
        self._watchdog.watch(worker.guard)
        # Known as a worker before it runs anything: its first task may submit.
        self._threads = self._threads | {worker.thread}
        self._workers.append(worker)
        worker.thread.start()

    def _initialize(self, worker: Worker) -> bool:
        # In the new thread, before it runs anything.
        if self._initializer is None:
            return True
        try:
            self._initializer(*self._initargs)
        except BaseException as exc:
            log.critical("the initializer of worker %s raised; the pool is broken and runs "
                         "nothing more", worker.thread.name, exc_info=exc)
            self._on_broken(worker.consumer, exc)
            return False
        return True

    def _crashed(self, worker: Worker, exc: BaseException) -> None:
        # On the dying thread. What its consumer held goes back (it may run
        # twice, it is never dropped); a new thread takes its place and tally.
        log.critical("worker %s died; its task is requeued and a new worker started",
                     worker.thread.name, exc_info=exc)
        worker.consumer.crashed()
        self._replace(worker)

    def _abandon(self, worker: Worker, exc: TimeLimitExceeded) -> None:
        # On the timer's thread, once a worker's thread ran past its time
        # limit and did not stop: the attempt fails (and may retry) on its
        # behalf, and a new thread takes its place and tally.
        consumer = worker.consumer
        message = consumer.current
        log.error("task %s (%s) ran past its time limit and thread %s did not stop; "
                  "the thread is abandoned and a new worker started",
                  message and message.name, message and message.id, worker.thread.name)
        if message is not None:
            self._settle.failed(consumer, message, exc)
        consumer.crashed()  # pays its acknowledgement, puts back a retry it would have kept
        self._replace(worker)

    def _replace(self, worker: Worker) -> None:
        with self._lock:
            self._workers.remove(worker)
            self._threads = self._threads - {worker.thread}
            try:
                self._start_worker(worker.index, worker.consumer.tally)
            except RuntimeError:  # at interpreter exit no thread can start
                log.error("could not replace worker %s", worker.thread.name)
