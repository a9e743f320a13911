"""Workloads that drive any ``concurrent.futures.Executor`` once and time it.

taskqueue's ``TaskQueue`` and the stdlib's ``ThreadPoolExecutor`` share the
Executor API, so both sides of a comparison run the very same driver code:
only the factory differs. Every driver builds its pool, warms it (all worker
threads started and idle), times only the part the metric is about, and
shuts the pool down outside the clock. Each returns its figures as a dict.

:func:`concurrent_throughput` is the driver of the durable-journal
scenario: several producer threads submit at once (a journal's group
commit only pays off for concurrent submitters), to taskqueue, the raw
SQLite loop and the peers alike; :func:`journaled_throughput` runs it on a
``TaskQueue`` with or without a journal.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
import tracemalloc
from collections import deque
from concurrent.futures import Executor
from contextlib import contextmanager
from time import perf_counter
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence

from taskqueue import JournalView, TaskQueue
from taskqueue.brokers import Binding, MemoryBroker
from taskqueue.workqueue import WorkQueue  # the priority scenario measures its ordering alone

from .harness import percentile

__all__ = [
    "noop",
    "sleep_1ms",
    "FailOnce",
    "running",
    "throughput",
    "submit_cost",
    "latency",
    "pending_memory",
    "streamed",
    "FifoWorkQueue",
    "FifoTaskQueue",
    "queue_cycle",
    "Tally",
    "shares",
    "concurrent_throughput",
    "journaled_throughput",
]

ExecutorFactory = Callable[[], Executor]

# Generous: only a broken pool takes this long to start four threads.
_WARM_TIMEOUT = 60.0


def noop() -> None:
    """Do nothing: whatever a run of these costs is the queue's own cost."""


def sleep_1ms() -> None:
    """Block for 1 ms without using the CPU, like a short call to a remote service."""
    time.sleep(0.001)


class FailOnce:
    """A task that raises on its first call and returns on its second.

    Args:
        fail: False makes a task that succeeds at once, for the all-succeed run,
            so that both runs call the same kind of object.
    """

    __slots__ = ("failed",)

    def __init__(self, fail: bool = True) -> None:
        self.failed = not fail

    def __call__(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("failing once, as planned")


@contextmanager
def running(make: ExecutorFactory, workers: int) -> Iterator[Executor]:
    """Yield a pool from ``make`` with all ``workers`` threads started; shut it down after.

    ``ThreadPoolExecutor`` starts a thread per submit until it has
    ``max_workers``: tasks that all wait on one barrier force every thread
    into existence before the clock starts, for it and for taskqueue alike.
    """
    executor = make()
    try:
        barrier = threading.Barrier(workers + 1)
        started = [executor.submit(barrier.wait, _WARM_TIMEOUT) for _ in range(workers)]
        barrier.wait(_WARM_TIMEOUT)
        for future in started:
            future.result()
        yield executor
    finally:
        executor.shutdown(wait=True)


def throughput(make: ExecutorFactory, workers: int, calls: Sequence[Callable[[], object]]
               ) -> Dict[str, float]:
    """Submit every call, then await every result; return tasks per second.

    The producer keeps one handle per task, as a caller that wants every
    result does; a bounded pool makes it wait for room as it goes.
    """
    with running(make, workers) as executor:
        submit = executor.submit
        start = perf_counter()
        handles = [submit(call) for call in calls]
        for handle in handles:
            handle.result()
        elapsed = perf_counter() - start
        del handles
    return {"throughput": len(calls) / elapsed, "seconds": elapsed}


def submit_cost(make: ExecutorFactory, workers: int, tasks: int, burst: int
                ) -> Dict[str, float]:
    """Return the microseconds a producer spends in each ``submit()`` call.

    Tasks go in bursts of ``burst`` (fewer than the queue holds), and the
    producer waits for each burst to finish before the next: the workers
    keep up, so submit never waits for room, and only the call is timed.
    """
    with running(make, workers) as executor:
        submit = executor.submit
        spent = 0.0
        for _ in range(max(1, tasks // burst)):
            start = perf_counter()
            for _ in range(burst):
                last = submit(noop)
            spent += perf_counter() - start
            last.result()
    return {"submit_us": spent / (max(1, tasks // burst) * burst) * 1e6}


def latency(make: ExecutorFactory, workers: int, light_tasks: int, saturated_tasks: int
            ) -> Dict[str, float]:
    """Return submit -> start percentiles in microseconds, light and saturated.

    Each task returns the moment it started (it *is* ``perf_counter``).
    Light load: one task in flight at a time. Saturation: every task
    submitted as fast as the producer can, each stamped just before its
    submit call, so the time spent waiting for room counts too.
    """
    with running(make, workers) as executor:
        light = _light_latencies(executor, light_tasks)
        saturated = _saturated_latencies(executor, saturated_tasks)
    return {
        "light_p50": percentile(light, 0.50) * 1e6,
        "light_p99": percentile(light, 0.99) * 1e6,
        "saturated_p50": percentile(saturated, 0.50) * 1e6,
        "saturated_p99": percentile(saturated, 0.99) * 1e6,
    }


def _light_latencies(executor: Executor, tasks: int) -> List[float]:
    waits = []
    for _ in range(tasks):
        submitted = perf_counter()
        started = executor.submit(perf_counter).result()
        waits.append(started - submitted)
    return waits


def _saturated_latencies(executor: Executor, tasks: int) -> List[float]:
    submitted = [0.0] * tasks
    handles: List[Optional[object]] = [None] * tasks
    submit = executor.submit
    for index in range(tasks):
        submitted[index] = perf_counter()
        handles[index] = submit(perf_counter)
    return [h.result() - s for h, s in zip(handles, submitted)]  # type: ignore[union-attr]


def pending_memory(make: ExecutorFactory, workers: int, tasks: int) -> Dict[str, float]:
    """Return the bytes each pending task holds, measured with tracemalloc.

    Every worker is held on an Event first, so that all ``tasks`` stay
    pending; the handle list is allocated before tracing starts, so it is
    not counted (it would be the same 8 bytes a task on either side).
    """
    release = threading.Event()
    held = threading.Semaphore(0)

    def hold() -> None:
        held.release()
        release.wait()

    with running(make, workers) as executor:
        for _ in range(workers):
            executor.submit(hold)
        for _ in range(workers):
            held.acquire()
        handles: List[Optional[object]] = [None] * tasks
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for index in range(tasks):
                handles[index] = executor.submit(noop)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            release.set()
        for handle in handles:
            handle.result()  # type: ignore[union-attr]
    return {"bytes_per_task": (after - before) / tasks}


def streamed(make: ExecutorFactory, workers: int, tasks: int, window: int, loops: int = 1
             ) -> Dict[str, float]:
    """Stream ``tasks`` through a fresh pool, ``loops`` times; return microseconds per task.

    The producer awaits each result ``window`` tasks after submitting it, so
    it never holds more than ``window`` handles and memory stays flat
    whatever ``tasks`` is. A small ``tasks`` is run ``loops`` times, each in
    a pool of its own, so that its figure spans as much time as a large
    one's (as pyperf calibrates loops) instead of a few noisy milliseconds.
    """
    elapsed = 0.0
    for _ in range(loops):
        with running(make, workers) as executor:
            elapsed += _stream_once(executor, tasks, window)
    return {"us_per_task": elapsed / (tasks * loops) * 1e6}


def _stream_once(executor: Executor, tasks: int, window: int) -> float:
    submit = executor.submit
    pending: Deque[object] = deque()
    start = perf_counter()
    for _ in range(tasks):
        pending.append(submit(noop))
        if len(pending) > window:
            pending.popleft().result()  # type: ignore[attr-defined]
    while pending:
        pending.popleft().result()  # type: ignore[attr-defined]
    return perf_counter() - start


class _Item:
    """A stand-in for a task handle: what the work queue reads off an item."""

    __slots__ = ()
    _priority = 0


class FifoWorkQueue(WorkQueue):
    """The work queue with its ordering replaced by one plain FIFO deque.

    Only the four ordering hooks change (as CPython's ``PriorityQueue``
    changes them), so admission, closing and counting are the same code:
    the difference measured is the cost of the priority levels alone.
    """

    def _init(self, maxsize: int) -> None:
        self._fifo: Deque[Any] = deque()

    def _qsize(self) -> int:
        return len(self._fifo)

    def _put(self, item: Any) -> None:
        self._fifo.append(item)

    def _get(self) -> Any:
        return self._fifo.popleft()


class FifoBroker(MemoryBroker):
    """The in-memory broker with :class:`FifoWorkQueue` as its ready queue."""

    def _make_work_queue(self, binding: Binding) -> WorkQueue:
        return FifoWorkQueue(binding.maxsize, binding.name)


class FifoTaskQueue(TaskQueue):
    """A TaskQueue on :class:`FifoBroker`: priorities taken out.

    Only the ready queue's four ordering hooks differ (through the broker's
    one hook for its work queue), so every other part of the pool is the
    same code as taskqueue's own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, broker=FifoBroker(), **kwargs)


def queue_cycle(make: Callable[[], WorkQueue], items: int) -> Dict[str, float]:
    """Admit, take and mark done ``items`` items through one work queue; return items per second.

    The queue is kept about half full (as a busy pool's is), every item at
    priority 0.
    """
    work = make()
    item = _Item()
    admit, get, done = work.admit, work.get, work.task_done
    for _ in range(512):
        admit(item)
    start = perf_counter()
    for _ in range(items):
        admit(item)
        get()
        done()
    elapsed = perf_counter() - start
    return {"throughput": items / elapsed, "seconds": elapsed}


# -- several producers at once: the durable-journal scenario ---------------------------


class Tally:
    """Counts finished tasks from any thread, for one caller that waits for a number of them.

    Args:
        what: how the count reads in the timeout message ("tasks finished").
    """

    def __init__(self, what: str = "tasks finished") -> None:
        self._what = what
        self._cond = threading.Condition()
        self._count = 0
        self._awaited = 0

    def add(self) -> None:
        """Count one finished task; any thread."""
        with self._cond:
            self._count += 1
            if self._count == self._awaited:
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        """Wait until ``count`` tasks in all have been counted (one caller at a time).

        Raises:
            TimeoutError: they had not after ``timeout`` seconds.
        """
        with self._cond:
            self._awaited = count
            if not self._cond.wait_for(lambda: self._count >= count, timeout):
                raise TimeoutError(f"{self._count} of {count} {self._what} in {timeout} s")


def shares(tasks: int, producers: int) -> List[int]:
    """Return how many of ``tasks`` each of ``producers`` submits: as even as can be.

    Raises:
        ValueError: ``producers`` < 1 or ``tasks`` < 0.
    """
    if producers < 1:
        raise ValueError(f"producers must be >= 1, got {producers}")
    if tasks < 0:
        raise ValueError(f"tasks must be >= 0, got {tasks}")
    each, extra = divmod(tasks, producers)
    return [each + (1 if index < extra else 0) for index in range(producers)]


def concurrent_throughput(producers: int, tasks: int, submit: Callable[[], Any],
                          await_all: Callable[[List[Any]], None]) -> Dict[str, float]:
    """Call ``submit`` ``tasks`` times from ``producers`` threads at once; return tasks per second.

    The producer threads are started first and released together at a
    barrier, when the clock starts; it stops once ``await_all`` has
    returned, given everything the ``submit`` calls returned (handles,
    results to wait on, or Nones for a contender that counts its own).

    Args:
        producers: how many threads submit.
        tasks: how many ``submit`` calls in all, shared out by :func:`shares`.
        submit: queues one task; called from the producer threads.
        await_all: waits until every task submitted has run; called from
            this thread once every producer is done.

    Raises:
        Whatever a producer's ``submit`` raised (the first such error), once
        every producer has stopped.
    """
    counts = shares(tasks, producers)
    returned: List[List[Any]] = [[] for _ in counts]
    errors: List[BaseException] = []
    go = threading.Barrier(producers + 1)

    def produce(index: int) -> None:
        try:
            go.wait(_WARM_TIMEOUT)
            returned[index] = [submit() for _ in range(counts[index])]
        except BaseException as exc:  # handed to the caller below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(index,), name=f"producer-{index}",
                                daemon=True) for index in range(producers)]
    for thread in threads:
        thread.start()
    go.wait(_WARM_TIMEOUT)
    start = perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    await_all([item for share in returned for item in share])
    elapsed = perf_counter() - start
    return {"throughput": tasks / elapsed, "seconds": elapsed}


def journaled_throughput(workers: int, producers: int, tasks: int, *,
                         durability: Optional[str] = "normal",
                         fn: Callable[[], object] = noop,
                         reader_every: Optional[float] = None) -> Dict[str, float]:
    """Run ``tasks`` calls of ``fn`` through a ``TaskQueue`` with a fresh journal.

    ``fn`` is registered with ``@queue.task`` (what a journal requires) and
    every handle is awaited. The journal file lives in a temporary
    directory made for this run and removed after it, so no round inherits
    another's file.

    Args:
        workers, producers, tasks: as :func:`concurrent_throughput` takes them.
        durability: the journal's ``durability=``; None runs the same queue
            and task function without a journal (in memory), for comparison.
        fn: the task, a function of no arguments (a no-op by default).
        reader_every: if set, a thread reads the file live all along, as
            ``dashboard --journal`` does (a :class:`~taskqueue.JournalView`'s
            stats, overview and dead letters), every that many seconds.
    """
    with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as directory:
        options: Dict[str, Any] = {}
        if durability is not None:
            options = {"journal": os.path.join(directory, "journal.db"), "durability": durability}
        queue = TaskQueue(workers=workers, **options)
        reader = None
        try:
            task = queue.task(fn)
            queue.start()
            for handle in [task.submit() for _ in range(workers)]:
                handle.result()  # warm: the file, its writer and every worker have run
            if reader_every is not None:
                reader = _LiveReader(options["journal"], reader_every)
            return concurrent_throughput(producers, tasks, task.submit, _await_handles)
        finally:
            if reader is not None:
                reader.stop()
            # Outside the clock; closes the journal before its directory goes.
            queue.shutdown(wait=True)


class _LiveReader:
    """A thread reading a journal while its owner runs, as a dashboard of it does."""

    def __init__(self, path: str, every: float) -> None:
        self._view = JournalView(path)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stopped.wait(every):
            self._view.stats()
            self._view.overview(100)
            self._view.dead_letters()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._view.close()


def _await_handles(handles: List[Any]) -> None:
    for handle in handles:
        handle.result()
