"""The stdlib baselines taskqueue is measured against.

``ThreadPoolExecutor`` is what most users would otherwise reach for; the
bare loop (a ``queue.Queue`` and threads doing get / call / task_done, no
futures, no results) is the practical limit of a thread pool in CPython:
nothing that hands out a result per task can be cheaper.

The minimal pool (:class:`MinimalPool`) is the cheapest pool that does hand
out a result per task: taskqueue's own handle (a real ``Future`` whose
Condition is built only when someone waits) on a plain ``queue.Queue``,
and threads doing get / run / task_done -- no stats, no retries, no
listeners, no priorities, no shutdown beyond stop-and-join. It measures
the floor of the design, to tell what taskqueue's features cost from what
a handle per task costs.

The group-commit loop (:class:`GroupCommitLoop`) is the same limit for a
durable queue: SQLite in WAL mode, one writer thread inserting whatever
producers handed it in one transaction, threads running the committed rows
and the writer deleting the finished ones in its next transaction. It
keeps a row per unfinished task as a journal does, and nothing else.
"""

from __future__ import annotations

import itertools
import os
import queue
import sqlite3
import tempfile
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from taskqueue.message import Message
from taskqueue.retry import Backoff, RetryPolicy
from taskqueue.task import TaskHandle, callable_name

from .workloads import ExecutorFactory, Tally, concurrent_throughput, noop

__all__ = ["thread_pool", "BareLoop", "bare_loop_throughput", "MinimalPool", "ideal_throughput",
           "GroupCommitLoop", "group_commit_throughput"]

# The longest the group-commit loop's caller waits for its rows to run.
_RUN_TIMEOUT = 300.0


def thread_pool(workers: int) -> ExecutorFactory:
    """Return a factory of ``ThreadPoolExecutor(workers)``, the stdlib's pool."""
    return lambda: ThreadPoolExecutor(workers)


class BareLoop:
    """A bounded ``queue.Queue`` drained by threads that get, call and task_done.

    Args:
        workers: how many threads.
        maxsize: the queue's bound (1024, as taskqueue's default).
    """

    _STOP = object()

    def __init__(self, workers: int, maxsize: int = 1024) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)  # type: ignore[type-arg]
        self._threads: List[threading.Thread] = [
            threading.Thread(target=self._work, name=f"bare-loop-{i}", daemon=True)
            for i in range(workers)
        ]

    def __enter__(self) -> BareLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _ in self._threads:
            self.queue.put(self._STOP)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        get, done, stop = self.queue.get, self.queue.task_done, self._STOP
        while True:
            fn = get()
            if fn is stop:
                done()
                return
            fn()
            done()


def bare_loop_throughput(workers: int, tasks: int, fn: Optional[Callable[[], object]] = None,
                         maxsize: int = 1024) -> Dict[str, float]:
    """Put ``tasks`` calls through a :class:`BareLoop` and wait for all; return tasks/s."""
    call = fn or noop
    with BareLoop(workers, maxsize) as loop:
        put = loop.queue.put
        start = perf_counter()
        for _ in range(tasks):
            put(call)
        loop.queue.join()
        elapsed = perf_counter() - start
    return {"throughput": tasks / elapsed, "seconds": elapsed}


class MinimalPool(Executor):
    """taskqueue's handle and message on a plain bounded ``queue.Queue``, and nothing else.

    Args:
        workers: how many threads.
        maxsize: the queue's bound (1024, as taskqueue's default).
    """

    _STOP: Any = object()
    _POLICY = RetryPolicy(0, Backoff.none(), (Exception,))

    def __init__(self, workers: int, maxsize: int = 1024) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)  # type: ignore[type-arg]
        self._threads = [threading.Thread(target=self._work, name=f"minimal-pool-{i}",
                                          daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Queue ``fn(*args, **kwargs)``; return its handle."""
        handle = TaskHandle(callable_name(fn))
        handle._message = Message(fn, args, kwargs or None, handle._name, self._POLICY, handle)
        self._queue.put(handle._message)
        return handle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop every thread once the queued tasks have run (always waits)."""
        for _ in self._threads:
            self._queue.put(self._STOP)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        get, done, stop = self._queue.get, self._queue.task_done, self._STOP
        while True:
            message = get()
            if message is stop:
                return
            handle = message.handle
            if handle._begin(1):
                try:
                    result = message.fn(*message.args, **(message.kwargs or {}))
                except BaseException as exc:
                    handle._fail(exc)
                else:
                    handle._succeed(result)
            message = handle = result = None
            done()


def ideal_throughput(workers: int, seconds_per_task: float) -> Dict[str, float]:
    """Return the throughput of ``workers`` that each finish a task every ``seconds_per_task``."""
    return {"throughput": workers / seconds_per_task}


_Row = Tuple[int, Callable[[], object]]


class GroupCommitLoop:
    """Rows in a SQLite file (WAL), one writer thread committing in groups, threads running them.

    :meth:`put` returns once the task's row is committed, as a journaled
    ``submit`` does; rows put while a transaction commits go into the next
    one, with a single ``executemany``. A row is handed to the worker
    threads only once committed; they call it and hand its id back, and
    the writer deletes the finished rows in its next transaction. No
    futures, no results, no "started" records, no retries: the practical
    limit of a durable queue in CPython's ``sqlite3``.

    Args:
        path: the database file; its table is created if missing.
        workers: threads calling the rows' tasks.
        synchronous: SQLite's ``PRAGMA synchronous``; "NORMAL" is the
            durability of taskqueue's ``durability="normal"`` in WAL mode.

    Use it as a context manager: ``__enter__`` starts the threads,
    ``__exit__`` stops them, commits what is left and closes the file.
    """

    _STOP: Any = object()

    def __init__(self, path: str, workers: int, *, synchronous: str = "NORMAL") -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute(f"PRAGMA synchronous = {synchronous}")
        self._conn.execute("CREATE TABLE IF NOT EXISTS tasks "
                           "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, args TEXT NOT NULL)")
        lock = threading.Lock()
        self._wake = threading.Condition(lock)  # the writer waits here for rows and ids
        # Producers wait here for their commit: apart from the writer's, so
        # that they do not wake it.
        self._committed_cond = threading.Condition(lock)
        self._ran = Tally("rows ran")  # the caller of wait_run waits on it
        self._ids = itertools.count(1)
        self._inserts: List[_Row] = []
        self._finished: List[Tuple[int]] = []
        self._committed = 0  # rows are committed in id order: every id up to this one is
        self._closing = False
        self._work: queue.SimpleQueue = queue.SimpleQueue()  # type: ignore[type-arg]
        self._writer = threading.Thread(target=self._write, name="group-commit-writer",
                                        daemon=True)
        self._threads = [threading.Thread(target=self._run, name=f"group-commit-{i}",
                                          daemon=True) for i in range(workers)]

    def __enter__(self) -> GroupCommitLoop:
        self._writer.start()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _ in self._threads:
            self._work.put(self._STOP)
        for thread in self._threads:
            thread.join()
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._writer.join()
        self._conn.close()

    def put(self, fn: Callable[[], object]) -> None:
        """Write a row for ``fn``; return once it is committed. Safe from any thread."""
        with self._wake:
            row_id = next(self._ids)  # taken under the lock: ids are queued in order
            self._inserts.append((row_id, fn))
            self._wake.notify()
            while self._committed < row_id:
                self._committed_cond.wait()

    def wait_run(self, count: int, timeout: float = _RUN_TIMEOUT) -> None:
        """Wait until ``count`` rows in all have been run (their deletion may still be queued).

        Raises:
            TimeoutError: they had not after ``timeout`` seconds.
        """
        self._ran.wait_for(count, timeout)

    def _write(self) -> None:
        while True:
            with self._wake:
                while not (self._inserts or self._finished or self._closing):
                    self._wake.wait()
                if self._closing and not (self._inserts or self._finished):
                    return
                inserts, self._inserts = self._inserts, []
                finished, self._finished = self._finished, []
            # Outside the lock: producers and workers queue the next group
            # while this one commits.
            self._commit(inserts, finished)
            if inserts:
                with self._wake:
                    self._committed = inserts[-1][0]
                    self._committed_cond.notify_all()
            for row in inserts:
                self._work.put(row)

    def _commit(self, inserts: List[_Row], finished: List[Tuple[int]]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO tasks (id, name, args) VALUES (?, ?, '[]')",
                         [(row_id, getattr(fn, "__qualname__", "task")) for row_id, fn in inserts])
        conn.executemany("DELETE FROM tasks WHERE id = ?", finished)
        conn.execute("COMMIT")

    def _run(self) -> None:
        get, stop = self._work.get, self._STOP
        while True:
            row = get()
            if row is stop:
                return
            row_id, fn = row
            fn()
            with self._wake:
                self._finished.append((row_id,))
                self._wake.notify()
            self._ran.add()


def group_commit_throughput(workers: int, producers: int, tasks: int,
                            fn: Optional[Callable[[], object]] = None,
                            synchronous: str = "NORMAL") -> Dict[str, float]:
    """Put ``tasks`` calls through a fresh :class:`GroupCommitLoop` from ``producers`` threads.

    Returns tasks per second, from the producers' start until every row has run.
    """
    call = fn or noop
    with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as directory:
        with GroupCommitLoop(os.path.join(directory, "loop.db"), workers,
                             synchronous=synchronous) as loop:
            for _ in range(workers):
                loop.put(call)  # warm: the file and the writer have committed once
            loop.wait_run(workers)
            return concurrent_throughput(producers, tasks, lambda: loop.put(call),
                                         lambda _: loop.wait_run(workers + tasks))
