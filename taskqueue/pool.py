"""TaskQueue: the pool that validates, wires the parts together and serves users.

Producers call :meth:`TaskQueue.submit`, which puts a :class:`TaskHandle`
on a bounded :class:`WorkQueue`; a fixed pool of daemon :class:`Worker`
threads drains it; failed attempts go to the :func:`retry.decide` policy,
and those worth another try wait in the :class:`Scheduler` (with no backoff,
the same worker runs them next, unless a more urgent task waits); the rest
end as dead letters. With ``journal=``, :mod:`taskqueue.durable` writes it
all down and resumes it after a restart.

Every accepted task is marked done on the work queue exactly once, when it
becomes terminal (succeeded, failed or cancelled); ``join`` and the
shutdown drain wait on that count.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from concurrent.futures import Executor
from time import monotonic
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Tuple

from . import process, validate
from .deadletter import DeadLetter, DeadLetterStore
from .durable import JournalSupport, error_text
from .errors import QueueClosed, QueueFull, TimeLimitExceeded
from .events import EventKind, Listener, Listeners
from .journal import Journal, check_durability
from .retry import Backoff, RetryPolicy, RandomSource, check_retry_on, decide
from .mapping import lazy_map
from .periodic import Periodic
from .registry import Registry, TaskFunction
from .scheduler import Scheduler
from .stats import Stats, WorkerTally, snapshot
from .task import Task, TaskHandle, TaskState, callable_name
from .timelimit import Watchdog
from .unique import BUSY, UniqueKeys
from .worker import STOP, Worker
from .workqueue import WorkQueue

__all__ = ["TaskQueue"]

log = logging.getLogger(__name__)

# Looked up once: these are emitted per task while anyone listens.
_SUBMITTED, _SUCCEEDED = EventKind.SUBMITTED, EventKind.SUCCEEDED
_current_thread = threading.current_thread

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"


class TaskQueue(JournalSupport, Executor):
    """A bounded queue drained by a fixed pool of worker threads, with retries.

    A drop-in ``concurrent.futures.Executor``: use it in ``with`` blocks,
    with ``executor.map`` and with ``loop.run_in_executor``.

    Args:
        workers: how many worker threads (>= 1).
        maxsize: how many tasks may wait in the queue before ``submit``
            blocks (backpressure); 0 means no bound.
        name: prefix of the thread names (``f"{name}-worker-{i}"``) and of
            log and error messages.
        retries: default number of retries after a failed first attempt.
        backoff: default delays between attempts; ``Backoff()`` if None.
        retry_on: default exception classes worth a retry.
        submit_timeout: the most seconds ``submit`` waits for room before
            raising :class:`QueueFull`; None waits for ever.
        dead_letter_limit: how many dead letters to keep (oldest dropped).
        time_limit: default seconds an attempt may run before it fails with
            :class:`TimeLimitExceeded` (None: no limit); ``Task.time_limit``
            overrides it.
        time_limit_grace: seconds a thread past its limit gets to stop before
            it is abandoned and replaced.
        clock: the monotonic clock used for backoffs and timings.
        rng: the source of backoff jitter (``random`` if None).
        journal: a file in which every unfinished task is kept (see
            README, "Durable journal"): ``submit`` returns once the task is
            on disk, and tasks left unfinished by a crash run again when a
            queue on the same file starts. Only registered task functions
            (``@queue.task``), with arguments the serializer accepts, can
            be submitted to a journaled queue. Register them before the
            queue starts: that is when the journal is read back.
        durability: ``"normal"`` (survives the process being killed) or
            ``"full"`` (also survives power loss: an fsync per commit group).
        serializer: encodes journaled arguments; anything with
            ``dumps``/``loads`` (``json`` if None).

    Raises:
        TypeError: a parameter has the wrong type.
        ValueError: a parameter is out of range (the message names it).
        JournalLocked: another queue has the journal file open.
        JournalError: the journal file is not a journal, is corrupt, or is
            of a newer schema version.

    Threads start on :meth:`start`, on entering ``with``, or on the first
    submit, whichever comes first. Every public method is safe to call from
    any thread.
    """

    def __init__(
        self,
        workers: int = 4,
        maxsize: int = 1024,
        *,
        name: str = "taskqueue",
        retries: int = 0,
        backoff: Optional[Backoff] = None,
        retry_on: Any = (Exception,),
        submit_timeout: Optional[float] = None,
        dead_letter_limit: int = 10_000,
        time_limit: Optional[float] = None,
        time_limit_grace: float = 0.5,
        clock: Callable[[], float] = monotonic,
        rng: Optional[RandomSource] = None,
        journal: Optional[Any] = None,
        durability: str = "normal",
        serializer: Any = None,
    ) -> None:
        validate.whole_number("workers", workers, minimum=1)
        validate.whole_number("maxsize", maxsize, minimum=0)
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        validate.whole_number("retries", retries, minimum=0)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, got {backoff!r}")
        retry_on = check_retry_on(retry_on)
        self._submit_timeout = validate.optional_seconds("submit_timeout", submit_timeout)
        validate.whole_number("dead_letter_limit", dead_letter_limit, minimum=0)
        self._time_limit = validate.optional_positive_seconds("time_limit", time_limit)
        grace = validate.seconds("time_limit_grace", time_limit_grace)
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        check_durability(durability)
        if serializer is not None and journal is None:
            raise ValueError("serializer is only used with journal=; got no journal")

        self.name = name
        """The queue's name, as given."""
        self._workers = workers
        self._clock = clock
        self._policy = RetryPolicy(retries, backoff or Backoff(), retry_on, rng)
        self._work = WorkQueue(maxsize, name)
        self._scheduler = Scheduler(self._due, clock=clock, name=f"{name}-scheduler")
        self._watchdog = Watchdog(self._scheduler.schedule, clock, grace, self._abandon_worker)
        self._dead = DeadLetterStore(dead_letter_limit)
        self._listeners = Listeners()
        self._lock = threading.Lock()  # guards the lifecycle and the cancelled count
        self._phase = _NEW
        self._ready = False  # True only while accepting: the one check on submit's fast path
        self._forked = False
        self._cancelled = 0
        self._pool: List[Worker] = []
        # Worker threads (replaced, never changed in place: read without a
        # lock). Thread objects, not idents: the OS reuses idents.
        self._worker_threads: frozenset[threading.Thread] = frozenset()
        self._stopping = False
        self._keys = UniqueKeys()
        # Weakly: a running Periodic is held by its scheduled tick; a cancelled
        # one by nothing of the queue's.
        self._periodics: weakref.WeakSet[Periodic] = weakref.WeakSet()
        self._registry = Registry(self.submit, asubmit=self.asubmit)
        self._pid = os.getpid()
        self._on_cancel = self._count_cancelled  # one bound method for every handle
        # A worker of this queue may submit past the bound (it must not wait
        # for room that only workers make); asked only when the queue is full.
        self._exempt = self._on_worker_thread
        self._recovered = 0
        # Opened last, once every argument is known to be good: a locked or
        # invalid file fails here, naming the file, and nothing is left open.
        self._journal: Optional[Journal] = None
        if journal is not None:
            self._journal = Journal(journal, durability=durability, serializer=serializer)
            self._listeners.add(self._journal_started)
        # Known from birth, not from start(): a fork in the middle of start()
        # must still mark this queue as the parent's in the child.
        process.register(self)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> TaskQueue:
        """Start the worker threads; does nothing if they run already.

        Returns:
            This queue, so that ``q = TaskQueue().start()`` reads well.

        Raises:
            QueueClosed: the queue was shut down (or belongs to a parent process).
        """
        with self._lock:
            self._check_usable()
            first = self._phase == _NEW
            if first:
                for index in range(self._workers):
                    self._start_worker(index, WorkerTally())
                self._scheduler.start()
                self._phase = _RUNNING
                self._ready = True
        if first and self._journal is not None:
            self._recover()  # outside the lock: it emits events, which run user code
        return self

    def __enter__(self) -> TaskQueue:
        return self.start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: Optional[float] = None) -> None:
        """Stop accepting tasks and wind the pool down.

        After this, ``submit`` raises :class:`QueueClosed`.

        Args:
            wait: wait for the pool to wind down before returning. Called
                from one of this queue's own workers, the call never waits
                (it would wait for itself) and the winding down goes on in
                the background.
            cancel_futures: cancel every task that has not started (queued,
                or waiting for a retry); running attempts finish, and do not
                retry. Without it, everything accepted is drained, pending
                retries included.
            timeout: drain for at most this many seconds, then cancel what
                has not started and return without waiting for running
                attempts (they finish in the background).

        Raises:
            ValueError: ``timeout`` is negative or NaN.

        Idempotent and safe from any thread: a later call can still cancel
        (``cancel_futures=True``) or wait.
        """
        timeout = validate.optional_seconds("timeout", timeout)
        deadline = None if timeout is None else monotonic() + timeout
        with self._lock:
            if self._forked:
                return  # the parent's threads do not exist in this process
            self._ready = False
            self._work.close()
            started = self._phase != _NEW
            self._phase = _CLOSED
        if not started:
            self._close_journal()
            return
        with self._lock:
            periodics = list(self._periodics)
        for periodic in periodics:
            periodic.cancel()
        if cancel_futures:
            self._cancel_not_started()
        if not wait or self._on_worker_thread():
            self._wind_down_in_background(deadline)
            return
        if not self._work.wait_all_done(timeout):
            self._cancel_not_started()
        self._stop_threads()
        self._join_threads(deadline)
        self._close_journal()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    # -- submitting ----------------------------------------------------------

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Queue ``fn(*args, **kwargs)`` and return its handle at once.

        Blocks while the queue is full (backpressure), at most
        ``submit_timeout`` seconds. A worker thread of this queue never
        blocks on its own queue: its submissions are admitted past the
        bound, so a task may submit follow-up work without deadlocking.

        With a journal, it first waits until the task is committed to the
        journal file, and ``fn`` must be a task function registered on this
        queue (or a Task made by one).

        Args:
            fn: a callable, or a :class:`Task` (then no further arguments).

        Raises:
            TypeError: ``fn`` is not callable, or a Task came with arguments;
                with a journal, ``fn`` is not a registered task function or
                the serializer refuses the arguments (nothing is written).
            QueueFull: no room within ``submit_timeout``.
            QueueClosed: the queue was shut down.
            JournalError: the journal could not record the task.
        """
        if not self._ready:
            self._prepare()
        if type(fn) is not Task and callable(fn) and self._journal is None:
            # The hot path, flat: a plain callable, no options, no journal.
            handle = TaskHandle(fn, args, kwargs or None, callable_name(fn),
                                self._policy, self._on_cancel)
            handle._submitted_at = self._clock()
            self._work.admit(handle, timeout=self._submit_timeout, exempt=self._exempt)
            if self._listeners.callbacks:
                self._listeners.emit(_SUBMITTED, handle)
            return handle
        return self._admit(self._handle_for(fn, args, kwargs), True, self._submit_timeout)

    def submit_nowait(self, fn: Any, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Like :meth:`submit`, but raise :class:`QueueFull` at once when full."""
        if not self._ready:
            self._prepare()
        return self._admit(self._handle_for(fn, args, kwargs), False, None)

    async def asubmit(self, fn: Any, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Like :meth:`submit`, for coroutines: wait for room without blocking the event loop.

        Works from any running event loop. ``await handle`` then gives the
        task's result.

        If the awaiting coroutine is cancelled while it waits for room,
        nothing was submitted and ``CancelledError`` propagates. Once this
        returns, the task is accepted: cancelling a coroutine that awaits the
        handle stops that wait, never the task.

        Raises:
            TypeError: as :meth:`submit`.
            QueueFull: still no room after ``submit_timeout``.
            QueueClosed: the queue was shut down.
        """
        from .aio import submit_when_room  # asyncio is slow to import: only for its users

        return await submit_when_room(  # type: ignore[no-any-return]
            lambda: self.submit_nowait(fn, *args, **kwargs),
            self._work.when_room, QueueFull, self._submit_timeout,
            in_thread=self._journal is not None)  # a commit must not block the loop

    def task(self, fn: Optional[Callable[..., Any]] = None, /, *, name: Optional[str] = None,
             **options: Any) -> Any:
        """Register a function as a task function of this queue; a decorator.

        ``@queue.task`` or ``@queue.task(retries=3, priority=5, ...)`` (any
        :class:`Task` option). The result is a :class:`TaskFunction`: calling
        it runs the function inline; ``.submit(*args, **kwargs)`` queues it
        with those options; ``.options(**changes).submit(...)`` overrides
        them for one submission. Task functions are registered by name
        (``module.qualname`` unless ``name=`` is given) in :attr:`tasks`.

        Raises:
            TypeError: an unknown option, or a value of the wrong type.
            ValueError: the name is already registered, or a value is out of range.
        """
        return self._registry.task(fn, name=name, **options)

    @property
    def tasks(self) -> Mapping[str, TaskFunction[Any]]:
        """The registered task functions, by name (read-only)."""
        return self._registry.tasks

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],  # type: ignore[override]
            timeout: Optional[float] = None, chunksize: int = 1,
            buffersize: Optional[int] = None) -> Iterator[Any]:
        """Return ``fn(*args)`` for each zipped item of ``iterables``, in input order.

        Unlike ``ThreadPoolExecutor.map``, the input is consumed lazily: at
        most ``buffersize`` tasks (default: ``maxsize``, or 1024 for an
        unbounded queue) are in flight, so mapping over an endless
        generator uses bounded memory. The first failed item raises its
        exception when its result is reached; closing the iterator early
        cancels what has not started.

        Args:
            timeout: seconds, from this call, within which every result must
                be ready; ``concurrent.futures.TimeoutError`` otherwise.
            chunksize: accepted for Executor compatibility; ignored.
            buffersize: the most tasks in flight at once (>= 1).

        Raises:
            TypeError, ValueError: a bad ``timeout`` or ``buffersize``, before
                anything is submitted.
        """
        if buffersize is None:
            buffersize = self._work.maxsize or 1024
        submit: Callable[..., TaskHandle] = self.submit
        if isinstance(fn, TaskFunction):  # keep its options (retries, priority, ...)
            submit = self._submit_task_function
        return lazy_map(submit, fn, iterables, timeout=timeout, buffersize=buffersize)

    def _submit_task_function(self, fn: TaskFunction[Any], /, *args: Any) -> TaskHandle:
        return self.submit(fn.task(*args))

    def every(self, interval: float, fn: Any, /, *args: Any, **kwargs: Any) -> Periodic:
        """Run ``fn(*args, **kwargs)`` every ``interval`` seconds until cancelled.

        Fixed rate, measured from now: runs are due at now + k * interval,
        with no drift. A run still going (or retrying) when the next is due
        makes that next one skipped and counted, never stacked up. Each run
        is an ordinary task (retries, stats, dead letters apply); ``fn`` may
        be a :class:`Task` (then no further arguments). Runs stop when the
        queue shuts down.

        Returns:
            The :class:`Periodic`, with ``cancel()``, ``runs`` and ``skipped``.

        Raises:
            TypeError: ``fn`` is not callable, or ``interval`` not a number.
            ValueError: ``interval`` is not > 0, or the Task has a delay or key.
            QueueClosed: the queue was shut down.
        """
        interval = validate.optional_positive_seconds("interval", interval)
        if interval is None:
            raise TypeError("interval must be a number of seconds, got None")
        if type(fn) is Task:
            if args or kwargs:
                raise TypeError("every(interval, task) takes no further arguments")
            if fn.delay or fn.key is not None:
                raise ValueError("every() takes a Task without delay or key: the interval "
                                 "sets when runs start, and each run is a new task")
            task = fn
        elif callable(fn):
            task = Task(fn, args, kwargs)
        else:
            raise TypeError(f"fn must be callable or a Task, got {fn!r}")
        if not self._ready:
            self._prepare()
        periodic = Periodic(task, interval, submit=self._submit_run,
                            schedule=self._scheduler.schedule,
                            unschedule=self._scheduler.cancel, clock=self._clock)
        with self._lock:
            self._periodics.add(periodic)
        return periodic

    def _submit_run(self, task: Task) -> TaskHandle:
        # A periodic run, from the scheduler's thread: it must never block
        # there, so it is admitted past the bound (one run per Periodic at most).
        handle = self._handle_for(task, (), {})
        self._work.admit(handle, bounded=False)
        if self._listeners.callbacks:
            self._listeners.emit(_SUBMITTED, handle)
        return handle

    def _handle_for(self, fn: Any, args: Tuple[Any, ...], kwargs: dict) -> TaskHandle:
        if type(fn) is Task:
            if args or kwargs:
                raise TypeError("submit(task) takes no further arguments; "
                                "put them in Task(fn, args, kwargs)")
            handle = TaskHandle(fn.fn, fn.args, fn.kwargs or None, fn.name,
                                fn.policy(self._policy), self._on_cancel)
            handle._task = fn
            handle._priority = fn.priority
            handle._time_limit = fn.time_limit
            handle._key = fn.key
        elif callable(fn):
            handle = TaskHandle(fn, args, kwargs or None, callable_name(fn),
                                self._policy, self._on_cancel)
        else:
            raise TypeError(f"fn must be callable or a Task, got {fn!r}")
        handle._submitted_at = self._clock()
        return handle

    def _admit(self, handle: TaskHandle, block: bool, timeout: Optional[float]) -> TaskHandle:
        if self._journal is not None and handle._id is None:
            return self._admit_journaled(handle, block, timeout)
        if handle._key is not None:
            return self._admit_unique(handle, block, timeout)
        self._enter(handle, block, timeout)
        return handle

    def _enter(self, handle: TaskHandle, block: bool, timeout: Optional[float]) -> None:
        if handle._task is not None and handle._task.delay:
            self._admit_delayed(handle, handle._task.delay)
        else:
            self._work.admit(handle, block=block, timeout=timeout, exempt=self._exempt)
        if self._listeners.callbacks:
            self._listeners.emit(_SUBMITTED, handle)

    def _admit_delayed(self, handle: TaskHandle, delay: float) -> None:
        # Accepted (and counted) now; it waits in the scheduler, not in the
        # queue, and enters the queue past the bound when due.
        handle._scheduled = True
        self._work.admit_deferred(handle)
        if not self._scheduler.schedule(handle, handle._submitted_at + delay):
            handle.cancel()  # shutdown is cancelling what has not started

    def _admit_unique(self, handle: TaskHandle, block: bool, timeout: Optional[float]) -> TaskHandle:
        holder = self._keys.claim(handle, timeout if block else 0.0)
        if holder is BUSY:
            raise QueueFull(f"a task with key {handle._key!r} is still waiting for room in "
                            f"{self.name}; wait longer (submit_timeout) or retry")
        if holder is not None:
            return holder  # type: ignore[return-value]
        try:
            self._enter(handle, block, timeout)
        except BaseException:
            self._keys.release(handle)
            raise
        self._keys.admitted(handle)
        return handle

    def _prepare(self) -> None:
        # The slow path of submit: first use starts the pool; a closed or
        # inherited queue refuses with a clear error.
        self.start()

    # -- waiting and watching ------------------------------------------------

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until every task accepted so far is terminal, retries included.

        Like ``queue.Queue.join``, it returns when no accepted task is left
        unfinished; while other threads keep submitting, it waits for their
        tasks too.

        Args:
            timeout: the most seconds to wait; None waits for ever.

        Returns:
            True if every task ended, False if ``timeout`` passed first.

        Raises:
            ValueError: ``timeout`` is negative or NaN.
            RuntimeError: called from one of this queue's workers (it would
                wait for itself).
            QueueClosed: the queue belongs to a parent process.
        """
        timeout = validate.optional_seconds("timeout", timeout)
        self._refuse_if_forked()
        if self._on_worker_thread():
            raise RuntimeError("join() called from a worker of the same queue would wait for itself")
        return self._work.wait_all_done(timeout)

    def stats(self) -> Stats:
        """Return a snapshot of the counters and recent timings.

        At rest, ``submitted == succeeded + failed + cancelled + pending + running``.
        """
        self._refuse_if_forked()
        with self._lock:
            held, dropped = self._dead.counts()
            return snapshot(
                [worker.tally for worker in self._pool],
                read_submitted=self._read_submitted,
                cancelled=self._cancelled,
                workers=self._workers,
                dead_letters=held,
                dead_letters_dropped=dropped,
                now=self._clock(),
            )

    def dead_letters(self) -> List[DeadLetter]:
        """Return the dead letters held, oldest first (a copy)."""
        self._refuse_if_forked()
        return self._dead.letters()

    def requeue(self, dead_letter: DeadLetter) -> TaskHandle:
        """Submit a dead letter's task again and forget the letter.

        Returns:
            The new submission's handle.

        Raises:
            TypeError: ``dead_letter`` is not a DeadLetter.
            QueueFull, QueueClosed: as :meth:`submit`.
        """
        if not isinstance(dead_letter, DeadLetter):
            raise TypeError(f"dead_letter must be a DeadLetter, got {dead_letter!r}")
        handle = self.submit(dead_letter.task)
        self._dead.remove(dead_letter)
        if self._journal is not None:
            self._journal.forget_dead(dead_letter.task_id)
        return handle

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(event)`` for every task event from now on.

        Listeners run in the thread where the event happens and should be
        quick; one that raises is logged and never breaks a worker.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        self._refuse_if_forked()
        self._listeners.add(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback``.

        Raises:
            ValueError: it is not a listener of this queue.
            QueueClosed: the queue belongs to a parent process.
        """
        self._refuse_if_forked()
        self._listeners.remove(callback)

    def __repr__(self) -> str:
        return f"<TaskQueue {self.name!r} workers={self._workers} {self._phase}>"

    # -- what workers report (the seams a test may override) -----------------

    def _settle_success(self, handle: TaskHandle, result: Any, tally: WorkerTally) -> None:
        """Acknowledge an attempt that returned: the task succeeded."""
        tally.running = 0
        tally.succeeded += 1
        if handle._key is not None:
            self._keys.release(handle)
        if handle._id is not None:
            self._journal.record_done(handle._id)  # type: ignore[union-attr]
        handle._succeed(result)
        if self._listeners.callbacks:
            self._listeners.emit(_SUCCEEDED, handle)
        # The worker marks it done on the queue, with its next get (and sets
        # _acked then): a fault in here leaves it to the crash handler.

    def _settle_failure(self, handle: TaskHandle, exc: BaseException, tally: WorkerTally) -> None:
        """Acknowledge an attempt that raised: retry it, or fail the task."""
        tally.running = 0
        attempt = handle._attempts
        delay = decide(handle._policy, exc, attempt)
        if delay is None:
            self._fail(handle, exc, tally)
            return
        # INFO, as Celery, Dramatiq and Huey log a retry: it is the queue
        # doing its job. With logging unconfigured it then costs one check,
        # not a LogRecord per failed attempt for the NullHandler to drop.
        if log.isEnabledFor(logging.INFO):
            log.info("task %s (%s) failed on attempt %d, retrying in %.3gs: %s",
                     handle._name, handle.id, attempt, delay, _describe(exc))
        if handle._id is not None:
            self._journal.record_retry(handle._id, attempt, time.time() + delay)  # type: ignore[union-attr]
        handle._back_to_pending(scheduled=delay > 0)
        # Told while the task waits and before it can start again: a listener
        # sees RETRYING before the next STARTED, and may still cancel it.
        if self._listeners.callbacks:
            self._listeners.emit(EventKind.RETRYING, handle, exc)
        if delay > 0:
            if not self._scheduler.schedule(handle, self._clock() + delay):
                handle.cancel()  # shutdown is cancelling what has not started
        elif self._work.outranked(handle._priority):
            self._reenter(handle)
        else:
            # No wait and nothing more urgent queued: the worker that ran the
            # attempt runs the retry next, sparing a trip through the queue
            # (and the lock every producer and worker contends for).
            handle._rerun_here = True

    def _fail(self, handle: TaskHandle, exc: BaseException, tally: WorkerTally) -> None:
        letter = self._dead_letter(handle, exc)
        self._dead.add(letter)
        if handle._id is not None:
            self._journal.record_dead(handle._id, letter.attempts,  # type: ignore[union-attr]
                                      error_text(exc), letter.traceback, letter.failed_at)
        tally.failed += 1
        if handle._key is not None:
            self._keys.release(handle)
        handle._fail(exc)
        log.error("task %s (%s) failed after %d attempt(s)", handle._name, handle.id,
                  handle._attempts, exc_info=exc)
        if self._listeners.callbacks:
            self._listeners.emit(EventKind.FAILED, handle, exc)
        self._acknowledge(handle)

    def _acknowledge(self, handle: TaskHandle) -> None:
        # The one place a task is marked done on the work queue: once, when
        # it ended. The flag lets a crashed worker tell whether it happened.
        handle._acked = True
        self._work.task_done()

    def _dead_letter(self, handle: TaskHandle, exc: BaseException) -> DeadLetter:
        now_wall, now = time.time(), self._clock()
        task = handle._task or Task(handle._fn, handle._args, handle._kwargs,  # type: ignore[arg-type]
                                    name=handle._name)
        return DeadLetter(
            task=task,
            task_id=handle.id,
            exception=exc,
            traceback=None,  # formatted when first read: see DeadLetter
            attempts=handle._attempts,
            submitted_at=now_wall - (now - handle._submitted_at),
            failed_at=now_wall,
        )

    def _abandon_worker(self, worker: Worker, exc: TimeLimitExceeded) -> None:
        # Runs on the scheduler's thread once a worker's thread ran past its
        # time limit and did not stop: the attempt fails (and may retry) on
        # its behalf, and a new thread takes its place and tally.
        handle = worker.current
        log.error("task %s (%s) ran past its time limit and thread %s did not stop; "
                  "the thread is abandoned and a new worker started",
                  handle and handle._name, handle and handle.id, worker.thread.name)
        if handle is not None:
            worker.current = None
            self._settle_failure(handle, exc, worker.tally)
            if handle._rerun_here:  # not by that worker: it is gone
                handle._rerun_here = False
                self._reenter(handle)
        self._replace_worker(worker)

    def _worker_crashed(self, worker: Worker, exc: BaseException) -> None:
        # Runs on the dying thread. The in-flight task goes back on the queue
        # (it may run twice, it is never dropped), and a new thread takes the
        # dead one's place and tally so that the pool keeps its size.
        log.critical("worker %s died; its task is requeued and a new worker started",
                     worker.thread.name, exc_info=exc)
        handle = worker.current
        worker.current = None
        if worker.unacknowledged:  # successes it had not yet marked done
            self._work.task_done(worker.unacknowledged)
            worker.unacknowledged = 0
        if handle is not None:
            worker.tally.running = 0
            handle._rerun_here = False
            # Running, or queued for nobody but this worker (an immediate retry).
            if handle._back_to_pending(scheduled=False) or handle.state is TaskState.PENDING:
                self._reenter(handle)
            elif handle.done() and not handle._acked:
                self._acknowledge(handle)  # it ended; only the acknowledgement was lost
        self._replace_worker(worker)

    def _replace_worker(self, worker: Worker) -> None:
        # A new thread takes the old one's index and tally (which the old
        # thread no longer writes), so the pool keeps its size and its counts.
        with self._lock:
            self._pool.remove(worker)
            self._worker_threads = self._worker_threads - {worker.thread}
            try:
                self._start_worker(worker.index, worker.tally)
            except RuntimeError:  # at interpreter exit no thread can start
                log.error("could not replace worker %s", worker.thread.name)

    # -- internals -----------------------------------------------------------

    def _start_worker(self, index: int, tally: WorkerTally) -> None:
        # Called with self._lock held.
        worker = Worker(
            index, self._work, tally,
            clock=self._clock,
            listeners=self._listeners,
            report_success=self._settle_success,
            report_failure=self._settle_failure,
            on_crash=self._worker_crashed,
            arm=self._watchdog.arm,
            time_limit=self._time_limit,
            name=f"{self.name}-worker-{index}",
        )
        self._watchdog.watch(worker.guard)
        # Known as a worker before it runs anything: its first task may submit.
        self._worker_threads = self._worker_threads | {worker.thread}
        self._pool.append(worker)
        worker.thread.start()

    def _due(self, item: Any) -> None:
        # The scheduler holds tasks (retries, delays) and callbacks (periodic
        # ticks, time-limit checks).
        if isinstance(item, TaskHandle):
            self._reenter(item)
        else:
            item()

    def _reenter(self, handle: TaskHandle) -> None:
        # Back into the queue past the bound: a retry that is due, or the
        # task of a dead worker. Once shutdown has cancelled what had not
        # started, the queue is sealed and this one is cancelled too.
        handle._scheduled = False
        handle._enqueued_at = self._clock()
        if not self._work.reenter(handle):
            handle.cancel()

    def _count_cancelled(self, handle: TaskHandle) -> None:
        # Called once per cancelled handle, by whoever cancelled it. A
        # journaled task cancelled by shutdown stays in the journal for the
        # next run; one cancelled while the queue runs is forgotten.
        if handle._id is not None and self._phase != _CLOSED:
            self._journal.record_done(handle._id)  # type: ignore[union-attr]
        self._account_cancelled(handle)
        if self._listeners.callbacks:
            self._listeners.emit(EventKind.CANCELLED, handle)

    def _account_cancelled(self, handle: TaskHandle) -> None:
        with self._lock:
            self._cancelled += 1
        if handle._key is not None:
            self._keys.release(handle)
        self._acknowledge(handle)

    def _cancel_not_started(self) -> None:
        # Two passes: first every task is cancelled and counted, running no
        # user code; then the events and done callbacks. A callback that
        # calls shutdown() or join() then finds nothing left to wait for.
        scheduled = self._scheduler.seal(lambda item: isinstance(item, TaskHandle))
        cancelled = []
        for item in self._work.seal() + scheduled:
            if not isinstance(item, TaskHandle):
                self._work.wake_workers(item)  # a stop sentinel: keep it queued
                continue
            callbacks = item._mark_cancelled()
            if callbacks is not None:
                self._account_cancelled(item)
                cancelled.append((item, callbacks))
        for handle, callbacks in cancelled:
            if self._listeners.callbacks:
                self._listeners.emit(EventKind.CANCELLED, handle)
            handle._run_callbacks(callbacks)

    def _stop_threads(self) -> None:
        # Only after the drain: nothing is left to retry, so the timer can go,
        # and the workers can be told to stop.
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._scheduler.stop()
        self._work.wake_workers(STOP)

    def _join_threads(self, deadline: Optional[float]) -> None:
        while True:
            with self._lock:
                alive = [w.thread for w in self._pool if w.thread.is_alive()]
            if not alive:
                return
            for thread in alive:
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return
                thread.join(remaining)

    def _wind_down_in_background(self, deadline: Optional[float]) -> None:
        def wind_down() -> None:
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            if not self._work.wait_all_done(remaining):
                self._cancel_not_started()
            self._stop_threads()
            self._join_threads(None)
            self._close_journal()
        threading.Thread(target=wind_down, name=f"{self.name}-shutdown", daemon=True).start()

    def _on_worker_thread(self) -> bool:
        return _current_thread() in self._worker_threads

    def _read_submitted(self) -> int:
        with self._work.mutex:
            return self._work.admitted

    def _check_usable(self) -> None:
        self._refuse_if_forked()
        if self._phase == _CLOSED:
            raise self._work.closed_error()

    def _refuse_if_forked(self) -> None:
        # The parent's threads are gone in a forked child, and its locks may
        # have been copied while held: touching them could hang for ever.
        if self._forked:
            raise QueueClosed(
                f"{self.name} was created in process {self._pid} and cannot be used "
                "in a forked child; create a new TaskQueue in the child")

    @property
    def owner_pid(self) -> int:
        """The id of the process that made this queue (and runs its threads)."""
        return self._pid

    def disown_after_fork(self) -> None:
        """In a forked child: refuse all use from now on, without touching any lock."""
        self._forked = True
        self._ready = False
        self._lock = threading.Lock()


def _describe(exc: BaseException) -> str:
    # For log messages: repr now, so that a record does not keep the
    # exception (and through its traceback, the task's arguments) alive in a
    # handler that buffers records; and a repr() that raises must not kill
    # the worker that is logging it.
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__}: repr() failed>"
