"""Shared fixtures: queues that are always shut down, and gates for workers."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from taskqueue import TaskHandle, TaskQueue, TaskState
from taskqueue.brokers.memory import MemoryBroker, MemoryConsumer

# Generous bound for anything a test waits on: a bug fails the test instead
# of hanging it, and a slow shared machine does not.
WAIT = 20.0


@pytest.fixture
def shaken() -> Iterator[None]:
    """Switch threads as often as the interpreter can, to shake interleavings loose."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.fixture
def make_queue() -> Iterator[Callable[..., TaskQueue]]:
    """Yield a factory of TaskQueues; every queue made is shut down afterwards."""
    made: List[TaskQueue] = []

    def make(*args: object, **kwargs: object) -> TaskQueue:
        queue = TaskQueue(*args, **kwargs)  # type: ignore[arg-type]
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.shutdown(cancel_futures=True, timeout=WAIT)


class FakeClock:
    """The tests' one fake clock: time moves only when a test advances it.

    Pass ``clock=fake, wait=fake.wait`` to a TaskQueue (or a Scheduler):
    its timer threads then wait on this clock instead of real time.
    ``advance(seconds)`` moves time on, wakes every timer thread waiting on
    it, and returns once each has looked at the new time and handed over
    what fell due (it is waiting again). A test can then assert what did,
    and did not, happen by that time, with no sleep.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self._now = now
        self._lock = threading.Condition()
        self._generation = 0
        # Each timer thread: the generation it last waited at (-1: busy),
        # and the condition it waits on.
        self._timers: Dict[threading.Thread, List[Any]] = {}

    def __call__(self) -> float:
        return self._now

    def wait(self, condition: threading.Condition, timeout: Optional[float]) -> None:
        """A timer's wait (called with ``condition`` held): until woken by advance()."""
        me = threading.current_thread()
        with self._lock:
            self._timers[me] = [self._generation, condition]
            self._lock.notify_all()
        if timeout is None or timeout > 0:
            # Real time only as a safety net for a wake that came too early;
            # advance() wakes it at once.
            condition.wait(0.05)
        with self._lock:
            self._timers[me][0] = -1

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` and wait until every timer has caught up."""
        with self._lock:
            self._now += seconds
            self._generation += 1
            generation = self._generation
            conditions = [condition for _, condition in self._timers.values()]
        for condition in conditions:
            with condition:
                condition.notify_all()
        me = threading.current_thread()

        def caught_up() -> bool:
            return all(not thread.is_alive() or thread is me or seen >= generation
                       for thread, (seen, _) in self._timers.items())

        deadline = time.monotonic() + WAIT
        with self._lock:
            # Woken when a timer waits again; looked at again now and then
            # too, for a timer whose thread ends instead (its queue stopped).
            while not caught_up():
                if time.monotonic() > deadline:
                    raise AssertionError("a timer thread did not catch up with the fake clock")
                self._lock.wait(0.01)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A FakeClock of this test's own."""
    return FakeClock()


class Gate:
    """Holds tasks at a point until the test opens it; counts who arrived."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._arrived = 0
        self._arrival = threading.Condition(self._lock)

    def wait(self, *_: object) -> str:
        """Task body: announce arrival, then block until the gate opens."""
        with self._arrival:
            self._arrived += 1
            self._arrival.notify_all()
        if not self._open.wait(WAIT):
            raise TimeoutError("gate never opened")
        return "through"

    def wait_for_arrivals(self, count: int) -> None:
        """Block until ``count`` tasks are held at the gate."""
        with self._arrival:
            if not self._arrival.wait_for(lambda: self._arrived >= count, WAIT):
                raise AssertionError(f"only {self._arrived} of {count} tasks arrived")

    def open(self) -> None:
        """Let every held task (and any later one) through."""
        self._open.set()


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A Gate that is opened at teardown, so no worker stays blocked."""
    g = Gate()
    yield g
    g.open()


def assert_settled(queue: TaskQueue, handles: List[TaskHandle]) -> None:
    """Every handle is terminal, the counters agree with them, and join() is free."""
    assert all(h.done() for h in handles), [h for h in handles if not h.done()][:5]
    states = [h.state for h in handles]
    stats = queue.stats()
    assert stats.submitted == len(handles)
    assert stats.succeeded == states.count(TaskState.SUCCEEDED)
    assert stats.failed == states.count(TaskState.FAILED)
    assert stats.cancelled == states.count(TaskState.CANCELLED)
    assert (stats.pending, stats.running) == (0, 0)
    assert queue.join(0)


class FaultyConsumer(MemoryConsumer):
    """A memory consumer that asks its broker's ``fault`` at each settle step."""

    def succeeded(self, message: Any, result: Any) -> None:
        self._broker.fault("before success")  # type: ignore[attr-defined]
        super().succeeded(message, result)
        self._broker.fault("after success")  # type: ignore[attr-defined]

    def failed(self, message: Any, letter: Any) -> None:
        self._broker.fault("before failure")  # type: ignore[attr-defined]
        super().failed(message, letter)


class FaultyBroker(MemoryBroker):
    """The fault seam: a MemoryBroker whose consumers call ``fault(point)`` as they settle.

    ``fault`` raises to make the worker's own code fail there (a bug in
    taskqueue, as far as the worker can tell): ``"before success"``,
    ``"after success"`` or ``"before failure"``.
    """

    def __init__(self, fault: Callable[[str], None]) -> None:
        super().__init__()
        self.fault = fault

    def consumer(self, tally: Any) -> FaultyConsumer:
        return FaultyConsumer(self, tally)


# -- Redis ------------------------------------------------------------------------------

SHARED_REDIS = "redis://127.0.0.1:6379/0"


def redis_missing() -> Optional[str]:
    """Why the Redis tests cannot run here, or None if they can."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'taskqueue[redis]')"
    try:
        redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"no Redis server answers at {SHARED_REDIS} ({type(exc).__name__})"
    return None


def need_redis() -> str:
    """Skip (or, under TASKQUEUE_REQUIRE_REDIS=1, fail) a test that needs Redis."""
    import os

    reason = redis_missing()
    if reason is not None:
        if os.environ.get("TASKQUEUE_REQUIRE_REDIS") == "1":
            pytest.fail(f"TASKQUEUE_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    return SHARED_REDIS


@pytest.fixture
def redis_url() -> str:
    """The shared Redis server's URL (the test skips, or fails under CI, without one)."""
    return need_redis()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own in the shared Redis, emptied afterwards.

    Its keys, and those of namespaces named after it (``<name>-1``), are deleted.
    """
    import uuid

    import redis

    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{{{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
