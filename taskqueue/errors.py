"""Every exception taskqueue raises, in one place.

The tree::

    BaseException
     +-- TimeLimitExceeded               raised *inside* a task that ran too long
     +-- Exception
          +-- TaskQueueError             base of everything else the queue raises
               +-- QueueFull             no room within the allowed wait
               +-- QueueClosed (RuntimeError)  the queue no longer accepts work
               |    +-- QueueBroken (BrokenThreadPool)  a worker's initializer failed
               +-- Retry                 raised *by a task* to ask for a retry
               +-- TaskFailed            a task failed in another process (its error as text)
               +-- BrokerError           a broker's server cannot be used (names the server)
               +-- JournalError          a journal file cannot be used (names the file)
                    +-- JournalLocked    another queue has the journal open

``TimeLimitExceeded`` derives from ``BaseException``, like Dramatiq's
``Interrupt`` and trio's ``Cancelled``, so that a task's own
``except Exception:`` cannot swallow it.

``QueueClosed`` is also a ``RuntimeError`` (as CPython's ``BrokenExecutor``
is) so that ``except RuntimeError`` written for ``ThreadPoolExecutor`` keeps
working when a ``TaskQueue`` is dropped in its place; ``QueueBroken`` is
also ``concurrent.futures.thread.BrokenThreadPool``, what a
``ThreadPoolExecutor`` whose initializer failed raises.
"""

from __future__ import annotations

from concurrent.futures.thread import BrokenThreadPool

from .validate import optional_seconds

__all__ = ["TaskQueueError", "QueueFull", "QueueClosed", "QueueBroken", "Retry",
           "TimeLimitExceeded", "JournalError", "JournalLocked", "TaskFailed", "BrokerError"]


class TaskQueueError(Exception):
    """Raised by taskqueue; the base of every error it defines."""


class QueueFull(TaskQueueError):
    """Raised when the queue stays full for longer than the caller allowed."""


class QueueClosed(TaskQueueError, RuntimeError):
    """Raised when work is offered to a queue that has been shut down."""


class QueueBroken(QueueClosed, BrokenThreadPool):
    """Raised when a worker thread's initializer failed: the pool runs nothing more.

    Every task that had not started fails with it, and so does every later
    submit, as with a ``ThreadPoolExecutor`` whose initializer raised.
    """


class Retry(TaskQueueError):
    """Raised by a task to ask for another attempt.

    It counts against the task's ``retries`` like any other failure, but is
    retried even when it is not listed in ``retry_on``.

    Args:
        delay: seconds to wait before the next attempt; ``None`` uses the
            task's backoff.

    Raises:
        TypeError: ``delay`` is not a number.
        ValueError: ``delay`` is negative, NaN or infinite.
    """

    def __init__(self, delay: float | None = None) -> None:
        delay = optional_seconds("delay", delay)
        super().__init__(delay)
        self.delay = delay

    def __str__(self) -> str:
        if self.delay is None:
            return "task asked for a retry"
        return f"task asked for a retry in {self.delay}s"


class TaskFailed(TaskQueueError):
    """Raised by ``result()`` for a task of a shared broker that failed in a worker process.

    The producer's handle gets it whichever process ran the task (this one
    included), so that a failure reads the same wherever it happened.

    Its message carries the remote exception's type, message and traceback
    text; the exception itself never crosses processes (no pickle).

    Args:
        type_name: the remote exception's type, qualified (``"ValueError"``).
        message: ``str()`` of the remote exception.
        traceback: the remote exception's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        """The remote exception's type name."""
        self.message = message
        """The remote exception's message."""
        self.traceback = traceback
        """The remote exception's formatted traceback (may be empty)."""

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.traceback:
            text += f"\n\nRemote traceback:\n{self.traceback.rstrip()}"
        return text


class BrokerError(TaskQueueError):
    """Raised when a broker's server cannot be reached or answers with an error.

    The message names the server (never its password).
    """


class JournalError(TaskQueueError):
    """Raised when a journal file cannot be used: not a journal, corrupt, too new, unwritable.

    The message names the file. Also the exception of a dead letter made at
    recovery for a task whose function is not registered.
    """


class JournalLocked(JournalError):
    """Raised when a journal file is already open in another TaskQueue, here or in another process."""


class TimeLimitExceeded(BaseException):
    """Raised inside a task whose attempt ran past its time limit.

    The queue retries it like an ordinary error while retries remain.
    """
