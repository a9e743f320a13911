"""What a dashboard shows: a *source*, over a live queue or a journal file.

A source answers the dashboard's questions in the queue's own terms
(:class:`~taskqueue.Stats`, :class:`~taskqueue.TaskInfo`,
:class:`~taskqueue.DeadLetter`, :class:`~taskqueue.Overview`) and carries
out its three actions. The HTTP side (:mod:`taskqueue.dashboard.server`)
never touches a queue but through one.

- :class:`QueueSource` wraps a :class:`~taskqueue.TaskQueue` in this process
  (or a producer-only queue on a shared Redis broker): it can act.
- :class:`JournalSource` reads a journal file whose program runs elsewhere,
  through a :class:`~taskqueue.JournalView`: it cannot act, for a running
  journal is changed only by the queue that owns it.

Every method may be called from any thread (the server's request threads
and its sampler call them at once).
"""

from __future__ import annotations

import os
from typing import List, Optional, Union

from taskqueue import DeadLetter, JournalView, Overview, Stats, TaskInfo, TaskQueue

__all__ = ["QueueSource", "JournalSource", "CannotAct", "REQUEUE_TIMEOUT"]

REQUEUE_TIMEOUT = 5.0
"""Seconds a requeue waits for room in a full queue before it is answered 503.

Never the queue's own ``submit_timeout``, which may be None: a request
thread must not wait for ever on a queue that stays full.
"""


class CannotAct(Exception):
    """Raised by a source that cannot carry out actions; the message says why (one line)."""


class QueueSource:
    """A dashboard's view of a :class:`~taskqueue.TaskQueue`, with its actions.

    Args:
        queue: the queue; the source only calls its public methods, and
            never starts or shuts it down.

    Raises:
        TypeError: ``queue`` is not a TaskQueue.
    """

    can_act = True

    def __init__(self, queue: TaskQueue) -> None:
        if not isinstance(queue, TaskQueue):
            raise TypeError(f"queue must be a TaskQueue, got {queue!r}")
        self._queue = queue
        self.name: str = queue.name
        """The queue's name."""

    def stats(self) -> Stats:
        """The queue's :meth:`~taskqueue.TaskQueue.stats`."""
        return self._queue.stats()

    def task(self, task_id: str) -> Optional[TaskInfo]:
        """The status of task ``task_id``, or None if the queue does not know it."""
        return self._queue.get_task_status(task_id)

    def dead(self) -> List[DeadLetter]:
        """The dead letters, oldest first."""
        return self._queue.dead_letters()

    def overview(self, limit: int) -> Overview:
        """What waits and runs now, at most ``limit`` tasks in each list."""
        return self._queue.overview(limit)

    def requeue(self, task_id: str) -> Optional[str]:
        """Submit dead letter ``task_id``'s task again; return the new task's id.

        Returns:
            The new id, or None if no dead letter of that id is held (never
            was, or was requeued or purged meanwhile, by another request too).

        Raises:
            QueueFull: the queue stayed full for :data:`REQUEUE_TIMEOUT`
                seconds (the letter is kept).
            QueueClosed: as :meth:`TaskQueue.requeue` (the letter is kept).
            CannotAct: the queue refuses the letter's task (on Redis, a task
                function this process has not registered); the letter is kept.
        """
        for letter in self._queue.dead_letters():
            if letter.task_id == task_id:
                try:
                    return self._queue.requeue(letter, timeout=REQUEUE_TIMEOUT).id
                except ValueError:  # requeued or purged since we looked
                    return None
                except TypeError as exc:
                    raise CannotAct(f"{self.name} cannot requeue {task_id}: {exc}") from None
        return None

    def purge(self) -> int:
        """Forget every dead letter; return how many there were."""
        return self._queue.purge_dead()

    def cancel(self, task_id: str) -> Optional[bool]:
        """Cancel task ``task_id`` unless it has started.

        Returns:
            True if it is cancelled (now or already), False if it has
            started or ended, None if the queue does not know it.
        """
        if self._queue.get_task_status(task_id) is None:
            return None
        return self._queue.cancel_task(task_id)

    def close(self) -> None:
        """Nothing to release: the queue is its owner's to shut down."""

    def __repr__(self) -> str:
        return f"<QueueSource {self.name!r}>"


class JournalSource:
    """A read-only dashboard view of a journal file, safe while its program runs.

    Args:
        path: the journal file (``TaskQueue(journal=PATH)``).

    Raises:
        JournalError: the file is missing, not a journal, corrupt, or of a
            newer schema version.
    """

    can_act = False

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self._view = JournalView(path)
        self.name: str = self._view.path
        """The journal file's path."""

    def stats(self) -> Stats:
        """What the file holds, as :class:`~taskqueue.Stats` (:meth:`JournalView.stats`)."""
        return self._view.stats()

    def task(self, task_id: str) -> Optional[TaskInfo]:
        """The status the file holds of task ``task_id``, or None."""
        return self._view.get_task_status(task_id)

    def dead(self) -> List[DeadLetter]:
        """The dead letters in the file, oldest first.

        Each one's ``exception`` is a :class:`~taskqueue.TaskFailed` (the file
        holds the error as text, ``"Type: message"``), as on Redis.
        """
        return self._view.dead_letters()

    def overview(self, limit: int) -> Overview:
        """What waits and runs now, as the file tells, at most ``limit`` tasks in each list."""
        return self._view.overview(limit)

    def requeue(self, task_id: str) -> Optional[str]:
        """Refused: see :meth:`refusal`.

        Raises:
            CannotAct: always.
        """
        raise CannotAct(self.refusal())

    def purge(self) -> int:
        """Refused: see :meth:`refusal`.

        Raises:
            CannotAct: always.
        """
        raise CannotAct(self.refusal())

    def cancel(self, task_id: str) -> Optional[bool]:
        """Refused: see :meth:`refusal`.

        Raises:
            CannotAct: always.
        """
        raise CannotAct(self.refusal())

    def refusal(self) -> str:
        """Why this source does not act."""
        return (f"{self.name} is changed only by the program that owns it; this dashboard "
                "only reads it (requeue or purge with 'python -m taskqueue journal' once "
                "the program has stopped)")

    def close(self) -> None:
        """Close the file; idempotent."""
        self._view.close()

    def __repr__(self) -> str:
        return f"<JournalSource {self.name!r}>"
