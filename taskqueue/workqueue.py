"""The bounded queue between producers and workers: a ``queue.Queue``.

``WorkQueue`` adds to ``queue.Queue`` what admission needs and nothing
else: a producer's put is refused with :class:`QueueClosed` once the queue
is closed (checked under the queue's own mutex, so no put can slip in after
a shutdown has swept the queue); work that is already accepted (a retry, a
requeue after a worker died) re-enters past the bound, so that a full queue
can never deadlock the pool against itself; and ``wait_all_done`` is
``join()`` with a timeout. ``unfinished_tasks`` counts accepted tasks that
are not yet terminal: a task is put once and marked done once, however many
attempts it takes.

Ordering lives in ``_init/_qsize/_put/_get``, as in
CPython's ``PriorityQueue``, so a subclass changes order and nothing else.
"""

from __future__ import annotations

import queue
from collections import deque
from time import monotonic
from typing import Any, Deque, List, Optional

from .errors import QueueClosed, QueueFull

__all__ = ["WorkQueue"]


class WorkQueue(queue.Queue):  # type: ignore[type-arg]
    """A FIFO ``queue.Queue`` with closing, sealing and past-the-bound entry.

    Args:
        maxsize: how many items fit before a producer's put blocks; 0 for no
            bound.
        name: the owning queue's name, used in error messages.
    """

    def __init__(self, maxsize: int = 0, name: str = "taskqueue") -> None:
        super().__init__(maxsize)
        self.name = name
        self.accepting = True
        """False once closed: producers' puts raise QueueClosed."""
        self.sealed = False
        """True once sealed: even accepted work may no longer re-enter."""
        self.admitted = 0
        """How many items producers have put (under the mutex)."""

    # -- ordering (override these to change it) ------------------------------

    def _init(self, maxsize: int) -> None:
        self.queue: Deque[Any] = deque()

    def _qsize(self) -> int:
        return len(self.queue)

    def _put(self, item: Any) -> None:
        self.queue.append(item)

    def _get(self) -> Any:
        return self.queue.popleft()

    # -- admission ------------------------------------------------------------

    def admit(self, item: Any, *, block: bool = True, timeout: Optional[float] = None,
              bounded: bool = True) -> None:
        """Accept a new item from a producer, waiting for room if needed.

        Args:
            block: wait for room; when False, raise QueueFull at once if full.
            timeout: with ``block``, the most seconds to wait for room.
            bounded: False lets the item past ``maxsize`` (a worker thread
                submitting into its own queue must not wait for itself).

        Raises:
            QueueClosed: the queue is closed, now or while waiting.
            QueueFull: no room within ``timeout`` (or at once, without ``block``).
        """
        with self.not_full:
            if bounded and self.maxsize > 0:
                self._wait_for_room(block, timeout)
            if not self.accepting:
                raise self.closed_error()
            self._put(item)
            self.admitted += 1
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _wait_for_room(self, block: bool, timeout: Optional[float]) -> None:
        # Called with the mutex held; also wakes (and fails) on close.
        deadline = None if timeout is None else monotonic() + timeout
        while self.accepting and self._qsize() >= self.maxsize:
            remaining = None if deadline is None else deadline - monotonic()
            if not block or (remaining is not None and remaining <= 0):
                raise QueueFull(
                    f"{self.name} is full ({self.maxsize} tasks queued); "
                    "add workers, raise maxsize, or wait longer (submit_timeout)")
            self.not_full.wait(remaining)

    def reenter(self, item: Any) -> bool:
        """Put back an item that was accepted before, past the bound.

        Returns:
            False, putting nothing, if the queue is sealed.
        """
        with self.mutex:
            if self.sealed:
                return False
            self._put(item)
            self.not_empty.notify()
            return True

    def wake_workers(self, item: Any) -> None:
        """Put ``item`` (a stop sentinel) in, past the bound and any seal."""
        with self.mutex:
            self._put(item)
            self.not_empty.notify()

    def close(self) -> None:
        """Refuse producers from now on; wake any waiting for room."""
        with self.mutex:
            self.accepting = False
            self.not_full.notify_all()

    def seal(self) -> List[Any]:
        """Close, refuse re-entries too, and return every item still queued."""
        with self.mutex:
            self.accepting = False
            self.sealed = True
            items = []
            while self._qsize():
                items.append(self._get())
            self.not_full.notify_all()
            return items

    def wait_all_done(self, timeout: Optional[float] = None) -> bool:
        """Wait until every accepted item is marked done; False on timeout."""
        deadline = None if timeout is None else monotonic() + timeout
        with self.all_tasks_done:
            while self.unfinished_tasks:
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.all_tasks_done.wait(remaining)
            return True

    def closed_error(self) -> QueueClosed:
        """Return the error a producer gets from a closed queue."""
        return QueueClosed(
            f"{self.name} is shut down and accepts no new tasks; "
            "submit to a new TaskQueue instead")
