"""Dead letters: the record of a task that ended in failure, and their store.

The store is bounded: past its limit the oldest letter is dropped, and the
drop is counted, so that a failure storm cannot grow memory without end.
A letter read back from elsewhere (a journal, Redis) whose task function
this process does not have holds a :class:`MissingTaskFunction` in its place.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import FrozenInstanceError
from traceback import format_exception
from typing import Any, Deque, List, Optional, Tuple, Type

from .errors import TaskQueueError
from .task import Task
from .validate import whole_number

__all__ = ["DeadLetter", "DeadLetterStore", "MissingTaskFunction", "error_text"]


class DeadLetter:
    """A task that exhausted its retries or raised a non-retryable error (frozen).

    Attributes:
        task: the work, as submitted; :meth:`TaskQueue.requeue` submits it again.
        task_id: the id of the handle the failed submission returned.
        exception: what the final attempt raised.
        traceback: the final exception's formatted traceback.
        attempts: how many attempts were made.
        submitted_at: when the task was submitted (seconds since the epoch).
        failed_at: when the final attempt failed (seconds since the epoch).

    ``traceback`` may be given as None: it is then formatted from
    ``exception`` the first time it is read. Formatting costs tens of
    microseconds on CPython 3.11 (it parses the source of every frame), which
    a failure storm should not pay for letters nobody reads.
    """

    __slots__ = ("task", "task_id", "exception", "_traceback", "attempts",
                 "submitted_at", "failed_at")

    task: Task
    task_id: str
    exception: BaseException
    attempts: int
    submitted_at: float
    failed_at: float

    def __init__(self, task: Task, task_id: str, exception: BaseException,
                 traceback: Optional[str], attempts: int, submitted_at: float,
                 failed_at: float) -> None:
        init = object.__setattr__
        init(self, "task", task)
        init(self, "task_id", task_id)
        init(self, "exception", exception)
        init(self, "_traceback", traceback)
        init(self, "attempts", attempts)
        init(self, "submitted_at", submitted_at)
        init(self, "failed_at", failed_at)

    @property
    def traceback(self) -> str:
        """The final exception's formatted traceback."""
        text = self._traceback
        if text is None:
            exc = self.exception
            text = "".join(format_exception(type(exc), exc, exc.__traceback__))
            object.__setattr__(self, "_traceback", text)  # a cache, not a change
        return text

    @property
    def name(self) -> str:
        """The task's name."""
        return self.task.name

    def _fields(self) -> Tuple[Any, ...]:
        return (self.task, self.task_id, self.exception, self.traceback, self.attempts,
                self.submitted_at, self.failed_at)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeadLetter):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # the task holds a dict

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a DeadLetter is frozen")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: a DeadLetter is frozen")

    def __repr__(self) -> str:
        return (f"DeadLetter(task={self.task!r}, task_id={self.task_id!r}, "
                f"exception={self.exception!r}, attempts={self.attempts!r}, "
                f"submitted_at={self.submitted_at!r}, failed_at={self.failed_at!r})")


class MissingTaskFunction:
    """Stands in, in a dead letter, for a task function this process does not have.

    A dead letter read back from a journal or from Redis names its task
    function. When the process reading it registers none of that name (a
    restart that dropped it, the command line, a dashboard), the letter's
    ``task.fn`` is one of these, so that the letter keeps its name, arguments
    and options, and a broker can still requeue it by name.

    Calling it runs nothing: it raises ``error("no task function named
    'name' is registered")``, with ``hint`` after a semicolon if one is given.
    Its ``name`` and ``__qualname__`` are the name, so the letter is reported
    under it; its repr is ``MissingTaskFunction('name')``. Like a function,
    it equals only itself.

    Args:
        name: the name the missing function is registered under.
        error: the class of the error a call raises.
        hint: what to do instead, for that error's message.
    """

    def __init__(self, name: str, *, error: Type[TaskQueueError] = TaskQueueError,
                 hint: str = "") -> None:
        self.__qualname__ = self.name = name
        self._error = error
        self._hint = hint

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        message = f"no task function named {self.name!r} is registered"
        raise self._error(f"{message}; {self._hint}" if self._hint else message)

    def __repr__(self) -> str:
        return f"MissingTaskFunction({self.name!r})"


def error_text(exc: BaseException) -> str:
    """``"Type: message"``, how a status and a journal show a final error; never raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return f"{type(exc).__name__}: <str() failed>"


class DeadLetterStore:
    """A bounded, thread-safe, oldest-first list of dead letters.

    Args:
        limit: how many letters to keep (>= 0; 0 keeps none, counting all as dropped).

    Raises:
        TypeError, ValueError: ``limit`` is not an int >= 0.
    """

    def __init__(self, limit: int) -> None:
        whole_number("limit", limit, minimum=0)
        self._lock = threading.Lock()
        self._letters: Deque[DeadLetter] = deque()
        self._limit = limit
        self._dropped = 0

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter``, dropping (and counting) the oldest one if full."""
        with self._lock:
            self._letters.append(letter)
            while len(self._letters) > self._limit:
                self._letters.popleft()
                self._dropped += 1

    def remove(self, letter: DeadLetter) -> bool:
        """Forget ``letter`` (matched by identity); return whether it was held."""
        with self._lock:
            for index, held in enumerate(self._letters):
                if held is letter:
                    del self._letters[index]
                    return True
            return False

    def clear(self) -> int:
        """Forget every letter held; return how many there were."""
        with self._lock:
            count = len(self._letters)
            self._letters.clear()
            return count

    def letters(self) -> List[DeadLetter]:
        """Return the letters held, oldest first (a copy)."""
        with self._lock:
            return list(self._letters)

    def counts(self) -> tuple[int, int]:
        """Return (letters held, letters dropped so far)."""
        with self._lock:
            return len(self._letters), self._dropped
