"""RedisBroker across real processes: ``python -m taskqueue worker`` on a real Redis.

Worker processes run ``tests/redis_app.py``'s queue; this process submits
to the same namespace with a producer-only queue. The tasks tell the test
what they did through Redis lists, which the test waits on with blocking
pops (never a sleep). Tests that kill or restart Redis use a private
redis-server (``tests/redis_processes.py``); the others use the shared one.

Skips without Redis; fails instead under TASKQUEUE_REQUIRE_REDIS=1 (CI).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional, Set, Tuple

import pytest

from broker_contract import eventually
from conftest import WAIT
from redis_processes import ROOT, TESTS, PrivateRedis, Workers
from taskqueue import BrokerError, RedisBroker, TaskFailed, TaskQueue, TaskState

pytestmark = pytest.mark.timeout(120)

TASK_NAMES = ("noop", "record", "hold", "spin", "fail", "tick")


def producer(url: str, namespace: str, **options: Any) -> TaskQueue:
    """A web process's queue: the tasks module's names, submit only."""
    options.setdefault("maxsize", 0)
    queue = TaskQueue(broker=RedisBroker(url, namespace=namespace, socket_timeout=2.0),
                      workers=0, **options)
    for name in TASK_NAMES:
        queue.task(name=name)(_never_here)
    return queue


def _never_here(*args: Any) -> None:  # pragma: no cover - the workers run the tasks
    raise AssertionError("a producer-only queue ran a task")


def log_key(namespace: str, name: str) -> str:
    return "{%s}-log:%s" % (namespace, name)


def pop(client: Any, namespace: str, name: str, timeout: float = WAIT) -> str:
    """The next entry of a test log, waiting for it; fails the test if none comes."""
    found = client.blpop([log_key(namespace, name)], timeout=timeout)
    assert found is not None, f"nothing came in the {name} log within {timeout}s"
    return found[1].decode()


def entries(client: Any, namespace: str, name: str) -> List[str]:
    return [e.decode() for e in client.lrange(log_key(namespace, name), 0, -1)]


def wait_for_workers(queue: TaskQueue, count: int) -> None:
    assert eventually(lambda: len(queue.broker.workers()) >= count), "workers did not start"


@pytest.fixture
def shared(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[Tuple[Workers, TaskQueue, Any]]:
    """Workers, a producer and a client on the shared Redis, in this test's namespace."""
    import redis

    workers = Workers(redis_url, namespace, tmp_path / "logs")
    queue = producer(redis_url, namespace)
    client = redis.Redis.from_url(redis_url, socket_timeout=WAIT + 10)  # blocking pops
    yield workers, queue, client
    workers.kill_all()
    queue.shutdown(cancel_futures=True, timeout=1)  # a held task may be left running
    client.close()


# -- many workers, exact accounting -------------------------------------------------------------

def test_ten_thousand_tasks_over_three_worker_processes_each_run_once(shared: Any,
                                                                       namespace: str) -> None:
    workers, queue, client = shared
    for _ in range(3):
        workers.spawn(threads=4)
    wait_for_workers(queue, 3)
    handles = [queue.tasks["record"].submit(i) for i in range(10_000)]
    assert [h.result(WAIT) for h in handles] == list(range(10_000))
    runs = entries(client, namespace, "runs")
    assert sorted(int(r.split(":")[0]) for r in runs) == list(range(10_000))  # once each
    assert len({r.split(":")[1] for r in runs}) == 3  # every process took a share
    stats = queue.stats()
    assert (stats.submitted, stats.succeeded, stats.failed, stats.cancelled) == (10_000, 10_000, 0, 0)
    assert (stats.pending, stats.running, stats.dead_letters) == (0, 0, 0)
    assert workers.stop_all() == [0, 0, 0]


# -- crashes, stalls, stops ----------------------------------------------------------------------

def test_a_worker_killed_mid_task_has_its_task_run_again_elsewhere(shared: Any,
                                                                    namespace: str) -> None:
    workers, queue, client = shared
    workers._env["TQ_TEST_VISIBILITY"] = "1"
    for _ in range(2):
        workers.spawn(threads=1)
    wait_for_workers(queue, 2)
    for round_ in range(3):
        handle = queue.tasks["hold"].submit(f"job{round_}")
        tag, pid = pop(client, namespace, "started").split(":")
        os.kill(int(pid), signal.SIGKILL)
        again_tag, again_pid = pop(client, namespace, "started").split(":")
        assert again_tag == tag and again_pid != pid  # re-run once its lease ran out
        client.rpush(log_key(namespace, "release:" + tag), "go")
        assert handle.result(WAIT) == tag and handle.attempts == 2
        workers.spawn(threads=1)  # the killed one's replacement
    assert queue.stats().succeeded == 3


def test_a_task_handed_to_a_worker_that_just_died_runs_elsewhere_soon_uncounted(
        shared: Any, namespace: str) -> None:
    # A process SIGKILLed while its threads wait leaves them noted as
    # waiting for a moment; a task handed to one then goes back within
    # seconds (not after its 30 s lease), and that delivery does not count.
    workers, queue, client = shared
    for round_ in range(3):
        doomed, _ = workers.spawn(threads=2), workers.spawn(threads=2)
        idle = "{%s}:idle" % namespace
        assert eventually(lambda: client.zcard(idle) == 4)  # every thread waits
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        # Four waiters (two dead, two live) take one each; the live ones hold
        # theirs until released, so the dead ones' tasks must come back.
        tags = [f"r{round_}-{i}" for i in range(4)]
        handles = [queue.tasks["hold"].submit(tag) for tag in tags]
        started = [pop(client, namespace, "started").split(":")[0] for _ in range(2)]
        for tag in tags:
            client.rpush(log_key(namespace, "release:" + tag), "go")
        assert sorted(h.result(15) for h in handles) == sorted(tags)  # lease: 30 s
        assert all(h.attempts == 1 for h in handles), [h.attempts for h in handles]
        assert set(started) <= set(tags)
        workers.stop_all()
        client.delete(log_key(namespace, "started"))  # the two that ran late said so too
    assert queue.stats().retried == 0


def test_a_worker_stopped_past_its_lease_is_fenced_when_it_resumes(shared: Any,
                                                                   namespace: str) -> None:
    workers, queue, client = shared
    workers._env["TQ_TEST_VISIBILITY"] = "1"
    first, second = workers.spawn(threads=1), workers.spawn(threads=1)
    wait_for_workers(queue, 2)
    handle = queue.tasks["hold"].submit("pay")
    tag, pid = pop(client, namespace, "started").split(":")
    stopped = first if int(pid) == first.pid else second
    stopped.send_signal(signal.SIGSTOP)
    try:
        _, again_pid = pop(client, namespace, "started").split(":")  # the lease is taken over
        assert int(again_pid) != stopped.pid
        # One release each: Redis hands the first to the stopped run, blocked first.
        client.rpush(log_key(namespace, "release:pay"), "go", "go")
        assert handle.result(WAIT) == "pay"
    finally:
        stopped.send_signal(signal.SIGCONT)  # the stopped run ends, late
    assert eventually(lambda: "lease was taken over" in workers.log(stopped))
    assert entries(client, namespace, "runs") == [f"pay:{again_pid}", f"pay:{stopped.pid}"]
    stats = queue.stats()
    assert (stats.succeeded, stats.failed, stats.running) == (1, 0, 0)  # one outcome, the owner's
    assert workers.stop_all() == [0, 0]


def test_sigterm_lets_the_running_task_finish_takes_nothing_new_and_exits_0(
        shared: Any, namespace: str) -> None:
    workers, queue, client = shared
    worker = workers.spawn(threads=1)
    wait_for_workers(queue, 1)
    running = queue.tasks["hold"].submit("a")
    pop(client, namespace, "started")
    waiting = queue.tasks["record"].submit(1)
    worker.send_signal(signal.SIGTERM)
    assert eventually(lambda: "stopping" in workers.log(worker))
    client.rpush(log_key(namespace, "release:a"), "go")
    assert worker.wait(WAIT) == 0
    assert running.result(WAIT) == "a"  # finished and acknowledged before the exit
    assert waiting.state is TaskState.PENDING  # never fetched by the stopping worker
    workers.spawn(threads=1)
    assert waiting.result(WAIT) == 1


def test_past_the_grace_period_a_running_task_is_handed_back_at_once(shared: Any,
                                                                     namespace: str) -> None:
    workers, queue, client = shared
    # A lease far longer than the test: only a hand-back lets another worker start it.
    workers._env["TQ_TEST_VISIBILITY"] = "300"
    worker = workers.spawn("--grace", "0.2", threads=1)
    wait_for_workers(queue, 1)
    handle = queue.tasks["hold"].submit("b")
    pop(client, namespace, "started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(WAIT) == 0
    assert "handed back" in workers.log(worker)
    workers.spawn(threads=1)
    assert pop(client, namespace, "started").startswith("b:")
    client.rpush(log_key(namespace, "release:b"), "go", "go")
    assert handle.result(WAIT) == "b" and handle.attempts == 2


def test_a_second_signal_stops_the_worker_at_once(shared: Any, namespace: str) -> None:
    workers, queue, client = shared
    worker = workers.spawn(threads=1)
    wait_for_workers(queue, 1)
    queue.tasks["hold"].submit("c")
    pop(client, namespace, "started")
    worker.send_signal(signal.SIGTERM)
    assert eventually(lambda: "stopping" in workers.log(worker))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(WAIT) == 130


def test_a_crash_loop_never_loses_an_acknowledged_task(shared: Any, namespace: str) -> None:
    workers, queue, client = shared
    workers._env["TQ_TEST_VISIBILITY"] = "1"
    for _ in range(3):
        workers.spawn(threads=2)
    wait_for_workers(queue, 3)
    rng = random.Random(20261202)
    handles, submitted, seen = [], [], set()
    for round_ in range(20):
        for i in range(15):
            submitted.append(round_ * 100 + i)
            handles.append(queue.tasks["spin"].submit(submitted[-1], rng.random() * 0.02))
        for _ in range(rng.randint(1, 8)):  # some of this round start, then a worker dies
            seen.add(int(pop(client, namespace, "started").split(":")[0]))
        victim = rng.choice(workers.alive())
        victim.kill()
        victim.wait()
        workers.spawn(threads=2)
    for handle in handles:
        handle.exception(60)
    started = seen | {int(e.split(":")[0]) for e in entries(client, namespace, "started")}
    assert started == set(submitted)  # every acknowledged task ran at least once
    for handle in handles:
        if handle.state is TaskState.FAILED:  # killed past retries + 2 deliveries
            assert "delivered" in str(handle.exception(0))
        else:
            assert handle.state is TaskState.SUCCEEDED
    stats = queue.stats()
    assert stats.submitted == len(handles) == stats.succeeded + stats.failed
    assert (stats.pending, stats.running) == (0, 0)


# -- Redis restarts --------------------------------------------------------------------------------

def test_a_redis_restart_with_persistence_loses_no_acknowledged_task(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", persistent=True)
    server.start()
    namespace = "restart"
    workers = Workers(server.url, namespace, tmp_path / "logs",
                      env={"TQ_TEST_VISIBILITY": "2"})
    queue = producer(server.url, namespace)
    try:
        for _ in range(2):
            workers.spawn(threads=2)
        wait_for_workers(queue, 2)
        acknowledged, refused = _submit_through_a_restart(queue, server)
        assert refused, "no submit met the outage: the restart was not while tasks flowed"
        results = [h.result(60) for h in acknowledged]  # producers' handles resolve after it
        client = server.client()
        ran = {int(e.split(":")[0]) for e in entries(client, namespace, "runs")}
        client.close()
        assert {r for r in results} <= ran and len(results) == len(acknowledged)
        assert all(p.poll() is None for p in workers.processes)  # workers survived it
        assert all("is back" in workers.log(p) for p in workers.processes)  # logged, went on
        assert workers.stop_all() == [0, 0]
    finally:
        workers.kill_all()
        queue.shutdown(cancel_futures=True, timeout=5)
        server.kill()


def test_a_task_redis_lost_in_a_restart_without_persistence_fails_its_handle(
        tmp_path: Path) -> None:
    # Nothing lost means every handle ends: one whose task Redis no longer
    # holds (nor its outcome) fails, naming what happened, rather than
    # waiting for ever; one submitted after the restart runs as usual.
    server = PrivateRedis(tmp_path / "redis", persistent=False)
    server.start()
    queue = producer(server.url, "lost")
    try:
        for round_ in range(3):
            lost = [queue.tasks["record"].submit(round_ * 10 + i) for i in range(5)]
            keyed = queue.tasks["record"].submit(round_, key=f"only-one-{round_}")
            server.kill()
            server.start()
            for handle in lost + [keyed]:
                exc = handle.exception(WAIT)
                assert isinstance(exc, BrokerError) and "is lost" in str(exc), exc
                assert handle.state is TaskState.FAILED
            again = queue.tasks["record"].submit(round_, key=f"only-one-{round_}")
            assert again is not keyed and again.state is TaskState.PENDING  # the key is free
            client = server.client()
            assert client.hlen("{lost}:messages") == 1  # taken in, waiting for a worker
            client.close()
            assert not again.done()  # not mistaken for lost: Redis holds it
    finally:
        queue.shutdown(cancel_futures=True, timeout=5)
        server.kill()


def _submit_through_a_restart(queue: TaskQueue, server: PrivateRedis) -> Tuple[List[Any], int]:
    acknowledged: List[Any] = []
    refused = 0
    record = queue.tasks["record"]
    for i in range(300):
        acknowledged.append(record.submit(i))
    server.kill()
    for i in range(300, 310):
        try:
            acknowledged.append(record.submit(i))
        except BrokerError as exc:
            assert "127.0.0.1" in str(exc)
            refused += 1
    server.start()
    for i in range(310, 600):
        acknowledged.append(record.submit(i))
    return acknowledged, refused


def test_passwords_never_reach_a_log_line(tmp_path: Path) -> None:
    secret = "pw-" + os.urandom(6).hex()
    server = PrivateRedis(tmp_path / "redis", persistent=False, password=secret)
    server.start()
    workers = Workers(server.url, "secret", tmp_path / "logs")
    queue = producer(server.url, "secret")
    try:
        worker = workers.spawn("--log-level", "debug", threads=1)
        wait_for_workers(queue, 1)
        assert queue.tasks["record"].submit(1).result(WAIT) == 1
        server.kill()  # an outage: the worker logs it, with the server's URL
        server.start()
        assert eventually(lambda: "is back" in workers.log(worker), timeout=30)
        assert queue.tasks["record"].submit(2).result(WAIT) == 2
        assert workers.stop_all() == [0]
        log = workers.log(worker)
        assert f"127.0.0.1:{server.port}" in log and ":***@" in log
        assert secret not in log
    finally:
        workers.kill_all()
        queue.shutdown(cancel_futures=True, timeout=5)
        server.kill()


# -- periodic runs ---------------------------------------------------------------------------------

def skipped_ticks(log: str) -> Set[int]:
    """The ticks a worker's debug log says it skipped (its last run not done, or its timer late)."""
    skipped = {int(n) for n in re.findall(r"skipped tick (\d+):", log)}
    for first, last in re.findall(r"skipped ticks (\d+) to (\d+):", log):
        skipped.update(range(int(first), int(last) + 1))
    return skipped


def test_each_tick_fires_once_across_three_workers_and_none_is_lost_when_one_dies(
        shared: Any, namespace: str, redis_url: str) -> None:
    workers, queue, client = shared
    workers._env.update(TQ_TEST_EVERY="0.2", TQ_TEST_VISIBILITY="1")
    for _ in range(3):
        workers.spawn("--log-level", "debug", threads=2)
    wait_for_workers(queue, 3)
    for _ in range(5):
        pop(client, namespace, "ticks")
    victim, *survivors = workers.processes
    victim.kill()
    victim.wait()
    for _ in range(5):
        pop(client, namespace, "ticks")
    assert workers.stop_all() == [0, 0]
    claims = sorted(int(k.decode().rsplit(":", 1)[1])
                    for k in client.scan_iter(match="{%s}:tick:*" % namespace))
    # No tick lost, the death included: a tick nobody claimed is one every
    # survivor skipped, because the run it submitted last was not done yet
    # (the victim may have died holding it: it is run again once its lease
    # expires), or because its timer was held up.
    unclaimed = set(range(claims[0], claims[-1] + 1)) - set(claims)
    for survivor in survivors:
        assert unclaimed <= skipped_ticks(workers.log(survivor))
    ran = 10 + len(entries(client, namespace, "ticks"))  # ten were popped above
    # Still alive as the workers stopped: claimed then, or held by the victim
    # when it died and not yet taken back (its lease had not run out).
    not_run = client.hlen("{%s}:messages" % namespace)
    # One run per claimed tick: no duplicate. Each of the victim's two threads
    # may have been cut short after its run noted itself, so that run is
    # counted twice (it ran again) or is both counted and still alive.
    assert len(claims) - not_run <= ran <= len(claims) - not_run + 2


# -- producers ------------------------------------------------------------------------------------

def test_a_producer_only_process_exits_at_once_and_fires_no_periodic_run(
        redis_url: str, namespace: str) -> None:
    import redis

    code = ("import redis_app\n"
            "handle = redis_app.record.submit(7)\n"
            "print(handle.id)\n")
    env = dict(os.environ, TQ_TEST_URL=redis_url, TQ_TEST_NAMESPACE=namespace,
               TQ_TEST_EVERY="0.05", PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    out = subprocess.run([sys.executable, "-c", code], cwd=str(TESTS), env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zcard("{%s}:ready" % namespace) == 1  # still waiting for a worker
        assert list(client.scan_iter(match="{%s}:tick:*" % namespace)) == []
    finally:
        client.close()
