"""Peer libraries run in-process: Huey and Dramatiq in memory, and durable queues on SQLite.

Each adapter first says whether its peer can run here at all
(:meth:`Peer.unavailable`): not installed, or installed but unable to run
in this process (the reason is given, taken from what failed). Only a peer
that ran gets a number; the table never shows an invented one.

Every peer is set up to be as fast as it can be in-process, so that a
win against it means something: Huey's consumer polls its queue every
1 ms (its default of 100 ms would only idle its workers), Dramatiq's
results are collected after ``broker.join`` so that its result polling
never sleeps, and persist-queue's consumers wait at most 10 ms for a put
they did not hear of.

:data:`PEERS` run the in-memory no-op scenario; :data:`JOURNAL_PEERS`
(persist-queue's ``SQLiteAckQueue`` and Huey's ``SqliteHuey``) the
durable-journal one, each on a fresh file in a temporary directory per
run, with their own default durability.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from importlib import metadata
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional

from .workloads import Tally, concurrent_throughput, noop

__all__ = ["Peer", "Huey", "Dramatiq", "PEERS", "PersistQueue", "SqliteHuey", "JOURNAL_PEERS",
           "version_of"]

INSTALL_HINT = "not installed (pip install '.[bench]')"
# A peer that cannot finish a handful of no-op tasks in this long is not
# going to run here; the probe gives up instead of hanging the suite.
_PROBE_TIMEOUT = 30.0
_PROBE_TASKS = 20
# The longest any one wait on a peer may take in a measured run.
_WAIT_TIMEOUT = 300.0


def version_of(distribution: str) -> Optional[str]:
    """Return the installed version of ``distribution``, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class Peer:
    """One peer library: how to tell whether it runs here, and how to run it.

    Subclasses set :attr:`name`, :attr:`distribution`, :attr:`setup` and
    implement :meth:`throughput`.
    """

    name = ""
    """The contender's name in the table."""
    distribution = ""
    """The PyPI distribution that provides it."""
    setup = ""
    """How it is configured and how its results are awaited (shown as a note)."""
    runs = "in-process"
    """Where it runs, as the reason it could not run says ("cannot run in-process: ...")."""

    def unavailable(self) -> Optional[str]:
        """Return why this peer cannot be measured here, or None if it can.

        Imports it and runs a few no-op tasks, in a thread and with a
        time limit, so that a peer that hangs in this process is reported
        rather than hanging the suite.
        """
        if version_of(self.distribution) is None:
            return INSTALL_HINT
        outcome: List[BaseException] = []

        def probe() -> None:
            try:
                self.throughput(workers=2, tasks=_PROBE_TASKS)
            except BaseException as exc:  # whatever fails, it is the reason given
                outcome.append(exc)

        thread = threading.Thread(target=probe, name=f"probe-{self.distribution}", daemon=True)
        thread.start()
        thread.join(_PROBE_TIMEOUT)
        if thread.is_alive():
            return (f"cannot run {self.runs}: {_PROBE_TASKS} tasks did not finish in "
                    f"{_PROBE_TIMEOUT:.0f} s")
        if outcome:
            exc = outcome[0]
            return f"cannot run {self.runs}: {type(exc).__name__}: {exc}"
        return None

    def throughput(self, workers: int, tasks: int) -> Dict[str, float]:
        """Run ``tasks`` no-op tasks on ``workers`` threads; return tasks per second."""
        raise NotImplementedError


class Huey(Peer):
    """Huey with ``MemoryHuey`` and its consumer's thread workers, in this process."""

    name = "Huey"
    distribution = "huey"
    setup = ("MemoryHuey(store_none=True), Consumer(worker_type='thread'), polling every 1 ms; "
             "results awaited with result.get(blocking=True)")

    def throughput(self, workers: int, tasks: int) -> Dict[str, float]:
        from huey import MemoryHuey

        huey = MemoryHuey("taskqueue-benchmark", results=True, store_none=True)
        task = huey.task()(noop)
        consumer = _huey_consumer(huey, workers)
        consumer.start()
        try:
            _huey_round(task, workers)  # warm: every worker has polled once
            start = perf_counter()
            _huey_round(task, tasks)
            elapsed = perf_counter() - start
        finally:
            consumer.stop(graceful=True)
        return {"throughput": tasks / elapsed, "seconds": elapsed}


def _huey_round(task: Callable[[], Any], tasks: int) -> None:
    _huey_await([task() for _ in range(tasks)])


def _huey_await(results: List[Any]) -> None:
    for result in results:
        result.get(blocking=True, timeout=_WAIT_TIMEOUT)


def _huey_consumer(huey: Any, workers: int) -> Any:
    from huey.consumer import Consumer

    class InProcessConsumer(Consumer):  # type: ignore[misc,valid-type]
        """A consumer that leaves the process's signal handlers alone."""

        # Huey's consumer expects to own its process: start() installs
        # handlers for SIGINT, SIGTERM and SIGHUP (and fails outside the
        # main thread). A guest in the benchmark's process must not take
        # Ctrl-C away from it, so this one hook does nothing.
        def _set_signal_handlers(self) -> None:
            pass

    return InProcessConsumer(huey, workers=workers, worker_type="thread", periodic=False,
                             initial_delay=0.001, backoff=1.15, max_delay=0.01,
                             check_worker_health=False)


class Dramatiq(Peer):
    """Dramatiq with a ``StubBroker`` and a ``Worker`` in this process."""

    name = "Dramatiq"
    distribution = "dramatiq"
    setup = ("StubBroker + Results(StubBackend), Worker(worker_threads=4); "
             "awaited with broker.join(queue), then every message's get_result()")

    def throughput(self, workers: int, tasks: int) -> Dict[str, float]:
        import dramatiq
        from dramatiq.brokers.stub import StubBroker
        from dramatiq.results import Results
        from dramatiq.results.backends import StubBackend

        backend = StubBackend()
        # StubBackend keeps results in a dict shared by the class; a dict of
        # its own keeps one run's results from piling up under the next.
        backend.results = {}
        broker = StubBroker()
        broker.add_middleware(Results(backend=backend))
        actor = dramatiq.actor(noop, broker=broker, store_results=True,
                               actor_name="taskqueue_benchmark_noop")
        worker = dramatiq.Worker(broker, worker_threads=workers, worker_timeout=100)
        worker.start()
        try:
            _dramatiq_round(broker, backend, actor, workers)  # warm
            start = perf_counter()
            _dramatiq_round(broker, backend, actor, tasks)
            elapsed = perf_counter() - start
        finally:
            worker.stop()
            broker.close()
        return {"throughput": tasks / elapsed, "seconds": elapsed}


def _dramatiq_round(broker: Any, backend: Any, actor: Any, tasks: int) -> None:
    messages = [actor.send() for _ in range(tasks)]
    broker.join(actor.queue_name, timeout=int(_WAIT_TIMEOUT * 1000))
    for message in messages:
        backend.get_result(message, block=True, timeout=int(_WAIT_TIMEOUT * 1000))


PEERS: List[Peer] = [Huey(), Dramatiq()]
"""The peers scenario 9 runs against, in table order."""


# -- durable peers: the journal scenario -------------------------------------------------

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def sqlite_default_synchronous() -> str:
    """Return this sqlite3's default ``PRAGMA synchronous`` ("FULL" unless built otherwise).

    Both durable peers leave it as it is, and it decides whether each of
    their commits waits for an fsync: their notes say what it is here.
    """
    conn = sqlite3.connect(":memory:")
    try:
        value = conn.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        conn.close()
    return _SYNCHRONOUS.get(value, str(value))


_DEFAULT_SYNCHRONOUS = sqlite_default_synchronous()
# A persist-queue item: run the no-op, or stop the consumer that gets it.
_RUN, _STOP = "noop", "stop"


class PersistQueue(Peer):
    """persist-queue's ``SQLiteAckQueue``: producers put, consumer threads get, call and ack."""

    name = "persist-queue"
    distribution = "persist-queue"
    setup = ("SQLiteAckQueue(dir, multithreading=True) with its defaults: WAL, a commit per "
             f"put, get and ack, SQLite's default synchronous={_DEFAULT_SYNCHRONOUS}; "
             "4 consumer threads doing get(raw=True, timeout=0.01) -> call -> ack; "
             "done when every task is acked")

    def throughput(self, workers: int, tasks: int, producers: int = 1) -> Dict[str, float]:
        """Put ``tasks`` items from ``producers`` threads; return tasks acked per second."""
        import persistqueue

        with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as directory:
            queue = persistqueue.SQLiteAckQueue(directory, multithreading=True)
            acked = Tally()
            consumers = [threading.Thread(target=_ack_consumer, args=(queue, acked),
                                          name=f"persist-queue-{i}", daemon=True)
                         for i in range(workers)]
            for thread in consumers:
                thread.start()
            try:
                for _ in range(workers):
                    queue.put(_RUN)
                acked.wait_for(workers, _WAIT_TIMEOUT)  # warm: the file is made, the consumers up
                return concurrent_throughput(producers, tasks, lambda: queue.put(_RUN),
                                             lambda _: acked.wait_for(workers + tasks,
                                                                      _WAIT_TIMEOUT))
            finally:
                for _ in consumers:
                    queue.put(_STOP)
                for thread in consumers:
                    thread.join(_WAIT_TIMEOUT)
                queue.close()  # before its directory goes


def _ack_consumer(queue: Any, acked: Tally) -> None:
    from persistqueue.exceptions import Empty

    while True:
        try:
            # get() sleeps on an Event that a put racing it can leave unset
            # until its 10 s tick; the timeout bounds what one miss costs.
            item = queue.get(raw=True, timeout=0.01)
        except Empty:
            continue
        if item["data"] == _STOP:
            queue.ack(item)
            return
        noop()
        queue.ack(item)
        acked.add()


class SqliteHuey(Peer):
    """Huey's ``SqliteHuey`` and its consumer's thread workers, in this process."""

    name = "SqliteHuey"
    distribution = "huey"
    setup = ("SqliteHuey(filename, store_none=True) with its defaults: WAL, a commit per "
             "enqueue, dequeue, result write and result read, SQLite's default "
             f"synchronous={_DEFAULT_SYNCHRONOUS}; Consumer(worker_type='thread', workers=4) "
             "polling every 1 ms; results awaited with result.get(blocking=True)")

    def throughput(self, workers: int, tasks: int, producers: int = 1) -> Dict[str, float]:
        """Enqueue ``tasks`` tasks from ``producers`` threads, await each result; return tasks/s."""
        from huey import SqliteHuey

        with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as directory:
            huey = SqliteHuey("taskqueue-benchmark", filename=os.path.join(directory, "huey.db"),
                              results=True, store_none=True)
            task = huey.task()(noop)
            consumer = _huey_consumer(huey, workers)
            consumer.start()
            try:
                _huey_round(task, workers)  # warm: every worker has polled once
                return concurrent_throughput(producers, tasks, task, _huey_await)
            finally:
                consumer.stop(graceful=True)
                huey.storage.close()  # before its directory goes


JOURNAL_PEERS: List[Peer] = [PersistQueue(), SqliteHuey()]
"""The durable peers the journal scenario runs against, in table order."""
