"""The booking demo on Redis, behind ``python -m taskqueue demo --broker URL``.

The same bookings as in :mod:`taskqueue.demo` go through Redis: this
process only submits (a ``workers=0`` queue on a namespace of its own), and
:data:`~taskqueue.demo.WORKER_PROCESSES` worker processes, ``python -m
taskqueue worker taskqueue.demo_redis:worker_queue``, send the emails. A
task is told its attempt number by the worker it runs on (see
:func:`worker_queue`), so a seed gives the same outcomes there as in one
process. At the end the workers are stopped with SIGTERM and the
namespace's keys are deleted.

This module holds what only the demo on Redis needs: the broker URL, the
worker processes (started, watched, stopped), the task and the queue they
run, and the deletion of the namespace. The mail service, the progress
display and the report are :mod:`taskqueue.demo`'s, imported from there;
that module imports this one only when it is given a broker, so the
in-memory demo never loads it. redis-py and :mod:`subprocess` are imported
only when a run needs them. Only public names of :mod:`taskqueue` are used.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, TextIO, Tuple

from . import (BrokerError, Event, EventKind, RedisBroker, TaskFunction, TaskHandle, TaskQueue,
               TaskState)
from .demo import (BACKOFF, RETRIES, TICK, WORKER_PROCESSES, Counts, DemoError, DemoResult,
                   FakeMailService, MailServerError, ProgressDisplay, WorkerProcess, write_header)

__all__ = [
    "simulate_on_redis",
    "send_confirmation",
    "worker_queue",
]

BROKER_ENV = "TASKQUEUE_DEMO_BROKER"
"""Tells a worker process the Redis URL (not its command line, which anyone may read: a URL
may hold a password)."""
NAMESPACE_ENV = "TASKQUEUE_DEMO_NAMESPACE"
"""Tells a worker process the demo's namespace in Redis."""
PARENT_ENV = "TASKQUEUE_DEMO_PARENT_FD"
"""Tells a worker process the read end of the pipe that ends when the demo does."""

_WORKER_TARGET = f"{__name__}:worker_queue"
_START_TIMEOUT = 30.0  # seconds the worker processes get to start consuming
_HEARTBEAT_LOOK = 0.05  # seconds between looks at their heartbeats while they start
_GRACE = 5.0  # a stopped worker's running emails get this long (each takes 30 ms at most)
_STOP_TIMEOUT = _GRACE + 10.0  # then it is killed

_attempt = threading.local()  # the attempt a worker thread runs now: see _note_attempt


def send_confirmation(booking_id: int, failure_rate: float, seed: int) -> Dict[str, Any]:
    """The demo's task on Redis: one attempt at one booking's email, in a worker process.

    The failure rate and the seed come with the task, and the attempt's number
    from the worker (see :func:`worker_queue`): whichever process runs an
    attempt, it ends as it would in the in-memory demo with that seed.

    Returns:
        ``{"receipt": ..., "pid": ...}``: the receipt, and the process that sent it.

    Raises:
        MailServerError: this attempt failed; the message names the process.
    """
    pid = os.getpid()
    try:
        receipt = FakeMailService(failure_rate, seed).send(booking_id,
                                                           getattr(_attempt, "number", 1))
    except MailServerError as exc:
        raise MailServerError(f"{exc} in worker process {pid}") from None
    return {"receipt": receipt, "pid": pid}


def _note_attempt(event: Event) -> None:
    # A task is not told its attempt; its worker emits STARTED, with the
    # handle that counts them (deliveries, in Redis), in the very thread that
    # then runs the attempt.
    if event.kind is EventKind.STARTED:
        _attempt.number = event.handle.attempts


def _register(queue: TaskQueue) -> TaskFunction[Dict[str, Any]]:
    # The demo and its workers register the same task under the same name:
    # the name is what crosses processes, and the workers' retry_on decides.
    return queue.task(send_confirmation, name="send_confirmation", retries=RETRIES,
                      backoff=BACKOFF, retry_on=MailServerError)


def worker_queue() -> TaskQueue:
    """The worker processes' queue: ``taskqueue worker taskqueue.demo_redis:worker_queue``.

    Made only when the worker command asks for it (importing this module
    makes nothing and needs no redis-py), from what the demo puts in its
    worker processes' environment: ``TASKQUEUE_DEMO_BROKER`` (the URL) and
    ``TASKQUEUE_DEMO_NAMESPACE``. A listener tells each attempt its number.

    With ``TASKQUEUE_DEMO_PARENT_FD`` (the read end of a pipe whose write end
    only the demo holds) the process stops itself, as on SIGTERM, once the
    demo is gone, however it ended: even ``kill -9`` of the demo leaves no
    worker behind.

    Raises:
        LookupError: the environment does not say where the queue is.
    """
    try:
        url, namespace = os.environ[BROKER_ENV], os.environ[NAMESPACE_ENV]
    except KeyError as missing:
        raise LookupError(f"{missing.args[0]} is not set: this is the queue of the workers "
                          "that 'python -m taskqueue demo --broker URL' starts") from None
    queue = TaskQueue(broker=RedisBroker(url, namespace=namespace), name="booking-demo")
    _register(queue)
    queue.add_listener(_note_attempt)
    parent = os.environ.get(PARENT_ENV)
    if parent:
        threading.Thread(target=_stop_with_parent, args=(int(parent),), daemon=True,
                         name="booking-demo-parent").start()
    return queue


def _stop_with_parent(fd: int) -> None:
    # Nothing is ever written to the pipe: the read returns b"" once its
    # only write end, the demo's, is closed, i.e. when the demo has ended.
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)  # the worker command's graceful stop


def simulate_on_redis(url: str, bookings: int, workers: int, failure_rate: float, seed: int, *,
                      out: TextIO, tty: bool, log_level: str = "critical") -> DemoResult:
    """Send the bookings' emails through Redis, from :data:`WORKER_PROCESSES` worker processes.

    This process only submits, to a ``workers=0`` queue on a namespace of its
    own (``taskqueue-demo-<random>``). The worker processes, of ``workers``
    threads each, are started and waited for (their heartbeats in Redis);
    then the bookings are submitted, and the progress is read from the stats
    in Redis. At the end, and on any error or Ctrl-C (or SIGTERM) on the way,
    the workers are stopped with SIGTERM and waited for, the emails not
    started are cancelled, and every key of the namespace is deleted.

    Nothing is written to ``out`` until Redis has answered.

    Args:
        log_level: the worker processes' ``--log-level``.

    Raises:
        ValueError: ``bookings`` < 1.
        DemoError: redis-py is not installed, the URL is not one redis-py
            takes, or a worker process did not start or exited on its own.
        BrokerError: Redis cannot be reached (then nothing was started), or
            it was lost during the run.
    """
    if bookings < 1:
        raise ValueError(f"bookings must be >= 1, got {bookings!r}")
    return _RedisRun(url, bookings, workers, failure_rate, seed, out, tty, log_level).run()


class _RedisRun:
    """One run of the demo on Redis (see :func:`simulate_on_redis`); its steps share this state."""

    def __init__(self, url: str, bookings: int, workers: int, failure_rate: float, seed: int,
                 out: TextIO, tty: bool, log_level: str) -> None:
        self.url, self.bookings, self.workers = url, bookings, workers
        self.failure_rate, self.seed = failure_rate, seed
        self.out, self.tty, self.log_level = out, tty, log_level
        self.namespace = f"taskqueue-demo-{uuid.uuid4().hex[:10]}"
        self.handles: List[TaskHandle] = []

    def run(self) -> DemoResult:
        broker = _reachable_broker(self.url, self.namespace)
        queue = TaskQueue(broker=broker, workers=0, name="booking-demo")
        send = _register(queue)
        out = self.out
        try:
            with _sigterm_as_interrupt():
                write_header(out, self.bookings,
                             f"{WORKER_PROCESSES} worker processes x {self.workers} threads",
                             self.failure_rate, self.seed)
                out.write(f"Queue in Redis at {broker.url}, namespace {self.namespace} "
                          "(deleted at the end)\n")
                out.flush()
                with _WorkerProcesses(self.url, self.namespace, self.workers,
                                      self.log_level) as children:
                    children.wait_consuming(broker)
                    out.write(f"Worker processes {' and '.join(map(str, children.pids))} "
                              "are consuming\n")
                    out.flush()
                    elapsed = self._submit_and_wait(queue, send, children)
                    stats, letters = queue.stats(), queue.dead_letters()
        finally:
            # After the workers stopped, so that nothing writes to the
            # namespace once it is deleted.
            _shut_down(queue)
            _delete_namespace(self.url, self.namespace, out)
        return DemoResult(stats, letters, elapsed, self._processes(children))

    def _submit_and_wait(self, queue: TaskQueue, send: TaskFunction[Dict[str, Any]],
                         children: _WorkerProcesses) -> float:
        display = ProgressDisplay(self.out, self.tty, self.bookings,
                                  _RedisCounts(queue, self.handles))
        started = time.monotonic()
        try:
            for booking_id in range(1, self.bookings + 1):
                self.handles.append(send.submit(booking_id, self.failure_rate, self.seed))
                display.tick()
            while not queue.join(timeout=TICK):
                children.check()  # a worker that died would leave the demo waiting
                display.tick()
            elapsed = time.monotonic() - started
            display.finish()
        except BaseException:
            display.end_line()
            raise
        return elapsed

    def _processes(self, children: _WorkerProcesses) -> Tuple[WorkerProcess, ...]:
        sent = collections.Counter(handle.result()["pid"] for handle in self.handles
                                   if handle.state is TaskState.SUCCEEDED)
        return tuple(WorkerProcess(p.pid, sent[p.pid], p.returncode) for p in children.processes)


class _RedisCounts:
    """The counts of a run on Redis, as :class:`ProgressDisplay` reads them.

    Ended and retried come from the queue's stats in Redis (all processes);
    retrying from this process's handles, which follow their tasks' states.
    """

    def __init__(self, queue: TaskQueue, handles: List[TaskHandle]) -> None:
        self._queue = queue
        self._handles = handles

    def counts(self) -> Counts:
        """Return the counts now (one round trip to Redis)."""
        stats = self._queue.stats()
        retrying = sum(1 for h in self._handles if not h.done()
                       and (h.attempts > 1 or (h.attempts == 1 and not h.running())))
        return Counts(stats.succeeded, stats.failed, retrying, stats.retried)


def _reachable_broker(url: str, namespace: str) -> RedisBroker:
    # Redis is asked once before anything starts: a bad URL or a server that
    # does not answer ends the demo with one line, and no process to stop.
    try:
        broker = RedisBroker(url, namespace=namespace)
    except (ImportError, TypeError, ValueError) as exc:
        raise DemoError(str(exc)) from None
    try:
        broker.workers()
    except BaseException:
        broker.shutdown()
        raise
    return broker


def _shut_down(queue: TaskQueue) -> None:
    try:
        queue.shutdown(cancel_futures=True)  # what is left when the run was cut short
    except BrokerError:
        pass  # Redis is gone: so are the tasks, as far as this demo is concerned


def _delete_namespace(url: str, namespace: str, out: TextIO) -> None:
    import redis  # present: the demo's RedisBroker needed it

    pattern = "{%s}:*" % namespace  # every key of a RedisBroker's namespace, results too
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    except redis.RedisError as exc:
        out.write(f"(the demo's keys, {pattern}, could not be deleted: {type(exc).__name__})\n")
    finally:
        client.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # `kill` of the demo then cleans up as Ctrl-C does: its workers stopped,
    # its keys deleted. Only the main thread may set a signal handler.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(number: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _WorkerProcesses:
    """The demo's worker processes: started on entering ``with``, stopped on leaving it.

    Each is ``python -m taskqueue worker taskqueue.demo_redis:worker_queue``
    in a session of its own, so that Ctrl-C on the terminal reaches the demo
    alone, which then stops each worker once, with SIGTERM (a second signal
    would stop it at once). Each holds the read end of a pipe whose only
    write end the demo holds: if the demo dies before stopping them, they
    stop themselves (see :func:`worker_queue`).
    """

    def __init__(self, url: str, namespace: str, threads: int, log_level: str) -> None:
        self._command = [sys.executable, "-m", "taskqueue", "worker", _WORKER_TARGET,
                         "--workers", str(threads), "--grace", f"{_GRACE:g}",
                         "--log-level", log_level]
        # The workers import this very taskqueue, wherever they start from.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        self._env = dict(os.environ, PYTHONPATH=os.pathsep.join(path),
                         **{BROKER_ENV: url, NAMESPACE_ENV: namespace})
        self.processes: List[Any] = []
        """The ``subprocess.Popen`` of each worker process."""
        self._write_end: Optional[int] = None

    @property
    def pids(self) -> List[int]:
        """The worker processes' ids."""
        return [process.pid for process in self.processes]

    def __enter__(self) -> _WorkerProcesses:
        import subprocess  # only here: the in-memory demo starts no process

        read_end, self._write_end = os.pipe()  # neither end is inherited unless passed
        env = dict(self._env, **{PARENT_ENV: str(read_end)})
        try:
            for _ in range(WORKER_PROCESSES):
                self.processes.append(subprocess.Popen(
                    self._command, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, pass_fds=(read_end,), start_new_session=True))
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(read_end)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def check(self) -> None:
        """Raise :class:`DemoError` if a worker process has exited (only stop() ends them)."""
        for process in self.processes:
            status = process.poll()
            if status is not None:
                raise DemoError(f"worker process {process.pid} exited on its own (status "
                                f"{status}); what it said, if anything, is above")

    def wait_consuming(self, broker: RedisBroker) -> None:
        """Return once every worker process's heartbeat is in Redis.

        Raises:
            DemoError: one exited, or they took longer than 30 s.
        """
        deadline = time.monotonic() + _START_TIMEOUT
        expected = set(self.pids)
        while not expected <= {worker.get("pid") for worker in broker.workers()}:
            self.check()
            if time.monotonic() > deadline:
                raise DemoError(f"the worker processes did not start consuming within "
                                f"{_START_TIMEOUT:g} s")
            time.sleep(_HEARTBEAT_LOOK)

    def stop(self) -> None:
        """SIGTERM each worker process still running and wait for it; kill one that lingers."""
        import subprocess

        live = [process for process in self.processes if process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        try:
            deadline = time.monotonic() + _STOP_TIMEOUT
            for process in live:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Also when the wait was cut short (a second Ctrl-C): no worker outlives the demo.
            for process in live:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if self._write_end is not None:
                os.close(self._write_end)
                self._write_end = None
