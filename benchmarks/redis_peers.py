"""Contenders on one shared Redis server: worker processes per run, the producer here.

Every contender of the ``redis`` scenario, taskqueue too, runs the same way
(:meth:`RedisContender.throughput`):

1. a fresh namespace, ``tqbench-<hex>``, that every key of the run contains;
2. the producer's side made in this process (the library's queue, broker or
   client), as a web process would hold it;
3. the worker processes started with the library's own command line (the
   module they import is :mod:`benchmarks.redis_tasks`), and waited for
   until each has said it is up in Redis (a heartbeat, a registration:
   whatever the library writes when it starts);
4. one task per worker thread, awaited, to warm every connection; then the
   clock runs while the producer submits every task and then awaits every
   result, in order, as :func:`benchmarks.workloads.throughput` does;
5. the workers stopped with SIGTERM and waited for (killed only if they do
   not exit in 30 s); then every key of the namespace is deleted (SCAN
   for ``*<namespace>*``, then DEL), and nothing else.

Each peer is set up to be as fast as its users can make it, as in
:mod:`benchmarks.peers`: RQ's workers are ``SimpleWorker`` (no fork per
job) and log only warnings; Dramatiq's
consumers back off at most 100 ms when idle (``dramatiq_worker_timeout``,
1 s by default). arq is left out: it pins redis-py below 6, which would
take the redis-py that taskqueue itself runs on away; SAQ stands in for
the asyncio queues.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from time import perf_counter
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import redis_tasks
from .peers import INSTALL_HINT, Peer, version_of
from .roundtrips import RoundTrips, script_names

__all__ = ["redis_url", "redis_unreachable", "forget_namespace", "Producer", "RedisContender",
           "TaskQueueOnRedis", "DramatiqOnRedis", "RQ", "SAQ", "RawLoop", "REDIS_PEERS",
           "redis_peers"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The longest a run waits for its workers to say they are up, for one
# result, and for a worker to exit after SIGTERM.
_READY_TIMEOUT = 60.0
_RESULT_TIMEOUT = 120
_STOP_TIMEOUT = 30.0
# SAQ's map() looks at the jobs it awaits every poll_interval (0.5 s by default).
_SAQ_POLL = 0.01
_PYTHON = sys.executable


def redis_url() -> str:
    """Return the server the scenario uses: ``$TASKQUEUE_BENCH_REDIS``, else 127.0.0.1:6379/0."""
    return os.environ.get(redis_tasks.URL) or "redis://127.0.0.1:6379/0"


def redis_unreachable(url: str) -> Optional[str]:
    """Return why the scenario cannot use the server at ``url``, or None if it can."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install '.[redis]')"
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"no Redis server answers at {url} ({type(exc).__name__})"
    finally:
        client.close()
    return None


def forget_namespace(client: Any, namespace: str) -> int:
    """Delete every key whose name contains ``namespace``; return how many."""
    deleted = 0
    batch: List[bytes] = []
    for key in client.scan_iter(match=f"*{namespace}*", count=1000):
        batch.append(key)
        if len(batch) == 500:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    return deleted


class Producer:
    """One run's producer side: who is up, submitting and awaiting, and closing."""

    def ready(self) -> int:
        """Return how many worker processes (or workers) have said they are up."""
        raise NotImplementedError

    def run(self, tasks: int) -> None:
        """Submit ``tasks`` no-op tasks, then await every result in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the producer's connections."""


class RedisContender(Peer):
    """A contender on the shared Redis: its worker processes and its producer.

    Subclasses set the :class:`~benchmarks.peers.Peer` attributes and give
    :meth:`commands` and :meth:`connect`.

    Args:
        url: the Redis server.
    """

    runs = "on Redis"
    imports: Tuple[str, ...] = ()
    """The modules its producer and workers import: all must import for it to run."""
    scripts: Dict[str, str] = {}
    """SHA1 -> name of the library's Lua scripts, for the round-trip breakdown."""

    def __init__(self, url: str) -> None:
        self.url = url

    def unavailable(self) -> Optional[str]:
        """Return why this contender cannot be measured here, or None if it can.

        Only installed and importable are asked: a trial run would start
        worker processes once more for each peer, the largest cost of the
        scenario. A run that fails then fails the scenario, with its error.
        """
        if version_of(self.distribution) is None:
            return INSTALL_HINT
        for module in self.imports:
            try:
                importlib.import_module(module)
            except Exception as exc:  # whatever stops the import, it is the reason given
                return f"cannot run {self.runs}: import {module}: {type(exc).__name__}: {exc}"
        return None

    def commands(self, namespace: str, threads: int, processes: int) -> List[List[str]]:
        """Return the command line of each worker process to start."""
        raise NotImplementedError

    def expected(self, threads: int, processes: int) -> int:
        """Return what :meth:`Producer.ready` counts once every worker is up."""
        return processes

    def environment(self) -> Dict[str, str]:
        """Return what the worker processes' environment adds."""
        return {}

    def connect(self, namespace: str) -> Producer:
        """Return the producer side of a run in ``namespace``."""
        raise NotImplementedError

    def forget(self, client: Any, namespace: str) -> None:
        """Delete what the run left in Redis: every key that names the namespace."""
        forget_namespace(client, namespace)

    def throughput(self, workers: int, tasks: int, processes: int = 2) -> Dict[str, float]:
        """Run ``tasks`` no-ops on ``processes`` x ``workers``; return tasks per second."""
        with self._running(workers, processes) as (producer, _):
            start = perf_counter()
            producer.run(tasks)
            elapsed = perf_counter() - start
        return {"throughput": tasks / elapsed, "seconds": elapsed}

    def round_trips(self, workers: int, tasks: int, processes: int = 2) -> Dict[str, float]:
        """Run ``tasks`` no-ops under MONITOR; return the round trips per task, by command too.

        Returns:
            ``round_trips``, per task in all, and per task for each command
            name (``"EVALSHA FETCH"``, ``"BLPOP"``, ...), counted as
            :mod:`benchmarks.roundtrips` says.
        """
        with self._running(workers, processes) as (producer, namespace):
            trips = RoundTrips(self.url, namespace, self.scripts)
            trips.start()
            try:
                producer.run(tasks)
            finally:
                trips.stop()
        counts = trips.by_command()
        return {"round_trips": sum(counts.values()) / tasks,
                **{name: count / tasks for name, count in counts.items()}}

    @contextmanager
    def _running(self, workers: int, processes: int) -> Iterator[Any]:
        import redis

        namespace = f"tqbench-{uuid.uuid4().hex[:12]}"
        client = redis.Redis.from_url(self.url)
        try:
            with ExitStack() as stack:
                producer = self.connect(namespace)
                stack.callback(producer.close)  # after the workers have stopped
                started = stack.enter_context(_processes(
                    self.commands(namespace, workers, processes), self._env(namespace)))
                _wait_ready(self.name, producer, self.expected(workers, processes), started)
                producer.run(workers * processes)  # warm: every thread has run one
                yield producer, namespace
        finally:
            self.forget(client, namespace)
            client.close()

    def _env(self, namespace: str) -> Dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, **self.environment(), redis_tasks.URL: self.url,
                redis_tasks.NAMESPACE: namespace,
                "PYTHONPATH": ROOT if not path else os.pathsep.join([ROOT, path])}


class _Started:
    """A worker process and the file its output goes to, for the error if it exits."""

    def __init__(self, command: List[str], env: Dict[str, str], log: Any) -> None:
        self.command = command
        self.log = log
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]


@contextmanager
def _processes(commands: List[List[str]], env: Dict[str, str]) -> Iterator[List[_Started]]:
    # SIGTERM, as a deployment stops workers; then wait, and kill only a
    # process that outlives the wait.
    with ExitStack() as logs:
        started: List[_Started] = []
        try:
            for command in commands:
                log = logs.enter_context(tempfile.TemporaryFile(prefix="taskqueue-bench-"))
                started.append(_Started(command, env, log))
            yield started
        finally:
            for each in started:
                if each.process.poll() is None:
                    each.process.send_signal(signal.SIGTERM)
            for each in started:
                try:
                    each.process.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    each.process.kill()
                    each.process.wait()


def _wait_ready(name: str, producer: Producer, expected: int, started: List[_Started]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while producer.ready() < expected:
        for each in started:
            if each.process.poll() is not None:
                raise RuntimeError(f"a {name} worker exited with {each.process.returncode} "
                                   f"({' '.join(each.command[1:4])} ...): {each.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{producer.ready()} of {expected} {name} workers were up "
                               f"after {_READY_TIMEOUT:.0f} s")
        time.sleep(0.02)


# -- taskqueue -------------------------------------------------------------------------------


class TaskQueueOnRedis(RedisContender):
    """taskqueue's RedisBroker: ``python -m taskqueue worker`` processes, handles awaited here."""

    name = "taskqueue"
    distribution = "redis"
    imports = ("redis", "taskqueue.brokers.redis")
    setup = ("TaskQueue(broker=RedisBroker(url, namespace=...)) with its defaults (maxsize=1024), "
             "a @queue.task no-op; `python -m taskqueue worker MODULE:ATTR --workers 4` per "
             "process; every handle's result() awaited")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        from taskqueue.brokers import redis_scripts

        self.scripts = script_names({name: getattr(redis_scripts, name)
                                     for name in redis_scripts.__all__ if name != "STRUCTURAL"})

    def commands(self, namespace: str, threads: int, processes: int) -> List[List[str]]:
        return [[_PYTHON, "-m", "taskqueue", "worker", "benchmarks.redis_tasks:taskqueue_queue",
                 "--workers", str(threads)]] * processes

    def connect(self, namespace: str) -> Producer:
        return _TaskQueueProducer(redis_tasks.build_taskqueue(self.url, namespace, 1))


class _TaskQueueProducer(Producer):
    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.submit = queue.tasks[f"{redis_tasks.__name__}.noop"].submit

    def ready(self) -> int:
        return len(self.queue.broker.workers())

    def run(self, tasks: int) -> None:
        submit = self.submit
        handles = [submit() for _ in range(tasks)]
        for handle in handles:
            handle.result(timeout=_RESULT_TIMEOUT)

    def close(self) -> None:
        self.queue.shutdown(wait=True)


# -- Dramatiq --------------------------------------------------------------------------------


class DramatiqOnRedis(RedisContender):
    """Dramatiq's RedisBroker and Results(RedisBackend), run by its own command line."""

    name = "Dramatiq RedisBroker"
    distribution = "dramatiq"
    imports = ("redis", "dramatiq", "dramatiq.brokers.redis", "dramatiq.results.backends")
    setup = ("RedisBroker + Results(RedisBackend), an actor with store_results=True; "
             "`dramatiq MODULE:FN --processes 2 --threads 4`, dramatiq_worker_timeout=100; "
             "every message's get_result(block=True) awaited")

    def commands(self, namespace: str, threads: int, processes: int) -> List[List[str]]:
        return [[_PYTHON, "-m", "dramatiq", "benchmarks.redis_tasks:dramatiq_broker",
                 "--processes", str(processes), "--threads", str(threads)]]

    def environment(self) -> Dict[str, str]:
        return {"dramatiq_worker_timeout": "100"}

    def connect(self, namespace: str) -> Producer:
        return _DramatiqProducer(namespace, *redis_tasks.build_dramatiq(self.url, namespace))


class _DramatiqProducer(Producer):
    def __init__(self, namespace: str, broker: Any, backend: Any, actor: Any) -> None:
        self.heartbeats = f"{namespace}:__heartbeats__"  # a member per consuming process
        self.broker, self.backend, self.actor = broker, backend, actor

    def ready(self) -> int:
        return int(self.broker.client.zcard(self.heartbeats))

    def run(self, tasks: int) -> None:
        send, get_result = self.actor.send, self.backend.get_result
        messages = [send() for _ in range(tasks)]
        for message in messages:
            get_result(message, block=True, timeout=_RESULT_TIMEOUT * 1000)

    def close(self) -> None:
        self.broker.close()
        self.backend.client.close()


# -- RQ --------------------------------------------------------------------------------------


class RQ(RedisContender):
    """RQ's ``SimpleWorker``: one job at a time per process, so a process per thread."""

    name = "RQ"
    distribution = "rq"
    imports = ("redis", "rq", "rq.cli")
    setup = ("`rq worker --worker-class rq.worker.SimpleWorker --quiet` x 8 processes (RQ runs one "
             "job at a time per worker: 8 processes stand for 2 processes x 4 threads); "
             "queue.enqueue(noop), every job's latest_result(timeout=...) awaited (a "
             "blocking XREAD on its result stream)")

    def commands(self, namespace: str, threads: int, processes: int) -> List[List[str]]:
        return [[_PYTHON, "-m", "rq.cli", "worker", "--worker-class", "rq.worker.SimpleWorker",
                 "--url", self.url, "--name", f"{namespace}-{index}", "--quiet", namespace]
                for index in range(threads * processes)]

    def expected(self, threads: int, processes: int) -> int:
        return threads * processes

    def connect(self, namespace: str) -> Producer:
        return _RQProducer(self.url, namespace)

    def forget(self, client: Any, namespace: str) -> None:
        # RQ also lists queues and workers in two sets shared by every queue.
        # (rq:clean_groups, a lock its workers take, is left: it is every
        # RQ queue's, and it expires by itself.)
        super().forget(client, namespace)
        client.srem("rq:queues", f"rq:queue:{namespace}")
        stale = [w for w in client.smembers("rq:workers") if namespace.encode() in w]
        if stale:
            client.srem("rq:workers", *stale)


class _RQProducer(Producer):
    def __init__(self, url: str, namespace: str) -> None:
        import redis
        from rq import Queue

        self.client = redis.Redis.from_url(url)
        self.queue = Queue(namespace, connection=self.client)
        self.workers = f"rq:workers:{namespace}"
        self.ids = (f"{namespace}-{n}" for n in itertools.count())

    def ready(self) -> int:
        return int(self.client.scard(self.workers))

    def run(self, tasks: int) -> None:
        enqueue, ids = self.queue.enqueue, self.ids
        jobs = [enqueue(redis_tasks.noop, job_id=next(ids)) for _ in range(tasks)]
        for job in jobs:
            if job.latest_result(timeout=_RESULT_TIMEOUT) is None:
                raise TimeoutError(f"RQ job {job.id} had no result in {_RESULT_TIMEOUT} s")

    def close(self) -> None:
        self.client.close()


# -- SAQ -------------------------------------------------------------------------------------


class SAQ(RedisContender):
    """SAQ, an asyncio queue on Redis: ``saq SETTINGS`` processes, 4 jobs at a time each."""

    name = "SAQ"
    distribution = "saq"
    imports = ("redis", "saq", "saq.queue.redis")
    setup = ("Queue.from_url(url, name=...), an async no-op; `saq MODULE.settings` x 2 "
             "processes with concurrency=4 (asyncio: 4 jobs at once stand for 4 threads); "
             "await queue.map('noop', [{}] * n, poll_interval=0.01): SAQ's own submit-many-"
             "and-await-all (a job's refresh(until_complete=) can miss its completion and "
             "wait out its timeout)")

    def commands(self, namespace: str, threads: int, processes: int) -> List[List[str]]:
        return [[_PYTHON, "-m", "saq", "benchmarks.redis_tasks.saq_settings"]] * processes

    def connect(self, namespace: str) -> Producer:
        return _SAQProducer(self.url, namespace)


class _SAQProducer(Producer):
    def __init__(self, url: str, namespace: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.workers = f"saq:{namespace}:stats"  # a member per worker process, from its start
        self.loop = asyncio.new_event_loop()
        self.queue = redis_tasks.build_saq(url, namespace)
        self.loop.run_until_complete(self.queue.connect())

    def ready(self) -> int:
        return int(self.client.zcard(self.workers))

    def run(self, tasks: int) -> None:
        self.loop.run_until_complete(self._run(tasks))

    async def _run(self, tasks: int) -> None:
        await self.queue.map("noop", [{}] * tasks, timeout=_RESULT_TIMEOUT,
                             poll_interval=_SAQ_POLL)

    def close(self) -> None:
        self.loop.run_until_complete(self.queue.disconnect())
        self.loop.close()
        self.client.close()


# -- the raw loop ----------------------------------------------------------------------------


class RawLoop(RedisContender):
    """The limit: redis-py doing only a queue's operations, LPUSH / BRPOP both ways."""

    name = "raw redis-py loop"
    distribution = "redis"
    imports = ("redis",)
    setup = ("the producer LPUSHes every payload to a list, 2 processes x 4 threads BRPOP it "
             "and LPUSH a reply to a reply list, the producer BRPOPs every reply: 4 round "
             "trips a task, no ids, no results, no acknowledgement")

    def commands(self, namespace: str, threads: int, processes: int) -> List[List[str]]:
        return [[_PYTHON, "-m", "benchmarks.redis_tasks", str(threads)]] * processes

    def connect(self, namespace: str) -> Producer:
        return _RawProducer(self.url, namespace)


class _RawProducer(Producer):
    _PAYLOAD = b'{"name": "noop", "args": []}'

    def __init__(self, url: str, namespace: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.jobs, self.replies, self.up = redis_tasks.raw_keys(namespace)

    def ready(self) -> int:
        return int(self.client.llen(self.up))

    def run(self, tasks: int) -> None:
        lpush, brpop, jobs, replies = (self.client.lpush, self.client.brpop, self.jobs,
                                       self.replies)
        for _ in range(tasks):
            lpush(jobs, self._PAYLOAD)
        for _ in range(tasks):
            if brpop([replies], timeout=_RESULT_TIMEOUT) is None:
                raise TimeoutError(f"no reply in {_RESULT_TIMEOUT} s")

    def close(self) -> None:
        self.client.close()


REDIS_PEERS = (DramatiqOnRedis, RQ, SAQ)
"""The peer libraries the redis scenario runs against, in table order."""


def redis_peers(url: str) -> List[RedisContender]:
    """Return the peers of the redis scenario, on the server at ``url``."""
    return [peer(url) for peer in REDIS_PEERS]
