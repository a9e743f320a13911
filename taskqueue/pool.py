"""TaskQueue: the facade users hold, over a broker, a supervisor and settle.

``submit`` builds a :class:`~taskqueue.message.Message` and its
:class:`~taskqueue.task.TaskHandle` and hands the message to the queue's
:class:`~taskqueue.brokers.base.Broker`, which owns it until the task is
terminal. Worker threads (started and replaced by the
:class:`~taskqueue.supervisor.Supervisor`) receive messages from the
broker and run them; :class:`~taskqueue.settle.Settle` turns each outcome
into the broker's steps. :class:`~taskqueue.lifecycle.Lifecycle` starts
and winds the parts down. This module validates, wires the parts together
and serves the public methods; it holds no task state of its own.
"""

from __future__ import annotations

import enum
import itertools
import os
import threading
import time
import weakref
from concurrent.futures import Executor
from time import monotonic
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from . import process, validate
from .brokers.base import Binding, Broker
from .brokers.journal import JournalBroker
from .brokers.memory import MemoryBroker
from .deadletter import DeadLetter
from .errors import QueueFull
from .events import EventKind, Listener, Listeners
from .journal import Journal, check_durability
from .lifecycle import Lifecycle
from .mapping import lazy_map
from .message import Message, MessageMaker
from .periodic import Periodic, periodic_task
from .registry import Registry, TaskFunction
from .retry import Backoff, RandomSource, RetryPolicy, check_retry_on
from .scheduler import Scheduler
from .settle import Settle
from .stats import Stats, snapshot
from .status import HISTORY, Overview, ProcessInfo, TaskInfo
from .supervisor import Supervisor
from .task import Task, TaskHandle, callable_name

__all__ = ["TaskQueue"]

_SUBMITTED = EventKind.SUBMITTED  # looked up once: emitted per task while anyone listens
_numbers = itertools.count(1)  # default names: taskqueue-1, taskqueue-2, ...


class _Default(enum.Enum):
    # A default that None cannot stand for (None means "wait for ever").
    SUBMIT_TIMEOUT = "the queue's submit_timeout"


class TaskQueue(Executor):
    """A bounded queue drained by a fixed pool of worker threads, with retries.

    A drop-in ``concurrent.futures.Executor``: use it in ``with`` blocks,
    with ``executor.map`` and with ``loop.run_in_executor``.

    Args:
        workers: how many worker threads (>= 1); ``max_workers`` is a synonym.
        maxsize: how many tasks may wait in the queue before ``submit``
            blocks (backpressure); 0 means no bound.
        name: used in thread names (``f"{name}-worker-{i}"``), log and error
            messages; ``"taskqueue-N"`` (N counting queues made) if None.
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
        clock: the monotonic clock of delays, backoffs, periodic runs and
            time limits (tests drive it with a fake one).
        wait: how the queue's timer threads wait on ``clock``:
            ``wait(condition, timeout)``, as ``sched.scheduler`` takes a
            ``delayfunc``; ``Condition.wait`` if None.
        rng: the source of backoff jitter (``random`` if None).
        journal: a file in which every unfinished task is kept (see
            README, "Durable journal").
        durability: with ``journal``: ``"normal"`` or ``"full"``.
        serializer: with ``journal``: encodes arguments (``json`` if None).
        broker: where tasks wait (see README, "Writing a broker"); a
            :class:`~taskqueue.brokers.memory.MemoryBroker` if None (or a
            journal's, with ``journal=``).
        thread_name_prefix: as ``ThreadPoolExecutor``'s: threads are named
            ``f"{prefix}_{i}"``.
        initializer: called in each worker thread before it runs anything,
            with ``initargs``. If it raises, the pool is broken: every task
            not started fails, and every later submit raises, with
            :class:`QueueBroken`.
        initargs: the initializer's arguments.
        history: how many finished tasks' statuses to keep for
            :meth:`get_task_status` (the most recent; 0 keeps none).

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
        max_workers: Optional[int] = None,
        name: Optional[str] = None,
        retries: int = 0,
        backoff: Optional[Backoff] = None,
        retry_on: Any = (Exception,),
        submit_timeout: Optional[float] = None,
        dead_letter_limit: int = 10_000,
        time_limit: Optional[float] = None,
        time_limit_grace: float = 0.5,
        clock: Callable[[], float] = monotonic,
        wait: Optional[Callable[[threading.Condition, Optional[float]], object]] = None,
        rng: Optional[RandomSource] = None,
        journal: Optional[Any] = None,
        durability: str = "normal",
        serializer: Any = None,
        broker: Optional[Broker] = None,
        thread_name_prefix: Optional[str] = None,
        initializer: Optional[Callable[..., object]] = None,
        initargs: Tuple[Any, ...] = (),
        history: int = HISTORY,
    ) -> None:
        if isinstance(broker, str):  # a URL: the broker it names, with default settings
            broker = broker_for_url(broker)
        if broker is not None and not isinstance(broker, Broker):
            raise TypeError(f"broker must be a Broker, a broker URL or None, got {broker!r}")
        workers = _check_workers(workers, max_workers, shared=broker is not None and broker.shared)
        validate.whole_number("maxsize", maxsize, minimum=0)
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        validate.whole_number("retries", retries, minimum=0)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, got {backoff!r}")
        retry_on = check_retry_on(retry_on)
        self._submit_timeout = validate.optional_seconds("submit_timeout", submit_timeout)
        validate.whole_number("dead_letter_limit", dead_letter_limit, minimum=0)
        validate.whole_number("history", history, minimum=0)
        time_limit = validate.optional_positive_seconds("time_limit", time_limit)
        grace = validate.seconds("time_limit_grace", time_limit_grace)
        for what, value in (("clock", clock), ("wait", wait), ("initializer", initializer)):
            if value is not None and not callable(value):
                raise TypeError(f"{what} must be callable, got {value!r}")
        if thread_name_prefix is not None and not isinstance(thread_name_prefix, str):
            raise TypeError(f"thread_name_prefix must be a str or None, got {thread_name_prefix!r}")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {initargs!r}")
        check_durability(durability)
        if serializer is not None and journal is None:
            raise ValueError("serializer is only used with journal=; got no journal")
        if broker is not None and journal is not None:
            raise ValueError("give journal= or broker=, not both")

        self.name = name or f"taskqueue-{next(_numbers)}"
        """The queue's name."""
        self._workers = workers
        self._clock = clock
        self._policy = RetryPolicy(retries, backoff or Backoff(), retry_on, rng)
        self._listeners = Listeners()
        self._registry = Registry(self.submit, asubmit=self.asubmit)
        self._pid = os.getpid()
        self._recovered = 0
        # Opened last, once every argument is known to be good: a locked or
        # invalid journal fails here, naming the file, and nothing is left open.
        if journal is not None:
            broker = JournalBroker(Journal(journal, durability=durability, serializer=serializer))
        self._broker = broker if broker is not None else MemoryBroker()
        self._settle = Settle(self._broker, self._listeners, clock)
        self._cancel = self._settle.cancel  # one bound method for every handle
        self._make = MessageMaker(self._policy, self._cancel, clock)
        self._timer = Scheduler(_call, clock=clock, wait=wait, name=f"{self.name}-timer")
        self._lifecycle = Lifecycle(self.name, self._pid, self._broker, self._settle, self._timer)
        self._periodics = self._lifecycle.periodics
        prefix, queue_name = thread_name_prefix, self.name  # not self: see finalize below
        self._supervisor = Supervisor(
            self._broker, self._settle, self._timer, self._listeners, workers=workers,
            thread_name=(lambda i: f"{prefix}_{i}") if prefix is not None
            else (lambda i: f"{queue_name}-worker-{i}"),
            clock=clock, time_limit=time_limit, grace=grace, initializer=initializer,
            initargs=initargs, on_broken=self._lifecycle.broken)
        self._lifecycle.supervisor = self._supervisor
        # A worker of this queue may submit past the bound (it must not wait
        # for room that only workers make), and so may the timer (a periodic
        # run); asked only when the queue is full.
        supervised, timer = self._supervisor.on_worker_thread, self._timer
        self._broker.bind(Binding(
            name=self.name, maxsize=maxsize, dead_letter_limit=dead_letter_limit, clock=clock,
            wait=wait or _condition_wait,
            exempt=lambda: supervised() or timer.on_timer_thread,
            lookup=_weak_lookup(weakref.ref(self._registry)),
            message_for=self._make.for_task, history=history,
            workers=_worker_count(self._supervisor)))
        self._enqueue = self._broker.enqueue
        self._maxsize = maxsize
        # Dropped without shutdown(), the queue winds its parts down as it is
        # collected: they hold no reference to it, so its threads end too.
        weakref.finalize(self, self._lifecycle.forget).atexit = False
        # Known from birth, not from start(): a fork in the middle of start()
        # must still mark this queue as the parent's in the child.
        process.register(self)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, workers: Optional[int] = None) -> TaskQueue:
        """Start the worker threads; does nothing if they run already.

        A durable broker's unfinished tasks are read back now (see
        :attr:`recovered`). On a shared broker (Redis) this is what makes a
        process consume: submitting alone never starts workers.

        Args:
            workers: how many worker threads, in place of the queue's
                ``workers`` (the ``worker`` command's ``--workers``); only
                before the workers have started.

        Returns:
            This queue, so that ``q = TaskQueue().start()`` reads well.

        Raises:
            QueueClosed: the queue was shut down (or belongs to a parent process).
            ValueError: ``workers`` is below 1, or the workers run already.
            JournalError: the journal could not be opened, or what the last
                run left could not be read back (the queue then runs on, and
                the rows stay in the file for the next start); a ``submit()``
                that starts the queue raises it too.
        """
        if workers is not None:
            validate.whole_number("workers", workers, minimum=1)
            if self._lifecycle.consuming:
                raise ValueError(f"{self.name}'s workers run already; workers= is only for "
                                 "the first start()")
            self._supervisor.count = self._workers = workers
        self._took_back(self._lifecycle.start(consume=self._workers > 0))
        return self

    def _took_back(self, handles: Optional[List[TaskHandle]]) -> None:
        # What the start that ran the broker's recovery took back (None: the
        # queue ran already); announced here, outside the lifecycle's lock,
        # since events run user code.
        if handles is None:
            return
        self._recovered = len(handles)
        if self._listeners.callbacks:
            for handle in handles:
                self._listeners.emit(_SUBMITTED, handle)

    def __enter__(self) -> TaskQueue:
        return self.start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: Optional[float] = None) -> None:
        """Stop accepting tasks and wind the pool down.

        After this, ``submit`` raises :class:`QueueClosed`.

        Args:
            wait: wait for the pool to wind down before returning. Called
                from a thread of this queue (a worker, or its timer, where
                done callbacks and listeners may run), the call never waits
                (it would wait for itself) and the winding down goes on in
                the background.
            cancel_futures: cancel every task that has not started (queued,
                or waiting for a retry or a delay); running attempts finish,
                and do not retry. Without it, everything accepted is
                drained, pending retries and delays included.
            timeout: drain for at most this many seconds, then cancel what
                has not started and return. Attempts already running are not
                stopped: they may still be running when this returns, and
                finish in the background (their time limits still apply).

        Raises:
            ValueError: ``timeout`` is negative, NaN or too large (nothing is done).

        Idempotent and safe from any thread: a later call can still cancel
        (``cancel_futures=True``) or wait. In a forked child it does nothing.
        """
        timeout = validate.optional_seconds("timeout", timeout)
        self._lifecycle.shutdown(wait, cancel_futures, timeout)

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    # -- submitting ----------------------------------------------------------------------

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
        if not self._lifecycle.ready:
            self._open()
        if type(fn) is not Task and callable(fn):
            # The hot path, flat: a plain callable, no options.
            name = getattr(fn, "__qualname__", None)
            if type(name) is not str:
                name = callable_name(fn)
            handle = TaskHandle(name, self._cancel)
            message = handle._message = Message(fn, args, kwargs or None, name, self._policy,
                                                handle)
            message.submitted_at = self._clock()
        else:
            message = self._make.for_call(fn, args, kwargs)
        handle = self._enqueue(message, True, self._submit_timeout)
        if self._listeners.callbacks and handle is message.handle:  # as _accepted, inlined
            self._listeners.emit(_SUBMITTED, handle)
        return handle

    def submit_nowait(self, fn: Any, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Like :meth:`submit`, but raise :class:`QueueFull` at once when full."""
        if not self._lifecycle.ready:
            self._open()
        message = self._make.for_call(fn, args, kwargs)
        return self._accepted(message, self._enqueue(message, block=False, timeout=None))

    def _open(self) -> None:
        # The slow path of submit: the first one starts the queue; on a shared
        # broker it opens only the producer side, since a web process that
        # imports the tasks module must not start consuming.
        if self._broker.shared:
            self._took_back(self._lifecycle.start(consume=False))
        else:
            self.start()

    def _accepted(self, message: Message, handle: TaskHandle) -> TaskHandle:
        # Announced only if this submission was taken in: a duplicate of a
        # live unique key gets the holder's handle, and no event.
        if self._listeners.callbacks and handle is message.handle:
            self._listeners.emit(_SUBMITTED, handle)
        return handle

    async def asubmit(self, fn: Any, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Like :meth:`submit`, for coroutines: wait for room without blocking the event loop.

        Works from any running event loop. ``await handle`` then gives the
        task's result. A broker whose submit waits on I/O (a journal's
        commit) is called from the loop's default executor, never on the
        loop's thread.

        If the awaiting coroutine is cancelled while it waits for room,
        nothing was submitted and ``CancelledError`` propagates (while the
        journal commits, the task is cancelled as soon as it is accepted).
        Once this returns, the task is accepted: cancelling a coroutine that
        awaits the handle stops that wait, never the task.

        Raises:
            TypeError: as :meth:`submit`.
            QueueFull: still no room after ``submit_timeout``.
            QueueClosed: the queue was shut down.
        """
        from .aio import submit_when_room  # asyncio is slow to import: only for its users

        return await submit_when_room(  # type: ignore[no-any-return]
            lambda: self.submit_nowait(fn, *args, **kwargs),
            self._broker.when_room, QueueFull, self._submit_timeout,
            in_thread=self._broker.blocking_submit)

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
        exception when its result is reached. A result never read still
        runs its first ``buffersize`` items; once iteration has begun,
        closing the iterator early cancels what has not started.

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
            buffersize = self._maxsize or 1024
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
        task = periodic_task(fn, args, kwargs)
        if not self._lifecycle.ready:
            self._open()
        claim = self._broker.claim_tick if self._broker.shared else None
        periodic = Periodic(task, interval, submit=self._submit_run, schedule=self._timer.schedule,
                            unschedule=self._timer.cancel, clock=self._clock, claim=claim)
        self._periodics.add(periodic)
        return periodic

    def _submit_run(self, task: Task) -> TaskHandle:
        # A periodic run, from the timer's thread, which may pass the bound
        # (it must never block there; at most one run per Periodic is in flight).
        if not self._lifecycle.ready:
            raise self._lifecycle.closed_error()
        message = self._make.for_task(task)
        return self._accepted(message, self._enqueue(message, block=True, timeout=None))

    # -- waiting and watching ------------------------------------------------------------

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
            ValueError: ``timeout`` is negative, NaN or too large.
            RuntimeError: called from one of this queue's workers (it would
                wait for itself).
            QueueClosed: the queue belongs to a parent process.
        """
        timeout = validate.optional_seconds("timeout", timeout)
        self._lifecycle.refuse_if_forked()
        if self._supervisor.on_worker_thread():
            raise RuntimeError("join() called from a worker of the same queue would wait for itself")
        return self._broker.wait_idle(timeout)

    def stats(self) -> Stats:
        """Return a snapshot of the counters and recent timings.

        At rest, ``submitted == succeeded + failed + cancelled + pending + running``.
        """
        self._lifecycle.refuse_if_forked()
        return snapshot(self._supervisor.tallies, read_counts=self._broker.counts,
                        workers=self._workers, now=self._clock())

    def get_task_status(self, task_id: str) -> Optional[TaskInfo]:
        """Return what this queue knows of task ``task_id`` (a handle's ``id``).

        A task not yet ended is reported as it is now (pending, scheduled,
        running); a finished one as it ended, for the most recent
        ``history`` finished tasks (on the journal, across restarts; on
        Redis, for every process, while its TTL lasts).

        Returns:
            Its :class:`TaskInfo`, or None if this queue has never seen the
            id or has forgotten it: an unknown id is never reported as pending.

        Raises:
            TypeError: ``task_id`` is not a str.
        """
        if not isinstance(task_id, str):
            raise TypeError(f"task_id must be a str, got {task_id!r}")
        self._lifecycle.refuse_if_forked()
        return self._broker.task_status(task_id)

    def cancel_task(self, task_id: str) -> bool:
        """Cancel task ``task_id`` unless it has started: ``handle.cancel()`` by id.

        For a dashboard or an operator holding an id, not a handle.

        Returns:
            True if it is cancelled now (or already was), False if it is
            running, has ended, or is unknown.

        Raises:
            TypeError: ``task_id`` is not a str.
        """
        if not isinstance(task_id, str):
            raise TypeError(f"task_id must be a str, got {task_id!r}")
        self._lifecycle.refuse_if_forked()
        return self._broker.cancel_task(task_id)

    def overview(self, limit: int = 100) -> Overview:
        """Return what waits and runs now: pending by priority, scheduled and running tasks.

        Args:
            limit: at most this many tasks in each list (>= 0).

        Raises:
            ValueError, TypeError: a bad ``limit``.

        On a broker in this process, ``processes`` is this one; on Redis,
        every process that consumes.
        """
        validate.whole_number("limit", limit, minimum=0)
        self._lifecycle.refuse_if_forked()
        found = self._broker.overview(limit)
        if self._broker.shared:
            return found
        import socket  # slow to import (it builds enums): only for those who ask

        here = ProcessInfo(name=f"{socket.gethostname()}:{self._pid}", workers=self._workers,
                           running=self.stats().running, seen_at=time.time())
        return Overview(pending_by_priority=found.pending_by_priority,
                        scheduled=found.scheduled, running=found.running, processes=[here])

    @property
    def maxsize(self) -> int:
        """How many tasks may wait before ``submit`` blocks (0: no bound)."""
        return self._maxsize

    def serve_dashboard(self, host: str = "127.0.0.1", port: int = 0,
                        token: Optional[str] = None) -> Any:
        """Serve a live dashboard of this queue over HTTP, from a thread of this process.

        Args:
            host: the address to bind; only a loopback address without a
                token. On any other, every read of the API needs the token too.
            port: the port (0: any free one; see the result's ``url``).
            token: with it, the page can requeue and purge dead letters and
                cancel tasks (each request carries it as ``Authorization:
                Bearer``); without it the dashboard is read-only.

        Returns:
            A :class:`taskqueue.dashboard.Dashboard`, with ``url`` and
            ``close()`` (also a context manager).

        Raises:
            ValueError: a non-loopback ``host`` without a token, or a bad port.
            OSError: the address cannot be bound.
        """
        # The dashboard is a user of the queue's public API, one layer above
        # it: imported only here, when asked for.
        from .dashboard import QueueSource, serve

        return serve(QueueSource(self), host=host, port=port, token=token)

    @property
    def broker(self) -> Broker:
        """Where this queue's tasks wait (a MemoryBroker, a JournalBroker, a RedisBroker)."""
        return self._broker

    @property
    def recovered(self) -> int:
        """How many unfinished tasks the journal gave back when this queue started.

        Dead letters read back are not counted (see :meth:`dead_letters`);
        0 for a queue without a journal, or before it starts.
        """
        return self._recovered

    def dead_letters(self) -> list[DeadLetter]:
        """Return the dead letters held, oldest first (a copy)."""
        self._lifecycle.refuse_if_forked()
        return self._broker.dead_letters()

    def purge_dead(self) -> int:
        """Forget every dead letter (in the journal or Redis too); return how many."""
        self._lifecycle.refuse_if_forked()
        return self._broker.purge_dead()

    def requeue(self, dead_letter: DeadLetter, *,
                timeout: Union[float, None, _Default] = _Default.SUBMIT_TIMEOUT) -> TaskHandle:
        """Submit a dead letter's task again and forget the letter.

        One-shot: a letter is requeued once. Requeueing one that was
        requeued already (by another thread too) raises, and runs nothing.

        Args:
            dead_letter: one of :meth:`dead_letters`.
            timeout: how long to wait for room in a full queue (None: as
                long as it takes); by default the queue's ``submit_timeout``.

        Returns:
            The new submission's handle.

        Raises:
            TypeError: ``dead_letter`` is not a DeadLetter.
            TypeError: ``timeout`` is not a number or None.
            ValueError: the letter is not held any more (requeued, purged,
                or dropped past ``dead_letter_limit``), or ``timeout`` is
                negative or not finite (None waits for ever).
            QueueFull, QueueClosed: as :meth:`submit` (the letter is kept).
        """
        if not isinstance(dead_letter, DeadLetter):
            raise TypeError(f"dead_letter must be a DeadLetter, got {dead_letter!r}")
        wait = (self._submit_timeout if timeout is _Default.SUBMIT_TIMEOUT
                else validate.optional_seconds("timeout", timeout))
        if not self._lifecycle.ready:
            self._open()
        message = self._make.for_task(dead_letter.task)
        return self._accepted(message, self._broker.requeue(dead_letter, message, block=True,
                                                            timeout=wait))

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(event)`` for every task event from now on.

        Listeners run in the thread where the event happens and should be
        quick; one that raises is logged and never breaks a worker.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        self._lifecycle.refuse_if_forked()
        self._listeners.add(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback``.

        Raises:
            ValueError: it is not a listener of this queue.
            QueueClosed: the queue belongs to a parent process.
        """
        self._lifecycle.refuse_if_forked()
        self._listeners.remove(callback)

    def __repr__(self) -> str:
        return f"<TaskQueue {self.name!r} workers={self._workers} {self._lifecycle.phase}>"

    # -- the whole process ---------------------------------------------------------------

    @property
    def owner_pid(self) -> int:
        """The id of the process that made this queue (and runs its threads)."""
        return self._pid

    def disown_after_fork(self) -> None:
        """In a forked child: refuse all use from now on, without touching any lock."""
        self._lifecycle.disown_after_fork()

    def _exit_drain(self) -> Optional[Tuple[Callable[[], object], Callable[[], Tuple[bool, int]],
                                            Callable[[], object]]]:
        # For the interpreter-exit drain (see process.drain): how to stop this
        # queue's periodic runs, whether it is idle, and how to wait until it is.
        # None: nothing to drain here (forked, or it only submits to a shared
        # broker, whose tasks run elsewhere: exit does not wait for them). A
        # local queue not started yet is drained too: a task of another queue
        # may start it during the drain (a pipeline's second stage), and its
        # tasks must be waited for, not cut off at finalization.
        lifecycle = self._lifecycle
        if lifecycle.forked or (self._broker.shared and not lifecycle.consuming):
            return None
        periodics = self._periodics
        broker = self._broker
        return (lambda: [p.cancel() for p in list(periodics)],
                lambda: (broker.wait_idle(0), broker.submitted_here()),
                lambda: broker.wait_idle(None))


def _check_workers(workers: Any, max_workers: Any, *, shared: bool) -> int:
    # ThreadPoolExecutor's name for it is a synonym; its error message is kept.
    # A shared broker may have a queue that only submits (workers=0); a local
    # one would then run nothing.
    if max_workers is not None:
        if workers != 4 and workers != max_workers:
            raise TypeError("give workers or max_workers (its synonym), not both")
        workers = max_workers
    validate.integer("workers", workers)
    if shared and workers < 0:
        raise ValueError(f"workers must be >= 0 on a shared broker, got {workers!r}")
    if not shared and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r} "
                         "(max_workers must be greater than 0; workers=0, submit only, "
                         "is for a shared broker such as Redis)")
    return workers  # type: ignore[no-any-return]


def broker_for_url(url: str) -> Broker:
    """The broker a URL names, with default settings (``redis://``, ``rediss://``, ``unix://``).

    Raises:
        ValueError: no broker takes URLs of that scheme.
        ImportError: the broker's package is not installed.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        from .brokers.redis import RedisBroker  # redis-py only for its users

        return RedisBroker(url)
    # Only the scheme is shown: the rest of a URL may hold a password.
    raise ValueError(f"broker must be a Broker or a redis://, rediss:// or unix:// URL, "
                     f"got a URL of scheme {scheme or '(none)'!r}")


def _worker_count(supervisor: Supervisor) -> Callable[[], int]:
    # Not a lambda over the queue: the broker must not keep the queue alive.
    return lambda: supervisor.count


def _call(callback: Callable[[], object]) -> None:
    callback()


def _condition_wait(cond: threading.Condition, timeout: Optional[float]) -> object:
    return cond.wait(timeout)


def _weak_lookup(registry: "weakref.ref[Registry]") -> Callable[[str], Optional[Any]]:
    # The broker finds task functions by name; it must not keep the registry
    # (whose task functions hold the queue) alive through its threads.
    def lookup(name: str) -> Optional[Any]:
        found = registry()
        return None if found is None else found.tasks.get(name)
    return lookup
