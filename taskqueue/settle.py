"""Settle: the one place an outcome becomes succeeded, retry, dead or cancelled.

Every attempt ends here, whoever ran it, on whichever broker: the worker
that ran it (or, for an abandoned attempt, the watchdog) hands the outcome
to :class:`Settle`, which asks the pure retry policy what it means and then
takes the broker's steps in one order (see :mod:`taskqueue.brokers.base`):
the broker records the outcome, resolves the handle and frees the key;
then listeners hear of it; acknowledging comes last. Cancelling goes the
same way, from :meth:`TaskHandle.cancel` or from a shutdown that cancels
what has not started.

Settle holds no state of its own: the broker owns the messages, the handle
its outcome.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

from .deadletter import DeadLetter
from .events import EventKind, Listeners
from .retry import decide
from .task import Task

if TYPE_CHECKING:
    from .brokers.base import Broker, Callbacks, Consumer
    from .message import Message
    from .task import TaskHandle

__all__ = ["Settle", "describe"]

log = logging.getLogger(__name__)

# Looked up once: emitted per task while anyone listens.
_SUCCEEDED, _RETRYING, _FAILED, _CANCELLED = (EventKind.SUCCEEDED, EventKind.RETRYING,
                                             EventKind.FAILED, EventKind.CANCELLED)


class Settle:
    """Turns each outcome into the broker's steps, in one order, for every broker.

    Args:
        broker: the queue's broker.
        listeners: told of each outcome, between the broker's record and the
            acknowledgement.
        clock: the queue's monotonic clock (for a dead letter's times).
    """

    def __init__(self, broker: Broker, listeners: Listeners, clock: Callable[[], float]) -> None:
        self._broker = broker
        self._listeners = listeners
        self._clock = clock

    def succeeded(self, consumer: Consumer, message: Message, result: Any) -> None:
        """An attempt returned ``result``: the task succeeded."""
        consumer.succeeded(message, result)
        if self._listeners.callbacks:
            self._listeners.emit(_SUCCEEDED, message.handle, None, self._ran(message))
        consumer.ack(message)

    def failed(self, consumer: Consumer, message: Message, exc: BaseException) -> Optional[Message]:
        """An attempt raised ``exc``: retry it, or fail the task.

        Returns:
            ``message``, if the consumer keeps the retry to run next itself.
        """
        attempt = message.attempts
        delay = decide(message.policy, exc, attempt)
        if delay is None:
            self._bury(consumer, message, exc, self._ran(message))
            return None
        # INFO, as Celery, Dramatiq and Huey log a retry: it is the queue
        # doing its job. With logging unconfigured it then costs one check,
        # not a LogRecord per failed attempt for the NullHandler to drop.
        if log.isEnabledFor(logging.INFO):
            log.info("task %s (%s) failed on attempt %d, retrying in %.3gs: %s",
                     message.name, message.id, attempt, delay, describe(exc))
        consumer.retrying(message, delay)
        # Told while the task waits and before it can start again: a listener
        # sees RETRYING before the next STARTED, and may still cancel it.
        if self._listeners.callbacks:
            self._listeners.emit(_RETRYING, message.handle, exc, self._ran(message))
        return consumer.reschedule(message, delay)

    def refused(self, consumer: Consumer, message: Message, exc: BaseException) -> None:
        """Fail a task that will never start with ``exc`` (the pool broke).

        ``message`` must be out of the broker's queues (sealed), so that no
        worker can start it; a cancel may still race, and wins or loses on
        the handle's own lock. No attempt is counted.
        """
        if message.handle._begin(message.attempts):
            consumer.current = message
            self._bury(consumer, message, exc, None)

    def _ran(self, message: Message) -> Optional[float]:
        # How long the attempt ran, for listeners (the worker timed it too,
        # for the stats, but only listeners need it here).
        started = message.started_at
        return None if started is None else self._clock() - started

    def _bury(self, consumer: Consumer, message: Message, exc: BaseException,
              ran: Optional[float]) -> None:
        consumer.failed(message, self._dead_letter(message, exc))
        log.error("task %s (%s) failed after %d attempt(s)", message.name, message.id,
                  message.attempts, exc_info=exc)
        if self._listeners.callbacks:
            self._listeners.emit(_FAILED, message.handle, exc, ran)
        consumer.ack(message)

    def _dead_letter(self, message: Message, exc: BaseException) -> DeadLetter:
        now_wall, now = time.time(), self._clock()
        task = message.task or Task(message.fn or _nothing, message.args, message.kwargs,
                                    name=message.name)
        return DeadLetter(
            task=task,
            task_id=message.id,
            exception=exc,
            traceback=None,  # formatted when first read: see DeadLetter
            attempts=message.attempts,
            submitted_at=now_wall - (now - message.submitted_at),
            failed_at=now_wall,
        )

    # -- cancelling ------------------------------------------------------------------

    def cancel(self, handle: TaskHandle) -> bool:
        """Cancel a task that has not started (every handle's ``cancel()`` comes here).

        Returns:
            True if it is cancelled now (or was already), False if it had
            started or ended.
        """
        withdrawn = self._broker.withdraw(handle)
        if withdrawn is None:
            return handle.cancelled()
        message, callbacks = withdrawn
        self._broker.cancelled(message)
        try:
            if self._listeners.callbacks:
                self._listeners.emit(_CANCELLED, handle)
        finally:
            self._broker.ack(message)
            handle._run_callbacks(callbacks)
        return True

    def cancel_all(self, messages: Sequence[Message]) -> None:
        """Cancel every message taken out by a seal, in two passes.

        First every task is cancelled and acknowledged, running no user
        code; then the events and done callbacks run. A callback that calls
        ``shutdown()`` or ``join()`` then finds nothing left to wait for.
        """
        cancelled: List[Tuple[TaskHandle, Callbacks]] = []
        for message in messages:
            withdrawn = self._broker.withdraw(message.handle)
            if withdrawn is not None:
                self._broker.cancelled(message)
                self._broker.ack(message)
                cancelled.append((message.handle, withdrawn[1]))
        for handle, callbacks in cancelled:
            if self._listeners.callbacks:
                self._listeners.emit(_CANCELLED, handle)
            handle._run_callbacks(callbacks)


def describe(exc: BaseException) -> str:
    """``repr(exc)`` for a log message; never raises.

    A repr now, so that a record does not keep the exception (and through
    its traceback, the task's arguments) alive in a handler that buffers
    records; and a ``repr()`` that raises must not kill the worker logging it.
    """
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__}: repr() failed>"


def _nothing(*args: Any, **kwargs: Any) -> None:
    """Stands in, in a dead letter, for a callable this process does not have."""
