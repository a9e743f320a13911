"""What a unit of work is, and the handle that follows it to its end.

:class:`Task` is a frozen description of work; :class:`TaskHandle` is the
``concurrent.futures.Future`` a caller gets back; :class:`TaskState` names
the states a handle moves through. This module holds data and state
transitions only: who moves a handle, and when, is the business of the
task's broker and of :mod:`taskqueue.settle`.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import threading
from concurrent.futures import CancelledError, Future, TimeoutError
# cf.wait() and cf.as_completed() read these exact state values off every
# Future they are given, so a handle must use them for its own state.
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from dataclasses import FrozenInstanceError
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, List, Optional, Tuple, Type

from .retry import Backoff, RetryPolicy, check_retry_on
from .validate import (integer, optional_positive_seconds, optional_seconds, wait_seconds,
                       whole_number)

if TYPE_CHECKING:
    from .message import Message

__all__ = ["Task", "TaskState", "TaskHandle", "callable_name", "status_key"]

log = logging.getLogger(__name__)

# Handle ids are unique within a process and, through the random prefix,
# across the runs of a program; formatting is deferred until someone asks.
_ID_PREFIX = os.urandom(4).hex()
_next_seq = itertools.count(1).__next__


class TaskState(enum.Enum):
    """Where a task is in its life. The last three are terminal."""

    PENDING = "pending"
    """Queued, waiting for a worker."""
    SCHEDULED = "scheduled"
    """Waiting out a backoff (or a delay) before it is queued again."""
    RUNNING = "running"
    """An attempt is running on a worker."""
    SUCCEEDED = "succeeded"
    """The last attempt returned; ``result()`` gives its value."""
    FAILED = "failed"
    """Retries ran out or the error was not retryable; ``result()`` raises it."""
    CANCELLED = "cancelled"
    """Cancelled before an attempt started; ``result()`` raises CancelledError."""

    @property
    def terminal(self) -> bool:
        """Whether a task in this state will never change again."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


def callable_name(fn: Callable[..., Any]) -> str:
    """Return the name taskqueue shows for ``fn``: its qualified name."""
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str):
        return name
    return type(fn).__qualname__


class Task:
    """A frozen description of one unit of work.

    Fields left as ``None`` take the defaults of the queue the task is
    submitted to. A Task can be submitted any number of times; each
    submission gets its own :class:`TaskHandle`.

    Args:
        fn: the callable to run.
        args: positional arguments for ``fn`` (any iterable; kept as a tuple).
        kwargs: keyword arguments for ``fn`` (kept as a copy).
        name: shown in logs, events and dead letters; defaults to the
            qualified name of ``fn``.
        retries: how many times a failed attempt may be retried (>= 0).
        backoff: the delays between attempts.
        retry_on: the exception class, or tuple of classes, worth a retry.
        priority: a higher number runs first; equal priorities run in
            submission order. Retries keep their task's priority.
        delay: seconds to wait before the first attempt (the task waits in
            the scheduler, ``SCHEDULED``, not in a worker).
        time_limit: seconds an attempt may run before it fails with
            :class:`TimeLimitExceeded`; None takes the queue's default.
        key: while a task with this key is not terminal, submitting another
            with the same key returns the existing handle instead.

    Raises:
        TypeError: ``fn`` is not callable, or a field has the wrong type
            (``key`` not a str, ``priority`` not an int, ...).
        ValueError: ``retries`` or ``delay`` is negative, ``time_limit`` is
            not positive, a number is NaN or infinite, ``name`` or ``key`` is empty.
    """

    __slots__ = ("fn", "args", "kwargs", "name", "retries", "backoff", "retry_on",
                 "priority", "delay", "time_limit", "key")

    fn: Callable[..., Any]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    name: str
    retries: Optional[int]
    backoff: Optional[Backoff]
    retry_on: Optional[Tuple[Type[BaseException], ...]]
    priority: int
    delay: Optional[float]
    time_limit: Optional[float]
    key: Optional[str]

    def __init__(
        self,
        fn: Callable[..., Any],
        args: Any = (),
        kwargs: Optional[Dict[str, Any]] = None,
        *,
        name: Optional[str] = None,
        retries: Optional[int] = None,
        backoff: Optional[Backoff] = None,
        retry_on: Any = None,
        priority: int = 0,
        delay: Optional[float] = None,
        time_limit: Optional[float] = None,
        key: Optional[str] = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"args must be a tuple (or list) of arguments, got {args!r}")
        if kwargs is not None and (not isinstance(kwargs, dict)
                                   or not all(isinstance(k, str) for k in kwargs)):
            raise TypeError(f"kwargs must be a dict with str keys, or None, got {kwargs!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if name == "":
            raise ValueError("name must not be empty")
        if retries is not None:
            whole_number("retries", retries, minimum=0)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, got {backoff!r}")
        if retry_on is not None:
            retry_on = check_retry_on(retry_on)
        integer("priority", priority)
        delay = optional_seconds("delay", delay)
        time_limit = optional_positive_seconds("time_limit", time_limit)
        if key is not None:
            if not isinstance(key, str):
                raise TypeError(f"key must be a str or None, got {key!r}")
            if not key:
                raise ValueError("key must not be empty")
        _init = object.__setattr__
        _init(self, "fn", fn)
        _init(self, "args", tuple(args))
        _init(self, "kwargs", dict(kwargs) if kwargs else {})
        _init(self, "name", name or callable_name(fn))
        _init(self, "retries", retries)
        _init(self, "backoff", backoff)
        _init(self, "retry_on", retry_on)
        _init(self, "priority", priority)
        _init(self, "delay", delay)
        _init(self, "time_limit", time_limit)
        _init(self, "key", key)

    def replace(self, **changes: Any) -> Task:
        """Return a copy of this task with the given fields changed.

        Raises:
            TypeError, ValueError: as the constructor does for a bad field.
        """
        fields = {name: getattr(self, name) for name in self.__slots__}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"Task has no field(s) {sorted(unknown)}")
        if "fn" in changes and "name" not in changes and self.name == callable_name(self.fn):
            fields["name"] = None  # the name was the old function's: follow the new one
        fields.update(changes)
        fn, args, kwargs = fields.pop("fn"), fields.pop("args"), fields.pop("kwargs")
        return Task(fn, args, kwargs, **fields)

    def policy(self, default: RetryPolicy) -> RetryPolicy:
        """Return ``default`` with this task's own retry settings laid over it."""
        if self.retries is None and self.backoff is None and self.retry_on is None:
            return default
        return RetryPolicy(
            default.retries if self.retries is None else self.retries,
            default.backoff if self.backoff is None else self.backoff,
            default.retry_on if self.retry_on is None else self.retry_on,
            default.rng,
        )

    def __getstate__(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a Task is frozen")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: a Task is frozen")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # kwargs is a dict

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"Task({shown})"


class TaskHandle(Future):  # type: ignore[type-arg]
    """The future of one submitted task: a real ``concurrent.futures.Future``.

    ``cf.wait``, ``cf.as_completed``, ``add_done_callback``,
    ``asyncio.wrap_future`` and ``loop.run_in_executor`` work with it as with
    any Future. On top of that it tells which task it follows (:attr:`id`,
    :attr:`name`), where that task is (:attr:`state`) and how many attempts
    have started (:attr:`attempts`).

    A handle holds no work: the function, arguments and options are in the
    task's :class:`~taskqueue.message.Message`, which its broker owns. The
    handle is resolved from outcomes (started, back to waiting, succeeded,
    failed, cancelled), wherever the attempt ran. Once it has ended it holds
    only the outcome.

    Unlike a stock Future, a handle guards its state with one plain lock and
    builds a ``threading.Condition`` only when somebody waits on it before it
    is done: most handles are never waited on while pending, and the
    Condition would otherwise dominate the cost of every task.

    Handles are made by :meth:`TaskQueue.submit`; only the queue moves them
    between states. Every method is safe to call from any thread.

    Args:
        name: the task's name.
        canceller: ``canceller(handle) -> bool``, what :meth:`cancel` asks
            while the task waits: the queue's, which withdraws the task from
            its broker. None for a handle no queue follows.
        message: the message it follows while that waits in this process.

    For code written against the 0.1 signature, a bare handle can still be
    made as ``TaskHandle(fn, args, kwargs, name, policy, on_cancel)``:
    ``fn``, ``args``, ``kwargs`` and ``policy`` are ignored (a handle holds
    no work), and ``on_cancel(handle)`` is told once it is cancelled.
    """

    # Slots, every one set in __init__ in one order: attribute access then
    # never depends on the order in which code paths happen to add instance
    # attributes. (With a __dict__ and class-level defaults, the first
    # handles made in a process fixed the shared key order, and handles that
    # added keys in another order fell back to slower, larger dicts.)
    __slots__ = ("_lock", "_state", "_seq", "_id", "_name", "_attempts", "_scheduled",
                 "_result", "_exception", "_cond", "_waiter_list", "_callbacks",
                 "_message", "_canceller")

    # Future.__init__ is deliberately not called: it builds the Condition and
    # two lists that this class creates only on demand.
    def __init__(  # pylint: disable=super-init-not-called
        self,
        name: Any,
        canceller: Any = None,
        *legacy: Any,
        message: Optional[Message] = None,
    ) -> None:
        if legacy:  # TaskHandle(fn, args, kwargs, name, policy, on_cancel): see the docstring
            name, canceller = legacy[1], _notifying_canceller(legacy[3])
        self._lock = threading.Lock()
        self._state = PENDING
        self._seq = _next_seq()
        self._id: Optional[str] = None  # a durable broker's id, if it gave one
        self._name: str = name
        self._attempts = 0
        self._scheduled = False
        self._result: Any = None
        self._exception: Optional[BaseException] = None
        self._cond: Optional[threading.Condition] = None  # built when first waited on
        self._waiter_list: Optional[List[Any]] = None  # cf.wait's waiters, when any
        self._callbacks: Optional[List[Callable[[Future], object]]] = None  # type: ignore[type-arg]
        self._message = message
        self._canceller: Optional[Callable[[TaskHandle], bool]] = canceller

    # -- what a caller reads ------------------------------------------------

    @property
    def id(self) -> str:
        """A unique id for this submission (unique within a process and run).

        A task on a durable broker keeps the broker's id, across restarts
        and processes.
        """
        if self._id is not None:
            return self._id
        return f"{_ID_PREFIX}-{self._seq:x}"

    @property
    def name(self) -> str:
        """The task's name: its ``Task.name``, or the function's qualified name."""
        return self._name

    @property
    def attempts(self) -> int:
        """How many attempts have started so far (0 while first queued)."""
        return self._attempts

    @property
    def state(self) -> TaskState:
        """The task's current :class:`TaskState`."""
        state = self._state
        if state == PENDING:
            return TaskState.SCHEDULED if self._scheduled else TaskState.PENDING
        if state == RUNNING:
            return TaskState.RUNNING
        if state == FINISHED:
            return TaskState.FAILED if self._exception is not None else TaskState.SUCCEEDED
        return TaskState.CANCELLED

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} {self._name!r} {self.state.value}>"

    # -- the Future contract -------------------------------------------------

    @property  # type: ignore[override]
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        # cf.wait() and cf.as_completed() acquire this directly; it shares the
        # handle's lock, so they and the methods below exclude each other.
        # Never evaluated with the lock held (callers take the lock through
        # the Condition it returns), so the lock can guard its creation.
        cond = self._cond
        if cond is None:
            with self._lock:
                cond = self._new_condition_locked()
        return cond

    def _new_condition_locked(self) -> threading.Condition:
        if self._cond is None:
            self._cond = threading.Condition(self._lock)
        return self._cond

    @property
    def _waiters(self) -> List[Any]:  # type: ignore[override]
        # Read by cf.wait() and cf.as_completed() with the lock held.
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    def cancel(self) -> bool:
        """Cancel the task unless an attempt is running or it has ended.

        A task waiting between attempts (``SCHEDULED``) can be cancelled.

        Returns:
            True if the task is now cancelled (or already was), False if it
            is running or has finished.
        """
        canceller = self._canceller
        if self._state == PENDING and canceller is not None:
            return canceller(self)
        return self.cancelled()

    def cancelled(self) -> bool:
        """Return whether the task was cancelled."""
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        """Return whether an attempt is running right now."""
        return self._state == RUNNING

    def done(self) -> bool:
        """Return whether the task ended: succeeded, failed or cancelled."""
        return self._state in (FINISHED, CANCELLED_AND_NOTIFIED, CANCELLED)

    def result(self, timeout: Optional[float] = None) -> Any:
        """Wait for the task and return what it returned.

        Args:
            timeout: seconds to wait at most; None waits for ever.

        Raises:
            CancelledError: the task was cancelled.
            TimeoutError: the task did not end within ``timeout``.
            BaseException: whatever the final attempt raised, if it failed.
        """
        if self._state == FINISHED and self._exception is None:
            return self._result  # the common case, without a call (see _wait)
        self._wait(timeout)
        if self._state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    # Do not keep this frame alive through the traceback.
                    self = None  # type: ignore[assignment]  # noqa: PLW0642
            return self._result
        raise CancelledError()

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """Wait for the task and return the exception it failed with, or None.

        Raises:
            CancelledError: the task was cancelled.
            TimeoutError: the task did not end within ``timeout``.
        """
        self._wait(timeout)
        if self._state == FINISHED:
            return self._exception
        raise CancelledError()

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:  # type: ignore[type-arg]
        """Call ``fn(handle)`` once the task ends; at once if it already has.

        Callbacks run in the thread that ends the task. One that raises is
        logged and does not affect the others.
        """
        with self._lock:
            if not self.done():
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        self._run_callbacks([fn])

    def set_running_or_notify_cancel(self) -> bool:
        """Refused: a handle is started only by its queue's workers.

        On a stock Future an executor calls this before running the work;
        marking a queued handle running from outside would strand its task
        (no worker would start it, nothing would end it).

        Raises:
            RuntimeError: always.
        """
        raise RuntimeError("a TaskHandle is started by its TaskQueue, not by "
                           "set_running_or_notify_cancel()")

    def set_result(self, result: Any) -> None:
        """Refused: a handle is settled only by its queue, which counts it."""
        raise RuntimeError("a TaskHandle is settled by its TaskQueue, not by set_result()")

    def set_exception(self, exception: Optional[BaseException]) -> None:
        """Refused: a handle is settled only by its queue, which counts it."""
        raise RuntimeError("a TaskHandle is settled by its TaskQueue, not by set_exception()")

    def __await__(self) -> Generator[Any, None, Any]:
        """Wait for the task from a coroutine: ``await handle`` gives its result.

        Cancelling the coroutine stops the waiting only: the task itself goes
        on (cancel it with :meth:`cancel` if that is what you want).
        """
        from .aio import done_waiter  # asyncio is slow to import: only for its users

        yield from done_waiter(self).__await__()
        return self.result()

    # -- transitions, made by the queue's broker and settle step ----------------

    def _begin(self, attempt: int) -> bool:
        """PENDING -> RUNNING for attempt number ``attempt``; False if it was cancelled."""
        with self._lock:
            if self._state != PENDING:
                return False
            self._state = RUNNING
            self._attempts = attempt
            return True

    def _back_to_pending(self, scheduled: bool) -> bool:
        """RUNNING -> PENDING, to wait for another attempt; False if it was not running."""
        with self._lock:
            if self._state != RUNNING:
                return False
            self._state = PENDING
            self._scheduled = scheduled
            return True

    def _set_scheduled(self, scheduled: bool) -> None:
        """While pending: whether it waits for a due time (SCHEDULED) or for a worker."""
        self._scheduled = scheduled

    def _succeed(self, result: Any) -> None:
        """-> FINISHED with ``result``."""
        with self._lock:
            self._result = result
            self._state = FINISHED
            self._message = None  # a terminal handle holds only its outcome
            if self._waiter_list:
                for waiter in self._waiter_list:
                    waiter.add_result(self)
            if self._cond is not None:
                self._cond.notify_all()
            callbacks = self._callbacks
        if callbacks:
            self._run_callbacks(callbacks)

    def _fail(self, exc: BaseException) -> None:
        """-> FINISHED with ``exc`` as the final exception."""
        with self._lock:
            self._exception = exc
            self._state = FINISHED
            self._message = None
            if self._waiter_list:
                for waiter in self._waiter_list:
                    waiter.add_exception(self)
            if self._cond is not None:
                self._cond.notify_all()
            callbacks = self._callbacks
        if callbacks:
            self._run_callbacks(callbacks)

    def _mark_cancelled(self) -> Optional[List[Callable[[Future], object]]]:  # type: ignore[type-arg]
        """PENDING -> cancelled, running no user code.

        Returns:
            The done callbacks still to run, if this call cancelled the task;
            None if it was not pending.
        """
        with self._lock:
            if self._state != PENDING:
                return None
            # Straight to CANCELLED_AND_NOTIFIED: no executor will pass by to
            # notify cf.wait() waiters later, so do it now.
            self._state = CANCELLED_AND_NOTIFIED
            self._message = None
            if self._waiter_list:
                for waiter in self._waiter_list:
                    waiter.add_cancelled(self)
            if self._cond is not None:
                self._cond.notify_all()
            return self._callbacks or []

    def _wait(self, timeout: Optional[float]) -> None:
        # A finished handle never changes again, and its outcome is written
        # before its state: no lock is needed to see it. This also matters
        # for correctness: cf.wait(FIRST_EXCEPTION) calls exception() while
        # it holds this handle's (non-reentrant) lock.
        if self.done():
            return
        if timeout is not None and not timeout > 0:  # NaN too: as Future, at once
            raise TimeoutError()
        with self._lock:
            if self.done():
                return
            cond = self._new_condition_locked()
            deadline = None if timeout is None else monotonic() + timeout
            while not self.done():
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError()
                # A timeout beyond what a lock accepts is waited out in steps.
                cond.wait(None if remaining is None else wait_seconds(remaining))

    def _run_callbacks(self, callbacks: Optional[List[Callable[[Future], object]]]) -> None:  # type: ignore[type-arg]
        for callback in callbacks or ():
            try:
                callback(self)
            except BaseException:  # even SystemExit: a caller's callback must not break the worker
                log.exception("done callback %r of %r raised", callback, self)


def status_key(task_id: str) -> Any:
    """The key under which a broker in this process files the status of ``task_id``.

    A handle's own id is its sequence number (an int, which costs nothing to
    hash or keep) under this run's prefix; any other id (a durable broker's)
    is its own key. Matches :attr:`Message.status_key <taskqueue.message.Message.status_key>`.
    """
    prefix, _, seq = task_id.rpartition("-")
    if prefix == _ID_PREFIX and seq:
        try:
            number = int(seq, 16)
        except ValueError:
            return task_id
        if f"{number:x}" == seq:  # the id as a handle writes it, not "0x1" or "01"
            return number
    return task_id


def _notifying_canceller(on_cancel: Callable[[TaskHandle], object]) -> Callable[[TaskHandle], bool]:
    # A bare handle's cancel(): mark it, tell on_cancel, run its callbacks.
    def cancel(handle: TaskHandle) -> bool:
        callbacks = handle._mark_cancelled()
        if callbacks is None:
            return handle.cancelled()
        try:
            on_cancel(handle)
        finally:
            handle._run_callbacks(callbacks)
        return True
    return cancel
