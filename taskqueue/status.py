"""What a queue can tell about one task, and about what waits and runs now.

:class:`TaskInfo` is the frozen answer to "what happened to task 9f3c…?"
(:meth:`TaskQueue.get_task_status`); :class:`Overview` is a look at what a
queue holds right now (pending by priority, scheduled, running, and the
processes that consume). :class:`History` keeps the statuses of the most
recent finished tasks, oldest forgotten first, for a broker that keeps them
in this process.

Every time here is wall-clock, seconds since the epoch, so that a status
means the same in every process that reads it.
"""

from __future__ import annotations

import time
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .task import TaskState

if TYPE_CHECKING:
    from .message import Message

__all__ = ["TaskInfo", "Overview", "ProcessInfo", "History", "HISTORY", "info_of", "WallClock"]

HISTORY = 10_000
"""How many finished tasks' statuses a queue keeps by default."""


@dataclass(frozen=True)
class TaskInfo:
    """The status of one task, as its queue knows it.

    Times are wall-clock seconds since the epoch; None where the task has
    not got that far.
    """

    id: str
    """The task's id (its handle's ``id``)."""
    name: str
    """The task's name."""
    state: TaskState
    """Where it is: pending, scheduled, running, or one of the three terminal states."""
    attempts: int
    """How many attempts have started."""
    submitted_at: Optional[float]
    """When it was submitted."""
    started_at: Optional[float] = None
    """When its last attempt started (None: none has)."""
    finished_at: Optional[float] = None
    """When it reached its terminal state."""
    due: Optional[float] = None
    """For a scheduled task, when it may start (a delay or a backoff)."""
    error: Optional[str] = None
    """For a failed task, the final error's type and message (``"ValueError: bad input"``)."""
    priority: int = 0
    """Its priority (a higher number runs first)."""

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict of every field (``state`` as its value, ``"succeeded"``)."""
        return {"id": self.id, "name": self.name, "state": self.state.value,
                "attempts": self.attempts, "submitted_at": self.submitted_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "due": self.due, "error": self.error, "priority": self.priority}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> TaskInfo:
        """The inverse of :meth:`to_dict`.

        Raises:
            KeyError, ValueError: a field is missing, or the state unknown.
        """
        return cls(id=data["id"], name=data["name"], state=TaskState(data["state"]),
                   attempts=int(data["attempts"]), submitted_at=data.get("submitted_at"),
                   started_at=data.get("started_at"), finished_at=data.get("finished_at"),
                   due=data.get("due"), error=data.get("error"),
                   priority=int(data.get("priority") or 0))


@dataclass(frozen=True)
class ProcessInfo:
    """One process that consumes a queue: its workers, and when it was last heard of."""

    name: str
    """``host:pid`` (on Redis, as the process registered itself)."""
    workers: int
    """Its worker threads."""
    running: int
    """Attempts it runs now (where known; 0 otherwise)."""
    seen_at: float
    """When it was last heard of (wall-clock)."""

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {"name": self.name, "workers": self.workers, "running": self.running,
                "seen_at": self.seen_at}


@dataclass(frozen=True)
class Overview:
    """What a queue holds right now, for a dashboard."""

    pending_by_priority: Dict[int, int]
    """How many tasks wait for a worker, by priority (only priorities that have some)."""
    scheduled: List[TaskInfo]
    """Tasks waiting for a due time, soonest first (at most the limit asked for)."""
    running: List[TaskInfo]
    """Tasks running now (at most the limit asked for)."""
    processes: List[ProcessInfo] = field(default_factory=list)
    """The processes that consume (this one alone, for a broker in this process)."""

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (priorities as string keys, as JSON has them)."""
        return {"pending_by_priority": {str(p): n for p, n in
                                        sorted(self.pending_by_priority.items(), reverse=True)},
                "scheduled": [t.to_dict() for t in self.scheduled],
                "running": [t.to_dict() for t in self.running],
                "processes": [p.to_dict() for p in self.processes]}


class WallClock:
    """Turns readings of a queue's monotonic clock into wall-clock times.

    The offset is taken once, so that times of one queue stay consistent
    with each other even if the wall clock is stepped meanwhile.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._offset = time.time() - clock()

    def __call__(self, reading: float) -> float:
        """The wall-clock time of ``reading`` (a reading of the queue's clock)."""
        return reading + self._offset


def info_of(message: Message, state: TaskState, wall: WallClock, *,
            finished: Optional[float] = None, error: Optional[str] = None) -> TaskInfo:
    """The status of the task ``message`` carries, in ``state``.

    Args:
        finished: when it ended, on the queue's clock (terminal states).
        error: the final error, for a failed task.
    """
    started = message.started_at
    return TaskInfo(
        id=message.id, name=message.name, state=state, attempts=message.attempts,
        submitted_at=wall(message.submitted_at),
        started_at=wall(started) if started is not None else None,
        finished_at=wall(finished) if finished is not None else None,
        due=wall(message.due) if message.due is not None and state is TaskState.SCHEDULED
        else None,
        error=error, priority=message.priority)


class History:
    """The statuses of the most recent finished tasks, oldest forgotten first.

    Args:
        limit: how many to keep; 0 keeps none.
        wall: turns the queue's clock readings into wall-clock times.

    Recording a status is on every task's way to its end, so it allocates
    nothing: the fields go into a ring of preallocated lists (one per
    field), slot after slot, each new status over the oldest. A new tuple
    per task would cost more in garbage collections than in building it.
    A :class:`TaskInfo` is built only when somebody asks; a look-up scans
    the kept keys at C speed (``list.index``). Safe from any thread.
    """

    def __init__(self, limit: int, wall: WallClock) -> None:
        self.limit = limit
        """How many statuses are kept at most."""
        self._wall = wall
        size = limit or 1
        self._keys: List[Any] = [None] * size
        self._names: List[Optional[str]] = [None] * size
        self._states: List[Optional[TaskState]] = [None] * size
        self._attempts: List[int] = [0] * size
        self._submitted: List[float] = [0.0] * size
        self._started: List[Optional[float]] = [None] * size
        self._finished: List[float] = [0.0] * size
        self._errors: List[Optional[str]] = [None] * size
        self._priorities: List[int] = [0] * size
        self.add = self._adder()

    def _adder(self) -> Callable[..., None]:
        keys, names, states, attempts = self._keys, self._names, self._states, self._attempts
        submitted, started, finished_at = self._submitted, self._started, self._finished
        errors, priorities, limit = self._errors, self._priorities, self.limit or 1
        next_slot = itertools.count().__next__  # one atomic step per status

        # A closure over the lists: on every task's way to its end, so each
        # field is a local lookup and a store, nothing more.
        def add(message: Message, state: TaskState, finished: float,
                error: Optional[str] = None) -> None:
            """Keep the status of the task ``message`` carries, ended in ``state`` at ``finished``.

            ``finished`` is a reading of the queue's clock; the oldest kept
            status is forgotten once ``limit`` are kept.
            """
            slot = next_slot() % limit
            # The key goes last and is blanked first: a look-up that finds
            # it reads fields that are this task's (and checks it again).
            keys[slot] = None
            names[slot] = message.name
            states[slot] = state
            attempts[slot] = message.attempts
            submitted[slot] = message.submitted_at
            started[slot] = message.started_at
            finished_at[slot] = finished
            errors[slot] = error
            priorities[slot] = message.priority
            keys[slot] = message.status_key
        return add

    def get(self, key: Any, task_id: str) -> Optional[TaskInfo]:
        """The status kept under ``key`` (``status_key(task_id)``), or None."""
        keys = self._keys
        try:
            slot = keys.index(key)
        except ValueError:
            return None
        started = self._started[slot]
        info = TaskInfo(id=task_id, name=self._names[slot] or "",  # type: ignore[arg-type]
                        state=self._states[slot],  # type: ignore[arg-type]
                        attempts=self._attempts[slot], submitted_at=self._wall(self._submitted[slot]),
                        started_at=None if started is None else self._wall(started),
                        finished_at=self._wall(self._finished[slot]), error=self._errors[slot],
                        priority=self._priorities[slot])
        if keys[slot] != key:  # overwritten while being read: forgotten meanwhile
            return None
        return info

    def __len__(self) -> int:
        return sum(1 for key in self._keys if key is not None)
