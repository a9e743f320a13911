"""What the worker processes of the ``redis`` scenario import: each library's no-op task.

The scenario starts every contender's workers as its users would, with the
library's own command line, in fresh processes for each run (see
:mod:`benchmarks.redis_peers`)::

    python -m taskqueue worker benchmarks.redis_tasks:taskqueue_queue --workers 4
    python -m dramatiq benchmarks.redis_tasks:dramatiq_broker --processes 2 --threads 4
    python -m rq.cli worker --worker-class rq.worker.SimpleWorker --url URL QUEUE
    python -m saq benchmarks.redis_tasks.saq_settings
    python -m benchmarks.redis_tasks THREADS          (the raw redis-py loop)

A run tells its processes where to work through two environment
variables, :data:`URL` and :data:`NAMESPACE` (a fresh one per run, so that no
run sees another's keys). The producer builds the very same objects with
the same functions, so the task names match on both sides.

Nothing is imported here at module level but the standard library: an RQ
worker imports this module to find :func:`noop`, and must not pay for the
other libraries (or need them installed).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["URL", "NAMESPACE", "noop", "saq_noop", "build_taskqueue", "taskqueue_queue",
           "build_dramatiq", "dramatiq_broker", "build_saq", "saq_settings", "raw_keys",
           "raw_consume", "main"]

URL = "TASKQUEUE_BENCH_REDIS"
"""The environment variable holding the Redis server's URL."""
NAMESPACE = "TASKQUEUE_BENCH_NAMESPACE"
"""The environment variable holding the run's namespace: every key of the run contains it."""

_DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SAQ_CONCURRENCY = 4


def _url() -> str:
    return os.environ.get(URL, _DEFAULT_URL)


def _namespace() -> str:
    namespace = os.environ.get(NAMESPACE)
    if not namespace:
        raise RuntimeError(f"{NAMESPACE} is not set: the redis scenario sets it for each run")
    return namespace


def noop() -> None:
    """Do nothing (taskqueue's and RQ's task, and the raw loop's work)."""


async def saq_noop(ctx: Dict[str, Any]) -> None:
    """Do nothing, as SAQ's tasks are called: a coroutine given the job's context."""


# -- taskqueue -------------------------------------------------------------------------


def build_taskqueue(url: str, namespace: str, workers: int) -> Any:
    """Return a TaskQueue on Redis with :func:`noop` registered, as both sides make it.

    Its defaults are a user's (maxsize=1024, every option unset); ``workers``
    only matters where it consumes.
    """
    from taskqueue import RedisBroker, TaskQueue

    queue = TaskQueue(broker=RedisBroker(url, namespace=namespace), workers=workers)
    queue.task(noop)
    return queue


def taskqueue_queue() -> Any:
    """The queue ``python -m taskqueue worker`` runs (it calls this to get it)."""
    return build_taskqueue(_url(), _namespace(), 4)


# -- Dramatiq ------------------------------------------------------------------------


def build_dramatiq(url: str, namespace: str) -> Tuple[Any, Any, Any]:
    """Return Dramatiq's RedisBroker with the Results middleware, its backend and the actor.

    Every key, the results' too, is under ``namespace``. Declaring the actor
    makes the broker the global one, as Dramatiq's command line wants it.
    """
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    try:
        backend = RedisBackend(url=url, namespace=namespace, use_namespace_prefix_keys=True)
    except TypeError:
        # Dramatiq before 2.0 names a result's key by a hash alone: those
        # keys cannot be found by namespace, and expire with their TTL.
        backend = RedisBackend(url=url, namespace=namespace)
    broker = RedisBroker(url=url, namespace=namespace)
    broker.add_middleware(Results(backend=backend))
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(noop, broker=broker, store_results=True, actor_name="noop",
                           queue_name="bench")
    return broker, backend, actor


def dramatiq_broker() -> None:
    """Declare the broker ``python -m dramatiq`` runs (it calls this, then takes the global one)."""
    build_dramatiq(_url(), _namespace())


# -- SAQ ------------------------------------------------------------------------------


def build_saq(url: str, namespace: str) -> Any:
    """Return SAQ's Redis queue named ``namespace`` (its keys are ``saq:<namespace>:...``)."""
    from saq import Queue

    return Queue.from_url(url, name=namespace)


def saq_settings() -> Dict[str, Any]:
    """The settings ``python -m saq`` runs: the queue, the no-op, 4 at a time per process."""
    return {"queue": build_saq(_url(), _namespace()), "functions": [("noop", saq_noop)],
            "concurrency": _SAQ_CONCURRENCY}


# -- the raw redis-py loop ------------------------------------------------------------


def raw_keys(namespace: str) -> Tuple[str, str, str]:
    """Return the raw loop's lists: jobs, replies, and where a started process says so."""
    return f"{namespace}:jobs", f"{namespace}:replies", f"{namespace}:ready"


def raw_consume(url: str, namespace: str, threads: int) -> None:
    """Run ``threads`` threads that BRPOP a job, call :func:`noop` and LPUSH a reply; forever.

    Each thread has its own connection (as a pool's threads would), and the
    process says it is ready once every thread is connected. It runs until
    it is killed (SIGTERM's default action).
    """
    import redis

    jobs, replies, ready = raw_keys(namespace)
    connected = threading.Barrier(threads + 1)

    def consume() -> None:
        client = redis.Redis.from_url(url)
        client.ping()
        connected.wait()
        while True:
            popped = client.brpop([jobs], timeout=1)
            if popped is not None:
                noop()
                client.lpush(replies, popped[1])

    workers: List[threading.Thread] = [threading.Thread(target=consume, daemon=True)
                                       for _ in range(threads)]
    for thread in workers:
        thread.start()
    connected.wait()
    redis.Redis.from_url(url).lpush(ready, os.getpid())
    for thread in workers:
        thread.join()


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m benchmarks.redis_tasks THREADS``: one process of the raw loop's consumers."""
    args = sys.argv[1:] if argv is None else argv
    raw_consume(_url(), _namespace(), int(args[0]) if args else 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
