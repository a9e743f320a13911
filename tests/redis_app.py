"""A program's tasks module on Redis, as the multi-process tests run it.

Imported by the test process (to submit) and by ``python -m taskqueue worker
redis_app:queue`` processes (to run), like ``myapp/tasks.py`` in the README.
The environment says where: ``TQ_TEST_URL``, ``TQ_TEST_NAMESPACE``,
``TQ_TEST_VISIBILITY`` (seconds, default 30), ``TQ_TEST_WORKERS`` (default
4) and ``TQ_TEST_EVERY`` (seconds; a periodic ``tick`` if set).

The tasks tell the test what happened through Redis keys of the test's own
(``{namespace}-log:...``), so that a test can wait on them across processes
with a blocking pop instead of a sleep.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskqueue import RedisBroker, TaskQueue

URL = os.environ.get("TQ_TEST_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("TQ_TEST_NAMESPACE", "taskqueue-test")
LOG = "{%s}-log:" % NAMESPACE

queue = TaskQueue(
    broker=RedisBroker(URL, namespace=NAMESPACE,
                       visibility_timeout=float(os.environ.get("TQ_TEST_VISIBILITY", "30"))),
    workers=int(os.environ.get("TQ_TEST_WORKERS", "4")), maxsize=0)
# Blocking pops wait up to a minute: longer than redis-py's default socket
# timeout. The tasks' own notes retry through an outage for up to ~20 s (a
# test that restarts Redis): a note that met it is the task's own I/O
# failing, which says nothing of the queue the tests are about.
_client = redis.Redis.from_url(URL, socket_timeout=90,
                               retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 40),
                               retry_on_error=[redis.ConnectionError])


def log_key(name: str) -> str:
    """The key of one of this namespace's test logs."""
    return LOG + name


@queue.task(name="noop")
def noop() -> None:
    """Nothing: the cost of a task itself."""


@queue.task(name="record")
def record(i: int) -> int:
    """Note that ``i`` ran here (the runs log holds ``i:pid``), return it."""
    _client.rpush(log_key("runs"), f"{i}:{os.getpid()}")
    return i


@queue.task(name="hold")
def hold(tag: str) -> str:
    """Say ``tag`` started (with this pid), then wait until the test releases it."""
    _client.rpush(log_key("started"), f"{tag}:{os.getpid()}")
    _client.blpop([log_key("release:" + tag)], timeout=60)
    _client.rpush(log_key("runs"), f"{tag}:{os.getpid()}")
    return tag


@queue.task(name="spin")
def spin(i: int, seconds: float) -> int:
    """Work for ``seconds`` (a task that takes long), noting its start and end."""
    _client.rpush(log_key("started"), f"{i}:{os.getpid()}")
    threading.Event().wait(seconds)
    _client.rpush(log_key("runs"), f"{i}:{os.getpid()}")
    return i


@queue.task(name="fail")
def fail(reason: str) -> Any:
    """Always fails, with a ValueError saying ``reason``."""
    raise ValueError(reason)


def _tick() -> None:
    _client.rpush(log_key("ticks"), f"{os.getpid()}")


if os.environ.get("TQ_TEST_EVERY"):
    # Registered in every process that imports this module; it fires only
    # where the queue consumes (the workers), once per tick across them.
    tick = queue.task(name="tick")(_tick)
    periodic = queue.every(float(os.environ["TQ_TEST_EVERY"]), tick)
