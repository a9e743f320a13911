"""RedisBroker in one process, against the shared Redis server.

Producers and consumers here are separate TaskQueues, each with a
RedisBroker of its own on one namespace: two processes' worth of state in
one, so each case is exact and fast. What needs real processes (kills,
signals, restarts of Redis) is in test_redis_processes.py.

Skips without Redis at 127.0.0.1:6379; fails instead under
TASKQUEUE_REQUIRE_REDIS=1, as CI runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest

from broker_contract import Harness, eventually
from conftest import WAIT, FakeClock, Gate
from taskqueue import (Backoff, BrokerError, EventKind, QueueBroken, QueueClosed, QueueFull,
                       RedisBroker, Retry, TaskFailed, TaskQueue, TaskState, TaskQueueError)
from taskqueue.brokers import redis_scripts
from taskqueue.brokers.redis import safe_url

pytestmark = pytest.mark.timeout(60)

Make = Callable[..., TaskQueue]


@pytest.fixture
def make(redis_url: str, namespace: str) -> Iterator[Make]:
    """TaskQueues on one namespace of the shared Redis; shut down afterwards."""
    made: List[TaskQueue] = []

    def build(*, consume: bool = False, visibility_timeout: float = 30.0, **options: Any) -> TaskQueue:
        options.setdefault("workers", 2 if consume else 0)
        queue = TaskQueue(broker=RedisBroker(redis_url, namespace=namespace,
                                             visibility_timeout=visibility_timeout), **options)
        made.append(queue)
        return queue

    yield build
    for queue in reversed(made):
        queue.shutdown(cancel_futures=True, timeout=WAIT)


def _register(queue: TaskQueue) -> Any:
    """The tasks these tests use, registered on ``queue`` (as a tasks module would)."""
    tasks = {}

    @queue.task(name="double")
    def double(x: int) -> int:
        return x * 2

    @queue.task(name="boom")
    def boom(reason: str) -> None:
        raise ValueError(reason)

    tasks.update(double=double, boom=boom)
    return tasks


def _worker_threads(queue: TaskQueue) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(queue.name + "-")
            and "results" not in t.name]


# -- what users get ---------------------------------------------------------------------------

def test_redis_broker_is_importable_without_redis_py_and_says_what_to_install() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "import taskqueue\n"
            "from taskqueue import RedisBroker, TaskFailed, BrokerError\n"
            "try:\n"
            "    RedisBroker('redis://127.0.0.1:6379/0')\n"
            "except ImportError as exc:\n"
            "    print(exc)\n"
            "else:\n"
            "    print('constructed')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "pip install 'taskqueue[redis]'" in out.stdout


def test_a_web_process_submits_and_a_worker_elsewhere_runs_it(make: Make) -> None:
    web = make()
    worker = make(consume=True)
    tasks = _register(web)
    _register(worker)
    handle = tasks["double"].submit(21)
    assert _worker_threads(web) == []  # submitting started no consumer here
    worker.start()
    assert handle.result(WAIT) == 42
    assert handle.state is TaskState.SUCCEEDED and handle.attempts == 1


def test_a_broker_url_is_the_broker_with_default_settings(redis_url: str) -> None:
    queue = TaskQueue(broker=redis_url, workers=0)
    try:
        assert isinstance(queue.broker, RedisBroker)
        assert queue.broker.namespace == "taskqueue"
    finally:
        queue.shutdown()
    with pytest.raises(ValueError, match="scheme 'amqp'"):
        TaskQueue(broker="amqp://guest:hunter2@localhost/")


def test_workers_zero_is_for_shared_brokers_only(redis_url: str, namespace: str) -> None:
    with pytest.raises(ValueError, match="workers"):
        TaskQueue(workers=0)  # a local queue with no workers would run nothing
    queue = TaskQueue(broker=RedisBroker(redis_url, namespace=namespace), workers=0)
    try:
        tasks = _register(queue)
        handle = tasks["double"].submit(1)
        assert handle.state is TaskState.PENDING and _worker_threads(queue) == []
    finally:
        queue.shutdown(cancel_futures=True)
    assert handle.cancelled()


def test_bad_broker_parameters_name_themselves(redis_url: str) -> None:
    with pytest.raises(TypeError, match="url"):
        RedisBroker("")
    with pytest.raises(ValueError, match="namespace"):
        RedisBroker(redis_url, namespace="a{b}")
    with pytest.raises(ValueError, match="visibility_timeout"):
        RedisBroker(redis_url, visibility_timeout=-1)
    with pytest.raises(ValueError, match="result_ttl"):
        RedisBroker(redis_url, result_ttl=0)


def test_a_broker_serves_one_queue(redis_url: str, namespace: str) -> None:
    broker = RedisBroker(redis_url, namespace=namespace)
    queue = TaskQueue(broker=broker, workers=0)
    try:
        with pytest.raises(RuntimeError, match="broker of its own"):
            TaskQueue(broker=broker, workers=0)
    finally:
        queue.shutdown()


# -- what cannot cross processes is refused at the call site ----------------------------------

def test_what_cannot_cross_processes_is_refused_and_nothing_is_written(make: Make) -> None:
    queue = make()
    tasks = _register(queue)
    with pytest.raises(TypeError, match="registered"):
        queue.submit(lambda: 1)  # a worker finds tasks by name
    with pytest.raises(TypeError, match="JSON"):
        tasks["double"].submit(object())
    with pytest.raises(TypeError, match="retry_on"):
        tasks["double"].options(retry_on=(KeyError,)).submit(1)
    with pytest.raises(TypeError, match="JSON"):
        tasks["double"].submit({1: "keys that collide", "1": "as strings"})
    assert queue.stats().submitted == 0


# -- outcomes cross processes as data ----------------------------------------------------------

def test_a_failure_elsewhere_raises_task_failed_with_type_message_and_traceback(make: Make) -> None:
    web, worker = make(), make(consume=True)
    tasks = _register(web)
    _register(worker)
    worker.start()
    handle = tasks["boom"].submit("card declined")
    exc = handle.exception(WAIT)
    assert isinstance(exc, TaskFailed) and isinstance(exc, TaskQueueError)
    assert exc.type_name == "ValueError" and exc.message == "card declined"
    assert "raise ValueError(reason)" in exc.traceback
    assert "ValueError: card declined" in str(exc)
    with pytest.raises(TaskFailed):
        handle.result(0)


def test_an_outcome_published_while_the_listener_resubscribes_is_caught_up(
        make: Make, redis_url: str) -> None:
    # The listener's connection drops (Redis restarts, a proxy cuts it). If
    # a task ends before it has subscribed again, the outcome is published to
    # nobody, and the catch-up that follows the subscribe is all that sees
    # it, even when it runs before submit() has returned (a CI failure).
    import redis as redis_py
    observer = redis_py.Redis.from_url(redis_url)
    for round_ in range(5):
        web, worker = make(), make(consume=True)
        tasks = _register(web)
        _register(worker)
        worker.start()
        broker = web.broker
        drop, holding, subscribe_now, caught_up = (threading.Event() for _ in range(4))
        open_pubsub, catch_up, call = broker._client.pubsub, broker._catch_up, broker._call
        opened: List[Any] = []

        def dropped_then_held_pubsub(**kwargs: Any) -> Any:
            pubsub = open_pubsub(**kwargs)
            opened.append(pubsub)
            if len(opened) == 1:  # the first one: dropped when the test says
                get_message = pubsub.get_message

                def dropping_get_message(**kwargs: Any) -> Any:
                    if drop.is_set():
                        raise redis_py.ConnectionError("dropped by the test")
                    return get_message(**kwargs)
                pubsub.get_message = dropping_get_message
            else:  # the next: its subscribe held until the task has ended
                subscribe = pubsub.subscribe

                def held_subscribe(*channels: Any) -> Any:
                    holding.set()
                    assert subscribe_now.wait(WAIT)
                    return subscribe(*channels)
                pubsub.subscribe = held_subscribe
            return pubsub

        def noted_catch_up(*, everything: bool) -> None:
            catch_up(everything=everything)
            if everything and subscribe_now.is_set():
                caught_up.set()

        def enqueue_then_let_the_listener_catch_up(script: str, args: List[Any]) -> Any:
            reply = call(script, args)
            if script == "ENQUEUE":
                result_key = broker._result_key(args[1])
                assert eventually(lambda: observer.exists(result_key))  # published to nobody
                subscribe_now.set()
                assert caught_up.wait(WAIT)
            return reply

        broker._client.pubsub = dropped_then_held_pubsub
        broker._catch_up = noted_catch_up
        broker.open()
        drop.set()
        assert holding.wait(WAIT)
        broker._call = enqueue_then_let_the_listener_catch_up
        handle = tasks["boom"].submit(f"round {round_}")
        assert isinstance(handle.exception(WAIT), TaskFailed)
        web.shutdown()
        worker.shutdown()
    observer.close()


def test_the_first_submit_hears_every_step_of_its_task(make: Make) -> None:
    # The listener has subscribed before the first task is written, so a
    # step that comes at once (a retry's wait) is not missed, only the end.
    for round_ in range(10):
        web, worker = make(), make(consume=True)
        tasks = _register(web)
        _register(worker)
        worker.start()
        retried_later = tasks["boom"].options(retries=1, backoff=Backoff.constant(30))
        handle = retried_later.submit(f"round {round_}")
        assert eventually(lambda: handle.state is TaskState.SCHEDULED), handle.state
        assert not handle.done()
        web.shutdown()
        worker.shutdown(cancel_futures=True)


def test_a_name_the_worker_does_not_know_is_a_dead_letter_saying_so(make: Make) -> None:
    web, worker = make(), make(consume=True)
    only_here = web.task(name="only_in_the_web_process")(lambda: 1)
    worker.start()
    handle = only_here.submit()
    exc = handle.exception(WAIT)
    assert isinstance(exc, TaskFailed) and "no task function named" in str(exc)
    letters = web.dead_letters()
    assert [letter.task_id for letter in letters] == [handle.id]
    assert worker.stats().workers == 2  # the worker did not crash


def test_a_result_that_is_not_json_fails_the_task(make: Make) -> None:
    queue = make(consume=True)
    odd = queue.task(name="odd")(lambda: {1, 2})
    queue.start()
    exc = odd.submit().exception(WAIT)
    assert isinstance(exc, TaskFailed) and exc.type_name == "TypeError"
    assert "JSON" in exc.message


# -- priorities, keys, backpressure --------------------------------------------------------------

def test_priorities_hold_across_every_worker(redis_url: str, namespace: str,
                                            fake_clock: FakeClock) -> None:
    # Two consumers of two brokers (two processes' worth) take turns: each
    # gets the highest priority left, whichever of them asks.
    workers = [Harness(RedisBroker(redis_url, namespace=namespace), fake_clock)
               for _ in range(2)]
    try:
        labels = [(f"p{p}-{i}", p) for i in range(4) for p in (0, 3, 9)]
        for label, priority in labels:
            workers[0].submit(workers[0].echo, label, priority=priority)
        taken = []
        for turn in range(len(labels)):
            worker = workers[turn % 2]
            message = worker.take()
            # Nothing of a higher priority is left waiting for any worker.
            # (An outcome's script takes its worker's next task: the order in
            # which this test sees them may differ from the order taken.)
            waiting = worker.broker.inspect()["pending"]
            assert all(p <= message.priority for p in waiting), (message.args, waiting)
            taken.append(message.args[0])
            worker.run(message)
        assert sorted(taken) == sorted(label for label, _ in labels)
    finally:
        for worker in workers:
            worker.close()


def test_a_unique_key_holds_across_processes(make: Make, gate: Gate) -> None:
    one, two, worker = make(), make(), make(consume=True, workers=1)
    for queue in (one, two):
        queue.task(name="held")(lambda: "done")
    worker.task(name="held")(gate.wait)
    first = one.tasks["held"].options(key="invoice-7").submit()
    second = two.tasks["held"].options(key="invoice-7").submit()
    assert second.id == first.id  # the other process's live task holds the key
    worker.start()
    gate.wait_for_arrivals(1)
    assert two.tasks["held"].options(key="invoice-7").submit().id == first.id
    gate.open()
    assert first.result(WAIT) == second.result(WAIT) == "through"
    third = two.tasks["held"].options(key="invoice-7").submit()
    assert third.id != first.id  # freed once done


def test_a_full_queue_raises_queue_full_after_submit_timeout_and_takes_nothing(make: Make) -> None:
    web = make(maxsize=2, submit_timeout=0.1)
    tasks = _register(web)
    tasks["double"].submit(1)
    tasks["double"].submit(2)
    with pytest.raises(QueueFull):
        tasks["double"].submit(3)
    with pytest.raises(QueueFull):
        web.submit_nowait(tasks["double"], 4)
    assert web.stats().submitted == 2


def test_a_blocked_submit_goes_on_when_a_worker_takes_one(make: Make) -> None:
    web, worker = make(maxsize=1), make(consume=True, workers=1)
    tasks = _register(web)
    _register(worker)
    tasks["double"].submit(1)
    admitted = threading.Event()
    box: List[Any] = []

    def submit() -> None:
        box.append(tasks["double"].submit(2))
        admitted.set()

    threading.Thread(target=submit, daemon=True).start()
    assert not admitted.wait(0.3)  # it waits for room
    worker.start()
    assert admitted.wait(WAIT)
    assert box[0].result(WAIT) == 4


def test_asubmit_never_blocks_the_event_loop(make: Make) -> None:
    web, worker = make(maxsize=1), make(consume=True, workers=1)
    tasks = _register(web)
    _register(worker)
    tasks["double"].submit(1)  # full: the next submit waits for room

    async def main() -> List[Any]:
        loop_ran = asyncio.Event()

        async def meanwhile() -> None:
            loop_ran.set()  # runs only if asubmit yields the loop while it waits
            worker.start()

        waiting = asyncio.ensure_future(web.asubmit(tasks["double"], 5))
        helper = asyncio.ensure_future(meanwhile())
        handle = await asyncio.wait_for(waiting, WAIT)
        await helper
        assert loop_ran.is_set()
        return [await asyncio.wait_for(handle, WAIT)]

    assert asyncio.run(main()) == [10]


# -- retries, delays, dead letters, stats -------------------------------------------------------

def test_retries_wait_in_redis_and_any_worker_runs_them(make: Make, redis_url: str,
                                                        namespace: str) -> None:
    web = make()
    workers = [make(consume=True, workers=1) for _ in range(2)]
    tries = {"n": 0}
    lock = threading.Lock()
    for queue in (web, *workers):
        @queue.task(name="flaky", retries=3)
        def flaky() -> int:
            with lock:
                tries["n"] += 1
                n = tries["n"]
            if n < 3:
                raise Retry(delay=0.2)
            return n
    handle = web.tasks["flaky"].submit()
    for queue in workers:
        queue.start()
    assert eventually(lambda: handle.state is TaskState.SCHEDULED)
    import redis
    client = redis.Redis.from_url(redis_url)
    assert client.zcard("{%s}:delayed" % namespace) == 1  # waiting in Redis, not in a worker
    client.close()
    assert handle.result(WAIT) == 3 and handle.attempts == 3
    assert web.stats().retried == 2


def test_a_delayed_task_waits_in_redis_until_due(make: Make) -> None:
    web, worker = make(), make(consume=True, workers=1)
    tasks = _register(web)
    _register(worker)
    worker.start()
    submitted = time.monotonic()
    handle = tasks["double"].options(delay=0.3).submit(4)
    assert handle.state is TaskState.SCHEDULED
    assert handle.result(WAIT) == 8
    assert time.monotonic() - submitted >= 0.3 * 0.9


def test_dead_letters_live_in_redis_and_every_process_sees_and_requeues_them(make: Make) -> None:
    web, other, worker = make(), make(), make(consume=True)
    switch = {"fail": True}
    for queue in (web, other, worker):
        @queue.task(name="charge")
        def charge(order: int) -> int:
            if switch["fail"]:
                raise ConnectionError("gateway down")
            return order
    worker.start()
    failed = web.tasks["charge"].submit(42)
    failed.exception(WAIT)
    letters = other.dead_letters()
    assert [d.task_id for d in letters] == [failed.id]
    assert letters[0].task.args == (42,) and letters[0].attempts == 1
    assert isinstance(letters[0].exception, TaskFailed)
    assert "gateway down" in str(letters[0].exception) and "ConnectionError" in letters[0].traceback
    switch["fail"] = False
    assert other.requeue(letters[0]).result(WAIT) == 42
    with pytest.raises(ValueError, match="requeued or purged"):
        other.requeue(letters[0])  # once only, whichever process asks
    assert web.dead_letters() == []


def test_a_producer_that_shut_down_still_hears_how_its_tasks_ended(make: Make) -> None:
    # A web process winds down while its tasks wait for a worker: their
    # handles still end (the listener stays for them, then ends).
    for round_ in range(3):
        web, worker = make(), make(consume=True)
        tasks = _register(web)
        _register(worker)
        handles = [tasks["double"].submit(round_ * 10 + i) for i in range(5)]
        web.shutdown()
        worker.start()
        assert [h.result(WAIT) for h in handles] == [2 * (round_ * 10 + i) for i in range(5)]
        assert eventually(lambda: not any(t.name == f"{web.name}-results" and t.is_alive()
                                          for t in threading.enumerate()))
        worker.shutdown()


def test_a_pool_its_initializer_broke_leaves_its_tasks_to_the_other_workers(make: Make) -> None:
    def no_database() -> None:
        raise RuntimeError("no database here")

    broken, worker = make(consume=True, initializer=no_database), make(consume=True)
    tasks = _register(broken)
    _register(worker)
    handles = [tasks["double"].submit(i) for i in range(3)]
    broken.start()

    def refuses() -> bool:  # once the initializer has raised (on the workers' threads)
        try:
            handles.append(tasks["double"].submit(len(handles)))
        except QueueBroken:
            return True
        return False
    assert eventually(refuses)
    worker.start()
    # Run elsewhere, not failed here: every one of them.
    assert [h.result(WAIT) for h in handles] == [2 * i for i in range(len(handles))]
    stats = worker.stats()
    assert (stats.succeeded, stats.failed) == (len(handles), 0)


def test_a_delivery_handed_back_before_it_started_is_not_a_retry(
        redis_url: str, namespace: str, fake_clock: FakeClock) -> None:
    harness = Harness(RedisBroker(redis_url, namespace=namespace), fake_clock)
    try:
        handle = harness.submit(harness.fail, retries=1, backoff=Backoff.none())
        kept = harness.run(harness.take())
        second = kept if kept is not None else harness.take()
        harness.broker._hand_back(second, started=False)  # as a stopping worker does
        again = harness.take()
        assert again.attempts == 2  # the delivery handed back did not count
        harness.run(again)
        assert isinstance(handle.exception(WAIT), TaskFailed)
        assert harness.broker.counts().retried == 1
    finally:
        harness.close()


def test_a_task_this_worker_cannot_read_is_a_dead_letter_not_a_crash(
        redis_url: str, namespace: str, fake_clock: FakeClock) -> None:
    # Written by another version, or by hand: it can never run here, and
    # must not kill each worker thread that takes it.
    import redis as redis_py
    harness = Harness(RedisBroker(redis_url, namespace=namespace), fake_clock)
    client = redis_py.Redis.from_url(redis_url)
    try:
        unreadable = harness.submit(harness.echo, "never")
        key = "{%s}:messages" % namespace
        body = json.loads(client.hget(key, unreadable.id))
        body["options"] = {"backoff": "not a backoff"}
        client.hset(key, unreadable.id, json.dumps(body))
        readable = harness.submit(harness.echo, "fine")
        message = harness.take()
        assert message.args == ("fine",)
        harness.run(message)
        assert readable.result(WAIT) == "fine"
        exc = unreadable.exception(WAIT)
        assert isinstance(exc, TaskFailed) and "cannot be read" in str(exc)
        assert [letter.task_id for letter in harness.broker.dead_letters()] == [unreadable.id]
    finally:
        client.close()
        harness.close()


def test_dead_letters_are_listed_in_the_order_they_failed(make: Make) -> None:
    # One worker fails them in submission order, several in a millisecond:
    # the order holds where their failure times tie.
    web, worker = make(), make(consume=True, workers=1)
    tasks = _register(web)
    _register(worker)
    worker.start()
    handles = [tasks["boom"].submit(f"no {i}") for i in range(40)]
    for handle in handles:
        assert isinstance(handle.exception(WAIT), TaskFailed)
    assert [letter.task_id for letter in web.dead_letters()] == [h.id for h in handles]


def test_stats_count_what_every_process_did(make: Make) -> None:
    one, two = make(), make()
    workers = [make(consume=True), make(consume=True)]
    for queue in (one, two, *workers):
        _register(queue)
    for queue in workers:
        queue.start()
    handles = [one.tasks["double"].submit(i) for i in range(20)]
    handles += [two.tasks["boom"].submit("x") for _ in range(5)]
    for handle in handles:
        handle.exception(WAIT)
    for queue in (one, two, workers[0]):
        stats = queue.stats()
        assert (stats.submitted, stats.succeeded, stats.failed) == (25, 20, 5)
        assert (stats.pending, stats.running, stats.dead_letters) == (0, 0, 5)


def test_time_limits_events_map_and_with_work_in_a_worker(redis_url: str, namespace: str) -> None:
    seen: List[EventKind] = []
    with TaskQueue(broker=RedisBroker(redis_url, namespace=namespace), workers=2) as queue:
        queue.add_listener(lambda event: seen.append(event.kind))

        @queue.task(name="slow", time_limit=0.1)
        def slow() -> None:
            end = time.monotonic() + 5
            while time.monotonic() < end:
                pass

        @queue.task(name="square")
        def square(x: int) -> int:
            return x * x

        queue.start()
        assert list(queue.map(square, range(10))) == [x * x for x in range(10)]
        exc = slow.submit().exception(WAIT)
        assert isinstance(exc, TaskFailed) and exc.type_name.endswith("TimeLimitExceeded")
    assert EventKind.SUCCEEDED in seen and EventKind.FAILED in seen  # in the running process
    with pytest.raises(QueueClosed):
        square.submit(1)


# -- leases, fencing, poison ----------------------------------------------------------------------

def _expire_leases(redis_url: str, namespace: str) -> None:
    # As if the worker holding them had stalled past visibility_timeout.
    import redis
    client = redis.Redis.from_url(redis_url)
    key = "{%s}:leases" % namespace
    for member in client.zrange(key, 0, -1):
        client.zadd(key, {member: 1})
    client.close()


def test_a_late_ack_after_a_lease_was_taken_over_is_fenced_and_logged(
        make: Make, gate: Gate, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    web = make()
    stalled = make(consume=True, workers=1, visibility_timeout=0.4)
    healthy = make(consume=True, workers=1, visibility_timeout=0.4)
    web.task(name="pay")(lambda: None)
    runs: List[str] = []

    def pay_stalled() -> str:
        runs.append("stalled")
        gate.wait()
        return "stalled"

    def pay_healthy() -> str:
        runs.append("healthy")
        return "healthy"

    stalled.task(name="pay")(pay_stalled)
    healthy.task(name="pay")(pay_healthy)
    # A stalled process renews nothing (as if SIGSTOPped): its lease runs out.
    monkeypatch.setattr(stalled.broker, "_renew", lambda: None)
    handle = web.tasks["pay"].submit()
    stalled.start()
    gate.wait_for_arrivals(1)
    healthy.start()
    assert handle.result(WAIT) == "healthy"  # the lease was taken over, the task re-run
    caplog.set_level(logging.WARNING, logger="taskqueue")
    gate.open()  # the stalled run ends, and reports late
    assert eventually(lambda: "lease was taken over" in caplog.text)
    assert runs == ["stalled", "healthy"]
    assert handle.result(0) == "healthy"
    stats = web.stats()
    assert (stats.succeeded, stats.failed, stats.running) == (1, 0, 0)


def test_a_long_task_is_never_handed_out_twice_while_its_worker_lives(make: Make) -> None:
    web = make()
    workers = [make(consume=True, workers=1, visibility_timeout=0.3) for _ in range(2)]
    runs: List[int] = []
    web.task(name="long")(lambda: None)
    for queue in workers:
        @queue.task(name="long")
        def long() -> int:
            runs.append(1)
            threading.Event().wait(1.2)  # the work: four leases long
            return len(runs)
    for queue in workers:
        queue.start()
    assert web.tasks["long"].submit().result(WAIT) == 1
    assert runs == [1]


def test_a_task_delivered_past_retries_plus_two_is_a_dead_letter(
        redis_url: str, namespace: str, fake_clock: FakeClock) -> None:
    harness = Harness(RedisBroker(redis_url, namespace=namespace), fake_clock)
    try:
        handle = harness.submit(harness.echo, 1, retries=1)
        for delivery in (1, 2, 3):  # retries + 2 deliveries, each one dying in the task
            message = harness.take()
            assert message.attempts == delivery
            harness.consumer.crashed()
        assert harness.broker._fetch(harness.consumer) is None  # the next delivery is buried, not run
        exc = handle.exception(WAIT)
        assert isinstance(exc, TaskFailed) and "delivered 3 times" in str(exc)
        assert [d.task_id for d in harness.broker.dead_letters()] == [handle.id]
    finally:
        harness.close()


# -- bounded bookkeeping, keys -----------------------------------------------------------------

def _keys_without_ttl(redis_url: str, namespace: str) -> List[str]:
    import redis
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.scan_iter(match="{%s}:*" % namespace, count=1000)]
    lasting = sorted(k for k in keys if client.ttl(k) == -1)
    client.close()
    return lasting


def test_keys_without_a_ttl_are_the_same_after_10000_tasks_as_after_100(
        make: Make, redis_url: str, namespace: str) -> None:
    web = make(maxsize=0)
    worker = make(consume=True, workers=4)
    tasks = _register(web)
    _register(worker)
    worker.start()
    web.every(0.05, tasks["double"], 1)  # periodic ticks write keys too

    def run(n: int) -> None:
        handles = [tasks["double"].submit(i) if i % 10 else tasks["boom"].submit("x")
                   for i in range(n)]
        for handle in handles:
            handle.exception(WAIT)

    run(100)
    after_100 = _keys_without_ttl(redis_url, namespace)
    run(10_000)
    after_10000 = _keys_without_ttl(redis_url, namespace)
    assert after_10000 == after_100
    structural = {"{%s}:%s" % (namespace, name) for name in redis_scripts.STRUCTURAL}
    assert set(after_10000) <= structural
    ttls = []
    import redis
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match="{%s}:result:*" % namespace, count=1000):
        ttls.append(client.ttl(key))
    client.close()
    assert ttls and all(0 < ttl <= 86400 for ttl in ttls)


def test_scripts_declare_one_hash_tag_and_use_no_keys_or_scan() -> None:
    for name in redis_scripts.__all__:
        script = getattr(redis_scripts, name)
        if not isinstance(script, str):
            continue
        upper = script.upper()
        assert "'KEYS'" not in upper and "'SCAN'" not in upper, name
        assert "redis.call('KEYS" not in script and "redis.call('SCAN" not in script


# -- Redis faults and secrets -------------------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_with_redis_down_submit_raises_broker_error_naming_the_server_quickly() -> None:
    need_redis_py()
    port = _free_port()  # nothing listens there
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    queue = TaskQueue(broker=RedisBroker(url, socket_timeout=1.0), workers=0)
    try:
        task = queue.task(name="x")(lambda: 1)
        started = time.monotonic()
        with pytest.raises(BrokerError) as caught:
            task.submit()
        assert time.monotonic() - started < 10
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert queue.broker.wait_idle(0)  # nothing of it is left waiting here
    finally:
        queue.shutdown()


def need_redis_py() -> None:
    pytest.importorskip("redis")


def test_safe_url_hides_every_password() -> None:
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert safe_url("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert safe_url("rediss://user:s3cret@h/0") == "rediss://user:***@h/0"
    masked = safe_url("redis://h/0?password=s3cret&db=1")
    assert "s3cret" not in masked and "db=1" in masked
