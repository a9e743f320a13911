"""Message: one task's work and options, as it waits in a broker.

A :class:`Message` is what a broker holds between ``submit`` and the task's
terminal state: the task's name (and, in this process, its callable), its
arguments, the options that steer it (priority, unique key, time limit,
retry policy), how many attempts it has had, and when it is due. It is apart
from the :class:`~taskqueue.task.TaskHandle` the caller holds: a handle is
resolved from outcomes, a message is what a worker receives and runs.

For a broker in this process, ``message.handle`` is the caller's handle
itself; for one whose workers live elsewhere, the consuming process gives
each message it receives a handle of its own (so that its listeners see the
task), and the caller's handle is resolved from the outcome the broker
carries back. Durable brokers serialise a message by name, arguments and
options, never its callable.

A message is data with no behaviour: brokers, the worker and the settle
step change its ``attempts`` and ``due``; nothing else changes it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from .retry import RetryPolicy
from .task import Task, TaskHandle, callable_name

__all__ = ["Message", "MessageMaker"]


class Message:
    """One task as it waits in a broker.

    Args:
        fn: the callable to run, or None where it is found by ``name`` when
            received (a message read back from a journal or from Redis).
        args: positional arguments.
        kwargs: keyword arguments, or None for none.
        name: the task's name (the registered name of a task function).
        policy: its retry policy (retries, backoff, which errors retry).
        handle: the handle that follows it in this process.

    Every other field starts empty and is set by whoever builds the message
    (the queue, on submit) before it is given to a broker.
    """

    __slots__ = ("_id", "name", "fn", "args", "kwargs", "policy", "handle", "priority", "key",
                 "time_limit", "task", "attempts", "due", "submitted_at", "enqueued_at",
                 "started_at", "status_key")

    def __init__(self, fn: Optional[Callable[..., Any]], args: Tuple[Any, ...],
                 kwargs: Optional[Dict[str, Any]], name: str, policy: RetryPolicy,
                 handle: TaskHandle) -> None:
        self._id: Optional[str] = None
        self.name = name
        """The task's name."""
        self.fn = fn
        """The callable, where this process has it."""
        self.args = args
        """Positional arguments."""
        self.kwargs = kwargs
        """Keyword arguments, or None."""
        self.policy = policy
        """The retry policy: how many retries, how long between, for which errors."""
        self.handle = handle
        """The handle that follows this task in this process."""
        self.priority = 0
        """A higher number runs first."""
        self.key: Optional[str] = None
        """A unique key: at most one live task holds it."""
        self.time_limit: Optional[float] = None
        """Seconds an attempt may run (None: the queue's default)."""
        self.task: Optional[Task] = None
        """The Task it was submitted as, if any: its options, for durable brokers and dead letters."""
        self.attempts = 0
        """Attempts started so far."""
        self.due: Optional[float] = None
        """When it may start, on the queue's clock (a delay, a backoff); None: now."""
        self.submitted_at = 0.0
        """When it was submitted, on the queue's clock."""
        self.enqueued_at = 0.0
        """When it last entered the ready queue (0.0: when it was submitted)."""
        self.started_at: Optional[float] = None
        """When its last attempt started, on the queue's clock (None: none has)."""
        self.status_key: Any = handle._seq if handle._id is None else handle._id
        """What a broker files this task's status under: :func:`~taskqueue.task.status_key`
        of its id (the handle's number, an int that costs little to hash; a durable id as is)."""

    @property
    def id(self) -> str:
        """The task's id: a durable broker's own, or its handle's."""
        if self._id is not None:
            return self._id
        return self.handle.id

    @id.setter
    def id(self, value: str) -> None:
        self._id = self.status_key = value

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.name!r} attempts={self.attempts}>"


class MessageMaker:
    """Builds a queue's messages and their handles, the queue's defaults applied.

    Args:
        policy: the queue's default retry policy.
        canceller: what each handle's ``cancel()`` asks (the queue's settle step).
        clock: the queue's monotonic clock (submission and due times).

    Holds no reference to the queue: a broker may keep it (to turn tasks
    read back after a restart into messages) without keeping the queue alive.
    """

    def __init__(self, policy: RetryPolicy, canceller: Callable[[TaskHandle], bool],
                 clock: Callable[[], float]) -> None:
        self.policy = policy
        """The queue's default retry policy."""
        self.canceller = canceller
        """What each handle's ``cancel()`` asks."""
        self.clock = clock
        """The queue's clock."""

    def for_call(self, fn: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Message:
        """The message of ``submit(fn, *args, **kwargs)``; ``fn`` may be a Task.

        Raises:
            TypeError: ``fn`` is not callable, or a Task came with arguments.
        """
        if type(fn) is Task:
            if args or kwargs:
                raise TypeError("submit(task) takes no further arguments; "
                                "put them in Task(fn, args, kwargs)")
            return self.for_task(fn)
        if not callable(fn):
            raise TypeError(f"fn must be callable or a Task, got {fn!r}")
        # TaskQueue.submit has these lines inlined, for its hot path.
        handle = TaskHandle(callable_name(fn), self.canceller)
        message = handle._message = Message(fn, args, kwargs or None, handle._name,
                                            self.policy, handle)
        message.submitted_at = self.clock()
        return message

    def for_task(self, task: Task) -> Message:
        """The message of a :class:`Task`: its options laid over the queue's defaults."""
        handle = TaskHandle(task.name, self.canceller)
        message = handle._message = Message(task.fn, task.args, task.kwargs or None, task.name,
                                            task.policy(self.policy), handle)
        message.priority = task.priority
        message.key = task.key
        message.time_limit = task.time_limit
        message.task = task
        message.submitted_at = now = self.clock()
        if task.delay:
            message.due = now + task.delay
        return message
