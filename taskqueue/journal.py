"""The durable journal: every unfinished task of a queue, in one SQLite file.

A :class:`Journal` keeps one row per task that has not ended well: pending,
scheduled (a delay or a retry, with its wall-clock due time), running, or
dead. A task that succeeds or is cancelled is deleted. After a crash the
rows left are the work to resume (:meth:`Journal.recover`).

One writer thread does every write and commits in groups: whatever was
queued while the previous transaction committed goes into the next one
(group commit, with SQLite's write-ahead log). Reads (recovery, the
command line's summaries) take the connection between two commits.
:meth:`record_submit` waits until the transaction holding its row has
committed, which is what lets ``submit`` return only once the task is on
disk. Every other record (a start, a completion, a retry, a dead letter)
is queued and not waited for: a worker must never wait on the disk, and
at-least-once delivery tolerates losing them in a crash (the task runs
again). Those ride along with the next submission's commit, or are
committed on their own after at most a couple of milliseconds. And when
several submitters were in the last group, the writer gives them a moment
(half a millisecond at most) to come back and share the next one.

One queue, in one process, owns a journal at a time (an ``flock`` held
while it is open, see :mod:`taskqueue.journalfile`); SQLite runs in its
normal locking mode, so a :class:`~taskqueue.journalfile.JournalView` can
read the file while its owner runs. A file is checked read-only before it
is opened for writing, so one that is refused is left untouched. Every
``sqlite3`` error is turned into :class:`JournalError` naming the file.

This is a mechanism: it knows nothing of the pool, the registry or task
functions; it stores names, encoded arguments and plain options.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import threading
import time
from time import monotonic
from typing import Any, Deque, Dict, FrozenSet, Iterator, List, Optional, Tuple, Union

from . import journalfile
from .errors import JournalError
from .journalfile import (APPLICATION_ID, COLUMNS, DEAD, DURABILITIES, MIGRATIONS, PENDING,
                          RUNNING, SCHEDULED, SCHEMA_VERSION, STATES, Migration, Row,
                          check_durability, decode_row, one_line)

__all__ = ["Journal", "Row", "DURABILITIES", "APPLICATION_ID", "SCHEMA_VERSION", "MIGRATIONS",
           "STATES", "PENDING", "SCHEDULED", "RUNNING", "DEAD", "check_durability"]

log = logging.getLogger(__name__)

# How long the owner's connection waits for a reader's brief lock (a
# JournalView in another process) before a write fails.
_BUSY_TIMEOUT = 5.0


class _Waiter:
    # One submitter waiting for the commit of its row. Each has a lock of
    # its own, held until the writer wakes it: the writer wakes exactly the
    # waiters of the group it committed, and none has to take the shared
    # lock again on the way out.
    __slots__ = ("_lock", "_woken", "error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._woken = False
        self.error: Optional[BaseException] = None

    def wait(self) -> Optional[BaseException]:
        self._lock.acquire()
        return self.error

    def wake(self, error: Optional[BaseException]) -> None:
        # Only the writer thread wakes a waiter; a second wake (a dying
        # writer waking its whole group) keeps the first outcome.
        if self._woken:
            return
        self._woken = True
        self.error = error
        self._lock.release()


_Op = Tuple[str, Tuple[Any, ...], Optional[_Waiter]]

# How long a record nobody waits for (a start, a completion, a retry) may
# wait for a submission to share its commit before it is committed alone.
# Short enough that few completions are lost to a crash (their tasks run
# again), long enough that a busy queue commits them with its submissions
# instead of waking the writer for each one.
_LINGER = 0.002
# How long the writer may hold a commit for submitters expected to join it.
_GATHER = 0.0005

_SQL = {
    "submit": "INSERT INTO tasks (id, name, args, kwargs, options, state, attempts, due, "
              "submitted_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
    "started": "UPDATE tasks SET state = 'running', attempts = ?, started_at = ? WHERE id = ?",
    "retry": "UPDATE tasks SET state = ?, attempts = ?, due = ? WHERE id = ?",
    "dead": "UPDATE tasks SET state = 'dead', attempts = ?, error = ?, traceback = ?, "
            "failed_at = ?, due = NULL WHERE id = ?",
    "delete": "DELETE FROM tasks WHERE id = ?",
    "delete_dead": "DELETE FROM tasks WHERE id = ? AND state = 'dead'",
    "status": "INSERT OR REPLACE INTO history (id, name, state, attempts, submitted_at, "
              "started_at, finished_at, error, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "owner": "INSERT OR REPLACE INTO owner (id, pid, host, workers, started_at) "
             "VALUES (1, ?, ?, ?, ?)",
    "count": "INSERT INTO counters (name, value) VALUES (?, ?) "
             "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    "forget": "DELETE FROM history WHERE seq <= (SELECT max(seq) FROM history) - ?",
}


class Journal:
    """A durable record of a queue's unfinished tasks in a SQLite file.

    Args:
        path: the journal file; created (mode 0600) if missing.
        durability: ``"normal"`` (the default) survives the process being
            killed: a commit is in the operating system's hands before
            ``record_submit`` returns. ``"full"`` also survives a power cut
            or an OS crash: every commit group is fsynced, which costs a
            disk flush per group.
        serializer: encodes and decodes task arguments: any object with
            ``dumps(obj) -> str | bytes`` and ``loads(data) -> obj``. The
            ``json`` module if None. Never pickle by default: whoever can
            write the file could otherwise run code in the process.

    Raises:
        ValueError: ``durability`` is not one of :data:`DURABILITIES`.
        TypeError: ``serializer`` lacks ``dumps`` or ``loads``.
        JournalLocked: another journal (in this or another process) has the file open.
        JournalError: the file is not a journal (an empty file is not one
            either), is corrupt, is of a newer schema version, or cannot be
            created or read. A refused file is left untouched.

    The ``record_*`` methods are safe from any thread. Nothing written by
    this class is ever interpreted as code: rows hold names, which the
    queue looks up among its registered task functions.
    """

    schema_version = SCHEMA_VERSION
    """The version this class writes; a subclass may raise it with :attr:`migrations`."""
    migrations: Dict[int, Migration] = MIGRATIONS
    """The upgrades this class runs on an older file (see :data:`MIGRATIONS`)."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, durability: str = "normal",
                 serializer: Any = None) -> None:
        check_durability(durability)
        if serializer is None:
            serializer = json
        if not (callable(getattr(serializer, "dumps", None))
                and callable(getattr(serializer, "loads", None))):
            raise TypeError(f"serializer must have dumps() and loads(), got {serializer!r}")
        self.path = os.fspath(path)
        """The journal file's path, as given."""
        self.durability = durability
        """``"normal"`` or ``"full"``."""
        self._serializer = serializer
        # Guards the queue of records and the flags; the writer waits on it.
        self._cond = threading.Condition(threading.Lock())
        self._conn_lock = threading.Lock()  # one user of the connection at a time
        self._close_lock = threading.Lock()
        self._ops: Deque[_Op] = collections.deque()
        self._waited = 0  # how many queued records have someone waiting for their commit
        self._expected = 1  # how many waited in the last group: the next may have as many
        self._closing = False
        self._closed = False
        self._broken: Optional[str] = None  # why the writer thread died, if it did
        self._file_closed = False
        self._commits = 0
        self.history = 10_000
        """How many ended tasks' statuses to keep (0: none); its queue sets it."""
        self._conn = self._open()
        self._writer = threading.Thread(target=self._write_loop, name=f"journal-{self.path}",
                                        daemon=True)
        try:
            self._writer.start()
        except BaseException:  # no thread can start (at interpreter exit): let the file go
            self._conn.close()
            journalfile.release(self._lock_fd)
            raise

    # -- opening --------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # Owner first (a second one is refused before anything is read),
        # then a read-only check (a refused file is never written to), and
        # only then the connection that writes.
        self._lock_fd = journalfile.claim(self.path)
        try:
            checker = journalfile.read_only(self.path)
            try:
                version = journalfile.check_file(self.path, checker, self.schema_version)
                journalfile.check_rows(self.path, checker)  # before anything is written
            finally:
                checker.close()
            return self._connect(version)
        except BaseException:
            journalfile.release(self._lock_fd)
            raise

    def _connect(self, version: int) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=_BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise journalfile.error(self.path, "cannot be opened", exc) from None
        try:
            if version < self.schema_version:
                self._migrate(conn, version)
            conn.execute("PRAGMA journal_mode = WAL")
            journalfile.add_observed_tables(conn)
            conn.execute(f"PRAGMA synchronous = {DURABILITIES[self.durability]}")
        except sqlite3.Error as exc:
            conn.close()
            raise journalfile.error(self.path, "cannot be opened", exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        # All steps in one transaction: a failed one leaves the file at its version.
        conn.execute("BEGIN IMMEDIATE")
        try:
            while version < self.schema_version:
                migrate = self.migrations.get(version)
                if migrate is None:
                    raise JournalError(f"{self.path} has journal schema version {version} and "
                                       "there is no migration from it")
                migrate(conn)
                version += 1
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _error(self, what: str, exc: BaseException) -> JournalError:
        return journalfile.error(self.path, what, exc)

    # -- encoding -------------------------------------------------------------

    def encode(self, args: Any, kwargs: Dict[str, Any]) -> Tuple[Any, Any, Tuple[Any, ...],
                                                              Dict[str, Any]]:
        """Encode a task's arguments, and decode them back as a restart would.

        A task must see the same arguments on every run, the first one
        included: it runs with what comes back here (with JSON, tuples are
        lists and dict keys are strings), not with the objects given.

        Returns:
            ``(args, kwargs, decoded_args, decoded_kwargs)``: the encoded
            forms to record, and what the task is to be called with.

        Raises:
            TypeError: the serializer refused them, or they would not come
                back as they were written (dict keys that collide once made
                strings, ``{1: "a", "1": "b"}``, would lose an entry).
        """
        dumps, loads = self._serializer.dumps, self._serializer.loads
        try:
            encoded = dumps(list(args)), dumps(dict(kwargs))
            decoded = loads(encoded[0]), loads(encoded[1])
            unchanged = (dumps(decoded[0]), dumps(decoded[1])) == encoded
        except Exception as exc:
            raise TypeError(f"the task's arguments cannot be written to the journal "
                            f"({type(exc).__name__}: {one_line(exc)}); journaled tasks take "
                            "arguments the journal's serializer accepts (JSON by default)") from None
        if not unchanged or not isinstance(decoded[0], list) or not isinstance(decoded[1], dict):
            raise TypeError("the task's arguments would not come back from the journal as they "
                            "were written (dict keys that are equal as strings, such as 1 and "
                            "'1', collide); pass arguments that survive the serializer's round "
                            "trip")
        return encoded[0], encoded[1], tuple(decoded[0]), decoded[1]

    # -- recording (any thread) ----------------------------------------------

    def record_submit(self, task_id: str, name: str, args: Any, kwargs: Any,
                      options: Dict[str, Any], due: Optional[float] = None, *,
                      submitted_at: Optional[float] = None) -> None:
        """Write a new task and wait until it is committed.

        Args:
            args, kwargs: as returned by :meth:`encode`.
            options: the task's own options, JSON values only.
            due: for a delayed task, when it is due (epoch seconds).
            submitted_at: when it was submitted (epoch seconds; None: now),
                as its status says, so that a restart reads back the same.

        Raises:
            JournalError: the write failed, or the journal is closed.
        """
        state = PENDING if due is None else SCHEDULED
        if submitted_at is None:
            submitted_at = time.time()
        row = (task_id, name, args, kwargs, json.dumps(options), state, due, submitted_at)
        self._wait_for_commit("submit", row, "the task", refuse_if_closing=True)

    def record_started(self, task_id: str, attempts: int, *, wait: bool = False) -> None:
        """Note that an attempt started (``running`` if the process stops now).

        Args:
            wait: return only once it is committed (else it is queued).

        Raises:
            JournalError: with ``wait``, it could not be written.
        """
        params = (attempts, time.time(), task_id)
        if not wait:
            self._put("started", params)
            return
        self._wait_for_commit("started", params, "the start")

    def record_done(self, task_id: str) -> None:
        """Forget a task that ended well, was cancelled, or was not accepted."""
        self._put("delete", (task_id,))

    def record_retry(self, task_id: str, attempts: int, due: float) -> None:
        """Note that a task waits for another attempt, due at ``due`` (epoch seconds)."""
        state = SCHEDULED if due > time.time() else PENDING
        self._put("retry", (state, attempts, due, task_id))

    def record_dead(self, task_id: str, attempts: int, error: str, traceback: str,
                    failed_at: float) -> None:
        """Keep a task that failed for good as a dead letter."""
        self._put("dead", (attempts, error, traceback, failed_at, task_id))

    def record_status(self, task_id: str, name: str, state: str, attempts: int,
                      submitted_at: Optional[float], started_at: Optional[float],
                      finished_at: float, error: Optional[str], priority: int) -> None:
        """Keep the status of a task that has ended (times in epoch seconds).

        The most recent :attr:`history` statuses are kept, older ones
        forgotten (all of them with 0); the totals of each end state are
        counted either way.
        """
        self._put("status", (task_id, name, state, attempts, submitted_at, started_at,
                                 finished_at, error, priority))

    def record_owner(self, pid: int, host: str, workers: int) -> None:
        """Note which process owns the file, and its workers (for a reader outside)."""
        self._put("owner", (pid, host, workers, time.time()))

    def status(self, task_id: str) -> Optional[Tuple[Any, ...]]:
        """The kept status of an ended task: ``(name, state, attempts, submitted_at,
        started_at, finished_at, error, priority)``, or None.

        Raises:
            JournalError: the file could not be read.
        """
        found = self._read("SELECT name, state, attempts, submitted_at, started_at, "
                           "finished_at, error, priority FROM history WHERE id = ?", (task_id,))
        return found[0] if found else None

    def forget_dead(self, task_id: str) -> None:
        """Delete a dead letter (it was requeued or purged)."""
        self._put("delete_dead", (task_id,))

    def _put(self, kind: str, params: Tuple[Any, ...]) -> None:
        # Not waited for: the writer commits it with the next record someone
        # waits for, or after _LINGER. So it is woken only by the first record
        # after it went idle (to start lingering), not by each one.
        with self._cond:
            if self._closing:
                return  # after close: the task will simply be resumed next time
            self._ops.append((kind, params, None))
            if len(self._ops) == 1:
                self._cond.notify()

    def _wait_for_commit(self, kind: str, params: Tuple[Any, ...], what: str, *,
                         refuse_if_closing: bool = False) -> None:
        # Queue a record, wake the writer, and wait until the transaction
        # holding it has ended; raise if it failed (``what`` names the
        # record). A new task is refused as soon as close() begins; a flush
        # only once the writer has committed its last group.
        waiter = _Waiter()
        with self._cond:
            if self._broken is not None:
                raise JournalError(f"{self.path} cannot be written: {self._broken}")
            if self._closed or (refuse_if_closing and self._closing):
                raise JournalError(f"{self.path} is closed")
            self._ops.append((kind, params, waiter))
            self._waited += 1
            self._cond.notify()
        error = waiter.wait()
        if error is not None:
            raise JournalError(f"{self.path}: could not record {what}: {error}")

    # -- reading --------------------------------------------------------------

    def recover(self) -> List[Row]:
        """Return every task in the journal, oldest submission first.

        Call it before recording anything new (the queue does, at start).

        A row whose arguments cannot be decoded comes back with empty ones
        and :attr:`Row.problem` saying why.

        Raises:
            JournalError: the file could not be read.
        """
        return list(self._rows(f"SELECT {COLUMNS} FROM tasks ORDER BY submitted_at, rowid"))

    def _rows(self, sql: str, params: Tuple[Any, ...] = ()) -> Iterator[Row]:
        for values in self._read(sql, params):
            # One damaged row must not keep the others from running: it comes
            # back marked (Row.problem), for the queue to make a dead letter.
            yield decode_row(values, self._serializer.loads)

    def _read(self, sql: str, params: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
        # Between two commits, and never after close(): close() takes the
        # same lock, so it cannot close the connection under a running query.
        self.flush()
        with self._conn_lock:
            if self._file_closed:
                raise JournalError(f"{self.path} is closed")
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error("cannot be read", exc) from None

    def counts(self) -> Dict[str, int]:
        """Return how many tasks are in each state (every state present, 0 if none)."""
        found = dict(self._read("SELECT state, count(*) FROM tasks GROUP BY state", ()))
        return {state: int(found.get(state, 0)) for state in STATES}

    def dead(self, name: Optional[str] = None) -> List[Row]:
        """Return the dead letters, oldest failure first; only ``name``'s if given."""
        sql = f"SELECT {COLUMNS} FROM tasks WHERE state = 'dead'"
        if name is None:
            return list(self._rows(sql + " ORDER BY failed_at, rowid"))
        return list(self._rows(sql + " AND name = ? ORDER BY failed_at, rowid", (name,)))

    def requeue_dead(self, name: Optional[str] = None) -> int:
        """Turn dead letters (only ``name``'s if given) back into pending tasks.

        Their attempts start again from 0. Returns how many.
        """
        sql = ("UPDATE tasks SET state = 'pending', attempts = 0, error = NULL, "
               "traceback = NULL, failed_at = NULL, due = NULL WHERE state = 'dead'")
        if name is None:
            return self._change(sql, ())
        return self._change(sql + " AND name = ?", (name,))

    def purge_dead(self) -> int:
        """Delete every dead letter. Returns how many."""
        return self._change("DELETE FROM tasks WHERE state = 'dead'", ())

    def _change(self, sql: str, params: Tuple[Any, ...]) -> int:
        self.flush()
        with self._conn_lock:
            if self._file_closed:
                raise JournalError(f"{self.path} is closed")
            try:
                changed = self._conn.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise self._error("cannot be written", exc) from None
        return int(changed)

    @property
    def commits(self) -> int:
        """How many write transactions the writer has committed (for tests and tuning)."""
        return self._commits

    # -- the writer thread ----------------------------------------------------

    def flush(self) -> None:
        """Wait until everything recorded so far is committed.

        Raises:
            JournalError: the journal is closed, or its writer died.
        """
        self._wait_for_commit("flush", (), "a flush")

    def close(self) -> None:
        """Commit everything recorded so far, stop the writer and close the file.

        Idempotent, and safe while other threads read: it waits for a read
        in progress, and reads after it raise :class:`JournalError`. Records
        made after this are dropped (their tasks are resumed the next time
        the journal is opened).
        """
        with self._close_lock:  # a second caller returns only once the file is closed
            if self._file_closed:
                return
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            if self._writer is not threading.current_thread():
                self._writer.join()
            with self._conn_lock:
                try:
                    self._conn.close()
                except sqlite3.Error as exc:  # pragma: no cover - nothing left to lose
                    log.error("closing journal %s: %s", self.path, exc)
                self._file_closed = True
            journalfile.release(self._lock_fd)

    def threads(self) -> FrozenSet[threading.Thread]:
        """The journal's writer thread (for "is this one of ours?")."""
        return frozenset((self._writer,))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    def _write_loop(self) -> None:
        batch: List[_Op] = []
        try:
            while True:
                batch = self._next_batch()
                if not batch:
                    return  # closed, and everything committed
                # Outside the queue's lock: submitters keep queuing the
                # next group while this one commits.
                with self._conn_lock:
                    errors = self._commit(batch)
                for index, (_, _, waiter) in enumerate(batch):
                    if waiter is not None:
                        waiter.wake(errors.get(index))
                batch = []
        except BaseException as exc:  # a bug, or memory: nobody may wait for ever
            self._writer_died(exc, batch)

    def _next_batch(self) -> List[_Op]:
        # Wait until there is a group worth committing, or the journal
        # closes; then take every queued record. An empty list: closed with
        # nothing left.
        cond = self._cond
        with cond:
            gather_until = None
            while not self._closing:
                if self._waited >= self._expected:
                    break  # everyone who waited last time is back: go
                if self._waited:
                    # Group commit: the submitters the last commit woke are
                    # likely on their way back with their next task; a moment's
                    # wait lets them share this transaction instead of each
                    # waiting for one of their own.
                    if gather_until is None:
                        gather_until = monotonic() + _GATHER
                    remaining = gather_until - monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
                elif not self._ops:
                    cond.wait()
                elif not cond.wait(_LINGER):
                    break  # lingered long enough: commit them alone
            batch = list(self._ops)
            self._ops.clear()
            self._expected = max(self._waited, 1)
            self._waited = 0
            if not batch:
                self._closed = True
            return batch

    def _writer_died(self, exc: BaseException, batch: List[_Op]) -> None:
        log.critical("journal %s: the writer thread died; nothing more can be recorded",
                     self.path, exc_info=exc)
        with self._cond:
            self._broken = f"its writer thread died ({type(exc).__name__}: {exc})"
            self._closing = self._closed = True
            batch += self._ops
            self._ops.clear()
        error = JournalError(f"{self.path} cannot be written: {self._broken}")
        for _, _, waiter in batch:
            if waiter is not None:
                waiter.wake(error)

    def _commit(self, batch: List[_Op]) -> Dict[int, BaseException]:
        # One transaction for the whole batch. Should it fail, each record
        # is tried in a transaction of its own, so that one bad record does
        # not take the others down; each waiter learns its own outcome.
        writes = [(i, op) for i, op in enumerate(batch) if op[0] != "flush"]
        if not writes:
            return {}
        try:
            self._transaction([op for _, op in writes])
            return {}
        except Exception as exc:
            log.error("journal %s: a group commit failed (%s); writing its records one by one",
                      self.path, exc)
        errors: Dict[int, BaseException] = {}
        for index, op in writes:
            try:
                self._transaction([op])
            except Exception as exc:
                log.error("journal %s: could not write a %s record: %s", self.path, op[0], exc)
                errors[index] = exc
        return errors

    def _transaction(self, ops: List[_Op]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for sql, rows in _grouped(ops):
                conn.executemany(sql, rows)
            if any(op[0] == "status" for op in ops):  # keep the most recent statuses only
                conn.execute(_SQL["forget"], (self.history,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._commits += 1

    def __repr__(self) -> str:
        return f"<Journal {self.path!r} durability={self.durability}{' closed' if self._closing else ''}>"


def _grouped(ops: List[_Op]) -> List[Tuple[str, List[Tuple[Any, ...]]]]:
    """The statements of one transaction, as few ``executemany`` calls as the order allows.

    Ids are never reused, and a task's records come in its own order:
    inserted, then updated, then deleted. So all inserts may go first and
    all deletes last, with the updates, in their order, between. An update
    of a task deleted in the same transaction is skipped: a short task's
    "started" and "done" often commit together. Ended tasks' statuses go in
    last, with the totals they add up to (and the retries) counted once per
    transaction.
    """
    deleted = {params[0] for kind, params, _ in ops if kind == "delete"}
    inserts: List[Tuple[Any, ...]] = []
    statuses: List[Tuple[Any, ...]] = []
    counts: Dict[str, int] = {}
    updates: List[Tuple[str, List[Tuple[Any, ...]]]] = []
    deletes: Dict[str, List[Tuple[Any, ...]]] = {"delete": [], "delete_dead": []}
    for kind, params, _ in ops:
        if kind == "submit":
            inserts.append(params)
        elif kind == "status":
            statuses.append(params)
            counts[params[2]] = counts.get(params[2], 0) + 1
        elif kind in deletes:
            deletes[kind].append(params)
        else:
            if kind == "retry":
                counts["retried"] = counts.get("retried", 0) + 1
            if params[-1] in deleted:  # an update: the id comes last
                continue
            if updates and updates[-1][0] == _SQL[kind]:
                updates[-1][1].append(params)
            else:
                updates.append((_SQL[kind], [params]))
    grouped = [(_SQL["submit"], inserts)] if inserts else []
    grouped += updates
    grouped += [(_SQL[kind], rows) for kind, rows in deletes.items() if rows]
    if statuses:
        grouped.append((_SQL["status"], statuses))
    if counts:
        grouped.append((_SQL["count"], sorted(counts.items())))
    return grouped
