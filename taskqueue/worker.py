"""The worker loop: receive a message, run one attempt, report the outcome.

A worker holds no policy. It is handed a consumer of the queue's broker, the
settle step, a clock and the listeners, and does three things in a loop:
receive a message (the consumer begins its attempt, skipping what was
cancelled meanwhile), call the task, and hand the outcome to
:class:`~taskqueue.settle.Settle`. Settle may leave a retry that is due at
once to this worker, which then runs it next instead of receiving another.

A task's exceptions of any kind, ``BaseException`` included, fail that
attempt and nothing more. If the worker's own code fails (a bug in
taskqueue, or a fault injected in a broker step), the thread ends through
``on_crash``: the supervisor has the consumer put back what it held and
starts a replacement. The task may run twice; it is never dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import TimeLimitExceeded
from .events import EventKind, Listeners
from .timelimit import AttemptGuard

if TYPE_CHECKING:
    from .brokers.base import Consumer
    from .message import Message
    from .settle import Settle

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class _Abandoned(BaseException):
    """Raised in a worker whose thread the watchdog gave up on: it must stop."""


class Worker:
    """One worker thread of a pool.

    Args:
        index: the worker's number in the pool (part of its thread name).
        consumer: its side of the broker: what it receives, how it reports.
        settle: what each outcome means, and the broker's steps for it.
        clock: returns the current time in seconds.
        listeners: told when an attempt starts.
        on_start: called first in the new thread; if it raises, the worker
            runs nothing and ``on_crash`` is not called (an initializer
            failing is the supervisor's business: it reports it itself).
        on_crash: ``(worker, exception)``, called from the dying thread if
            the worker's own code raised.
        arm: ``(guard, deadline)``, called when an attempt with a time limit starts.
        time_limit: the default time limit of an attempt (None: no limit).
        name: the thread's name.
    """

    def __init__(
        self,
        index: int,
        consumer: Consumer,
        settle: Settle,
        *,
        clock: Callable[[], float],
        listeners: Listeners,
        on_start: Callable[[Worker], bool],
        on_crash: Callable[[Worker, BaseException], None],
        arm: Callable[[AttemptGuard, float], None],
        time_limit: Optional[float],
        name: str,
    ) -> None:
        self.index = index
        self.consumer = consumer
        self._settle = settle
        self._clock = clock
        self._listeners = listeners
        self._on_start = on_start
        self._on_crash = on_crash
        self._arm = arm
        self._time_limit = time_limit
        self.guard = AttemptGuard(self)
        """This worker's side of time limits (see :mod:`taskqueue.timelimit`)."""
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        self.guard.ident = threading.get_ident()
        if not self._on_start(self):
            return
        try:
            self._loop()
        except BaseException as exc:  # taskqueue's own code failed, not a task
            self._on_crash(self, exc)

    def _loop(self) -> None:
        consumer = self.consumer
        receive, resume = consumer.receive, consumer.resume
        succeeded, failed = self._settle.succeeded, self._settle.failed
        clock = self._clock
        tally = consumer.tally
        listeners = self._listeners
        emit, started_kind = listeners.emit, EventKind.STARTED  # looked up once, used per task
        default_limit = self._time_limit
        again: Optional[Message] = None
        while True:
            if again is not None:  # a retry settle left to this worker
                message, again = again, None
                if not resume(message):
                    continue  # cancelled meanwhile; settled by whoever cancelled it
            else:
                message = receive()  # started, or None
                if message is None:
                    return  # stopped, and nothing left to run
            message.started_at = started = clock()
            waited = started - (message.enqueued_at or message.submitted_at)
            tally.waits.append(waited)
            if listeners.callbacks:
                emit(started_kind, message.handle, None, waited)
            limit = message.time_limit or default_limit
            try:
                if limit is not None:
                    result = self._call_limited(message, started + limit)
                elif message.kwargs:
                    result = message.fn(*message.args, **message.kwargs)  # type: ignore[misc]
                else:
                    result = message.fn(*message.args)  # type: ignore[misc]
            except _Abandoned:
                log.warning("abandoned thread %s came back from %r after its time limit; "
                            "its late outcome is ignored", self.thread.name, message)
                return  # a new worker has taken this one's place
            except BaseException as exc:  # any error fails this attempt only
                ended = clock()
                tally.runs.append(ended - started)
                tally.ends.append(ended)
                again = failed(consumer, message, exc)
            else:
                ended = clock()
                tally.runs.append(ended - started)
                tally.ends.append(ended)
                succeeded(consumer, message, result)
            finally:
                # Drop this thread's references to the task, its result and
                # its error before blocking on the next receive(): otherwise
                # an idle worker keeps the last task's data alive.
                message = result = None  # type: ignore[assignment]

    def _call_limited(self, message: Message, deadline: float) -> Any:
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
                if message.kwargs:
                    return message.fn(*message.args, **message.kwargs)  # type: ignore[misc]
                return message.fn(*message.args)  # type: ignore[misc]
            finally:
                if not guard.disarm():
                    raise _Abandoned()
        except TimeLimitExceeded:
            if not guard.disarm():
                raise _Abandoned() from None
            raise
