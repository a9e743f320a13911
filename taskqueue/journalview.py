"""JournalView: a read-only look into a journal file while its owner runs.

The command line's summaries and listings, and the dashboard of a journal
whose program runs elsewhere, read the file through a :class:`JournalView`:
a read-only SQLite connection (it can never change the file, nor block its
owner, thanks to the write-ahead log). Besides the task rows, it reads what
an owner keeps for watchers (see :data:`~taskqueue.journalfile.OBSERVED`):
ended tasks' statuses, the totals, and which process owns the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from . import journalfile
from .deadletter import DeadLetter, MissingTaskFunction
from .errors import JournalError, TaskFailed
from .journalfile import (COLUMNS, DEAD, PENDING, RUNNING, SCHEDULED, SCHEMA_VERSION, STATES, Row,
                          check_file, decode_row, error, read_only)
from .stats import Stats, percentile
from .status import Overview, ProcessInfo, TaskInfo
from .task import Task, TaskState

__all__ = ["JournalView"]

# A row's state, as a TaskState (a dead letter is a failed task).
_STATES = {PENDING: TaskState.PENDING, SCHEDULED: TaskState.SCHEDULED,
           RUNNING: TaskState.RUNNING, DEAD: TaskState.FAILED}
_RECENT = 2048  # ended tasks the timings and the rate are taken from (as a worker's window)
_RATE_SPAN = 60.0  # seconds the rate looks back at most
# What calling a dead letter's task function says: a view only reads.
_OWNER = "it runs in the program that owns the journal: requeue its dead letters there"


class JournalView:
    """A read-only look into a journal file, safe while its owner runs.

    It takes no lock the owner needs and never writes (not even the header):
    the command line uses it for summaries and listings.

    Args:
        path: the journal file.
        serializer: decodes task arguments (``json`` if None).

    Raises:
        JournalError: the file is missing, not a journal, corrupt, or of a
            newer schema version than this taskqueue reads.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, serializer: Any = None,
                 newest: int = SCHEMA_VERSION) -> None:
        self.path = os.fspath(path)
        """The journal file's path, as given."""
        self._loads = (serializer or json).loads
        self._lock = threading.Lock()
        if not os.path.isfile(self.path):
            if os.path.exists(self.path):
                raise JournalError(f"{self.path} is not a regular file, so not a taskqueue journal")
            raise JournalError(f"{self.path}: no such journal file")
        # Kept open while the connection is: see journalfile.owner_running.
        self._probe = journalfile.open_probe(self.path)
        try:
            self._conn = read_only(self.path)
            # Opened immutable (see read_only) when no log was beside it;
            # once an owner writes again (a log appears), it is reopened.
            self._immutable = not os.path.exists(self.path + "-wal")
            try:
                check_file(self.path, self._conn, newest)
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            if self._probe is not None:
                os.close(self._probe)
            raise

    def rows(self, where: str = "", params: Tuple[Any, ...] = (),
             order: str = "submitted_at, rowid") -> Iterator[Row]:
        """Yield the checked rows matching ``where`` (SQL, with ``?`` params), in ``order``.

        Raises:
            JournalError: the file cannot be read.
        """
        sql = f"SELECT {COLUMNS} FROM tasks" + (f" WHERE {where}" if where else "") \
            + f" ORDER BY {order}"
        for values in self._fetch(sql, params):
            yield decode_row(values, self._loads)

    def counts(self) -> Dict[str, int]:
        """Return how many tasks are in each state (every state present, 0 if none)."""
        found = dict(self._fetch("SELECT state, count(*) FROM tasks GROUP BY state", ()))
        return {state: int(found.get(state, 0)) for state in STATES}

    def dead(self, name: Optional[str] = None) -> List[Row]:
        """Return the dead letters, oldest failure first; only ``name``'s if given."""
        if name is None:
            return list(self.rows("state = 'dead'", (), "failed_at, rowid"))
        return list(self.rows("state = 'dead' AND name = ?", (name,), "failed_at, rowid"))

    def _fetch(self, sql: str, params: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
        with self._lock:
            try:
                return self._current().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise error(self.path, "cannot be read", exc) from None

    # -- for a dashboard: the fields a queue of its own would give --------------------

    @property
    def name(self) -> str:
        """The journal file's path (a dashboard shows it as the queue's name)."""
        return self.path

    def stats(self) -> Stats:
        """The queue's totals and recent timings, as :meth:`TaskQueue.stats` gives them.

        Counts of what waits and runs are the file's rows now; succeeded,
        failed, cancelled and retried are totals over the file's life; the
        timings and the rate come from the most recent ended tasks' statuses.
        ``submitted`` is their sum, so the identity of :class:`Stats` holds.
        """
        counts = self.counts()
        totals = dict(self._fetch_optional("SELECT name, value FROM counters"))
        owner = self._owner()
        recent = self._fetch_optional(
            "SELECT attempts, submitted_at, started_at, finished_at, state FROM history "
            "ORDER BY seq DESC LIMIT ?", (_RECENT,))
        waits = sorted(s - q for a, q, s, _, _ in recent if a == 1 and s is not None and q)
        runs = sorted(f - s for _, _, s, f, state in recent
                      if s is not None and state != "cancelled")
        succeeded, failed = int(totals.get("succeeded", 0)), int(totals.get("failed", 0))
        cancelled = int(totals.get("cancelled", 0))
        pending = counts[PENDING] + counts[SCHEDULED]
        return Stats(
            submitted=succeeded + failed + cancelled + pending + counts[RUNNING],
            succeeded=succeeded, failed=failed, cancelled=cancelled,
            retried=int(totals.get("retried", 0)), pending=pending, running=counts[RUNNING],
            workers=owner[2] if owner else 0, dead_letters=counts[DEAD], dead_letters_dropped=0,
            wait_p50=percentile(waits, 0.50), wait_p95=percentile(waits, 0.95),
            wait_p99=percentile(waits, 0.99), run_p50=percentile(runs, 0.50),
            run_p95=percentile(runs, 0.95), run_p99=percentile(runs, 0.99),
            completed_per_second=_rate([f for _, _, _, f, _ in recent], time.time()),
            scheduled=counts[SCHEDULED])

    def get_task_status(self, task_id: str) -> Optional[TaskInfo]:
        """The status of ``task_id``: its row if it has not ended well, else its kept status.

        Returns:
            None for an id the file does not hold (never seen, or forgotten).
        """
        for row in self.rows("id = ?", (task_id,)):
            return self._info(row)
        found = self._fetch_optional(
            "SELECT name, state, attempts, submitted_at, started_at, finished_at, error, "
            "priority FROM history WHERE id = ?", (task_id,))
        if not found:
            return None
        name, state, attempts, submitted, started, finished, error_text, priority = found[0]
        return TaskInfo(id=task_id, name=name, state=TaskState(state), attempts=attempts,
                        submitted_at=submitted, started_at=started, finished_at=finished,
                        error=error_text, priority=priority or 0)

    def overview(self, limit: int = 100) -> Overview:
        """What waits and runs in the file now, and its owner if it is running."""
        pending: Dict[int, int] = {}
        for (options,) in self._fetch("SELECT options FROM tasks WHERE state = 'pending'", ()):
            priority = _priority(options)
            pending[priority] = pending.get(priority, 0) + 1
        scheduled = [self._info(row) for row in
                     self.rows("state = 'scheduled'", (), f"due, rowid LIMIT {int(limit)}")]
        running = [self._info(row) for row in
                   self.rows("state = 'running'", (), f"submitted_at, rowid LIMIT {int(limit)}")]
        processes = []
        owner = self._owner()
        if owner is not None and self._owner_running():
            pid, host, workers, _ = owner
            processes.append(ProcessInfo(name=f"{host}:{pid}", workers=workers,
                                         running=len(running), seen_at=time.time()))
        return Overview(pending_by_priority=pending, scheduled=scheduled, running=running,
                        processes=processes)

    def dead_letters(self) -> List[DeadLetter]:
        """The dead letters as :class:`DeadLetter` objects, oldest failure first.

        Each one's ``task`` names the registered task function and holds its
        arguments; its callable only stands in (this process need not have
        the function): requeue through the program that owns the file.
        """
        return [DeadLetter(task=Task(MissingTaskFunction(row.name, error=JournalError, hint=_OWNER),
                                     row.args, row.kwargs, name=row.name),
                           task_id=row.id, exception=_failure(row.error, row.traceback),
                           traceback=row.traceback or "", attempts=row.attempts,
                           submitted_at=row.submitted_at,
                           failed_at=row.failed_at if row.failed_at is not None else 0.0)
                for row in self.dead()]

    def _info(self, row: Row) -> TaskInfo:
        started = self._fetch_optional("SELECT started_at FROM tasks WHERE id = ?", (row.id,))
        dead = row.state == DEAD
        return TaskInfo(id=row.id, name=row.name, state=_STATES[row.state], attempts=row.attempts,
                        submitted_at=row.submitted_at,
                        started_at=started[0][0] if started else None,
                        finished_at=row.failed_at if dead else None,
                        due=row.due if row.state == SCHEDULED else None,
                        error=row.error if dead else None,
                        priority=int(row.options.get("priority") or 0))

    def _owner(self) -> Optional[Tuple[int, str, int, float]]:
        found = self._fetch_optional("SELECT pid, host, workers, started_at FROM owner")
        return found[0] if found else None  # type: ignore[return-value]

    def _owner_running(self) -> bool:
        with self._lock:  # no read of ours in flight (see journalfile.owner_running)
            return journalfile.owner_running(self.path, self._probe)

    def _fetch_optional(self, sql: str, params: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
        # A table or column an older owner never added reads as empty.
        with self._lock:
            try:
                return self._current().execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such" in str(exc):
                    return []
                raise error(self.path, "cannot be read", exc) from None
            except sqlite3.Error as exc:
                raise error(self.path, "cannot be read", exc) from None

    def _current(self) -> sqlite3.Connection:
        # With the lock held: the connection, reopened if the file was taken
        # for unchanging and an owner has written to it since.
        if self._immutable and os.path.exists(self.path + "-wal"):
            self._conn.close()
            self._conn = read_only(self.path)
            self._immutable = not os.path.exists(self.path + "-wal")
        return self._conn

    def close(self) -> None:
        """Close the read-only connection; idempotent."""
        with self._lock:
            self._conn.close()
            probe, self._probe = self._probe, None
            if probe is not None:
                os.close(probe)

    def __enter__(self) -> JournalView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _failure(text: Optional[str], traceback: Optional[str]) -> TaskFailed:
    # "Type: message", as the owner wrote it, back as the error it names.
    kind, _, message = (text or "Exception: failed").partition(": ")
    return TaskFailed(kind, message, traceback or "")


def _priority(options: Any) -> int:
    try:
        value = json.loads(options).get("priority")
    except (ValueError, AttributeError):
        return 0
    return value if type(value) is int else 0


def _rate(finished: List[float], now: float) -> float:
    # Ended tasks per second over the last minute, or over what the recent
    # statuses cover if that is less.
    if not finished:
        return 0.0
    since = max(min(finished), now - _RATE_SPAN)
    span = now - since
    return sum(1 for f in finished if f >= since) / span if span > 0 else 0.0
