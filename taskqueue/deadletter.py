"""Dead letters: the record of a task that ended in failure, and their store.

The store is bounded: past its limit the oldest letter is dropped, and the
drop is counted, so that a failure storm cannot grow memory without end.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Deque, List

from .task import Task
from .validate import whole_number

__all__ = ["DeadLetter", "DeadLetterStore"]


@dataclass(frozen=True)
class DeadLetter:
    """A task that exhausted its retries or raised a non-retryable error."""

    task: Task
    """The work, as submitted; :meth:`TaskQueue.requeue` submits it again."""
    task_id: str
    """The id of the handle the failed submission returned."""
    exception: BaseException
    """What the final attempt raised."""
    traceback: str
    """The final exception's formatted traceback."""
    attempts: int
    """How many attempts were made."""
    submitted_at: float
    """When the task was submitted (seconds since the epoch)."""
    failed_at: float
    """When the final attempt failed (seconds since the epoch)."""

    @property
    def name(self) -> str:
        """The task's name."""
        return self.task.name


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

    def letters(self) -> List[DeadLetter]:
        """Return the letters held, oldest first (a copy)."""
        with self._lock:
            return list(self._letters)

    def counts(self) -> tuple[int, int]:
        """Return (letters held, letters dropped so far)."""
        with self._lock:
            return len(self._letters), self._dropped
