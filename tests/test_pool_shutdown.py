"""Nothing is lost: shutdown in every mode, dead workers, many producers, leaks."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import random
import threading
import time
import tracemalloc
import weakref
from typing import Any, Callable, List

import pytest

import taskqueue
from conftest import WAIT, FaultyBroker, Gate, assert_settled
from taskqueue import (Backoff, EventKind, Retry, Task, TaskHandle, TaskQueue, TaskState,
                       TimeLimitExceeded)



# -- 4. shutdown, every mode ------------------------------------------------------


def test_default_shutdown_drains_everything_including_pending_retries() -> None:
    queue = TaskQueue(workers=2, retries=2, backoff=Backoff.constant(0.05))
    calls: List[int] = []

    def flaky(i: int) -> int:
        calls.append(i)
        if calls.count(i) < 2:
            raise ConnectionError(i)
        return i

    handles = [queue.submit(flaky, i) for i in range(20)]
    queue.shutdown()
    assert [h.result(0) for h in handles] == list(range(20))
    assert_settled(queue, handles)


def test_cancel_futures_cancels_everything_not_running(gate: Gate) -> None:
    queue = TaskQueue(workers=2, retries=3, backoff=Backoff.constant(30))
    running = [queue.submit(gate.wait) for _ in range(2)]
    gate.wait_for_arrivals(2)
    queued = [queue.submit(abs, -i) for i in range(10)]
    stopper = threading.Thread(target=queue.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    # cancelled while the running ones still run (held at the gate)
    done, _ = cf.wait(queued, timeout=WAIT)
    assert len(done) == len(queued) and all(h.cancelled() for h in queued)
    assert all(h.running() for h in running)
    gate.open()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert [h.result(0) for h in running] == ["through", "through"]
    assert all(h.state is TaskState.CANCELLED for h in queued)
    assert_settled(queue, running + queued)


def test_cancel_futures_cancels_scheduled_retries() -> None:
    queue = TaskQueue(workers=1, retries=3, backoff=Backoff.constant(60))
    retrying = threading.Event()
    queue.add_listener(lambda e: e.kind.value == "retrying" and retrying.set())
    handle = queue.submit(lambda: 1 / 0)
    assert retrying.wait(WAIT)
    assert handle.state is TaskState.SCHEDULED
    queue.shutdown(cancel_futures=True)
    assert handle.state is TaskState.CANCELLED
    assert_settled(queue, [handle])


def test_shutdown_with_timeout_cancels_what_has_not_started_and_returns(gate: Gate) -> None:
    queue = TaskQueue(workers=1)
    running = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queued = [queue.submit(abs, i) for i in range(5)]
    stopper = threading.Thread(target=queue.shutdown, kwargs={"timeout": 0.1})
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive()  # returned while a task still runs
    assert running.running()
    assert all(h.cancelled() for h in queued)
    gate.open()
    assert running.result(WAIT) == "through"
    assert_settled(queue, [running] + queued)


def test_shutdown_without_wait_returns_at_once_and_still_drains(gate: Gate) -> None:
    queue = TaskQueue(workers=1)
    first = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    rest = [queue.submit(abs, -i) for i in range(10)]
    queue.shutdown(wait=False)
    assert not first.done()
    gate.open()
    assert [h.result(WAIT) for h in rest] == list(range(10))
    queue.shutdown()  # a second call waits for the wind-down and is harmless
    assert_settled(queue, [first] + rest)


def test_shutdown_is_idempotent_and_safe_from_many_threads() -> None:
    queue = TaskQueue(workers=2)
    handles = [queue.submit(abs, -i) for i in range(100)]
    threads = [threading.Thread(target=queue.shutdown, kwargs={"cancel_futures": i % 2 == 0})
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    queue.shutdown()
    assert_settled(queue, handles)


def test_shutdown_from_a_worker_does_not_wait_for_itself() -> None:
    queue = TaskQueue(workers=1)
    handle = queue.submit(queue.shutdown)
    assert handle.result(WAIT) is None
    queue.shutdown()
    assert_settled(queue, [handle])


@pytest.mark.timeout(120)
def test_random_shutdowns_under_load_lose_nothing() -> None:
    # Producers race a shutdown in a random mode at a random moment, with a
    # mix of tasks that succeed, fail, retry and ask for retries.
    rng = random.Random(20261125)
    for round_ in range(40):
        queue = TaskQueue(workers=rng.choice([1, 2, 4]), maxsize=rng.choice([0, 1, 8, 64]),
                          retries=2, backoff=Backoff.constant(rng.choice([0.0, 0.001, 0.01])))
        handles: List[TaskHandle] = []
        lock = threading.Lock()

        def body(kind: int) -> int:
            if kind == 1:
                raise ValueError("always")
            if kind == 2 and rng.random() < 0.5:
                raise Retry()
            return kind

        def produce(count: int) -> None:
            for _ in range(count):
                try:
                    handle = queue.submit(body, rng.randrange(3))
                except RuntimeError:  # QueueClosed: the shutdown won the race
                    return
                with lock:
                    handles.append(handle)

        producers = [threading.Thread(target=produce, args=(rng.randrange(50, 300),)) for _ in range(3)]
        for p in producers:
            p.start()
        mode = rng.choice(["drain", "cancel", "timeout", "nowait"])
        if mode == "drain":
            queue.shutdown()
        elif mode == "cancel":
            queue.shutdown(cancel_futures=True)
        elif mode == "timeout":
            queue.shutdown(timeout=rng.choice([0.0, 0.001, 0.01]))
        else:
            queue.shutdown(wait=False)
        for p in producers:
            p.join(WAIT)
        for handle in handles:
            try:
                handle.exception(WAIT)
            except Exception:
                pass  # cancelled
        queue.shutdown()
        assert_settled(queue, handles)
        assert queue.join(0), f"round {round_} ({mode})"


# -- 3. at-least-once: a worker that dies mid-acknowledgement ------------------------------


class CrashingAcks:
    """A fault that fails the worker's code every ``every``-th settle (before it happens)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.acks = 0
        self._lock = threading.Lock()

    def __call__(self, point: str) -> None:
        if not point.startswith("before"):
            return
        with self._lock:
            self.acks += 1
            crash = self.acks % self.every == 1
        if crash:
            raise RuntimeError("injected fault between the task and its acknowledgement")


def crashing_acks(*, every: int, **kwargs: Any) -> TaskQueue:
    """A queue on the fault seam whose worker fails every ``every``-th settle."""
    return TaskQueue(broker=FaultyBroker(CrashingAcks(every)), **kwargs)


def test_a_task_whose_worker_dies_runs_again_on_a_replacement() -> None:
    # Given a one-worker queue whose first acknowledgement fails
    queue = crashing_acks(workers=1, every=1_000_000, name="fragile")
    threads: List[threading.Thread] = []

    def record() -> int:
        threads.append(threading.current_thread())
        return threading.get_ident()

    # When a task runs and its worker dies before acknowledging it
    handle = queue.submit(record)
    # Then the task runs again, on a new thread that took the dead one's place
    assert handle.result(WAIT) == threads[-1].ident
    assert len(threads) == 2 and threads[0] is not threads[1]
    assert handle.attempts == 2
    assert [t.name for t in threads] == ["fragile-worker-0", "fragile-worker-0"]
    threads[0].join(WAIT)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("fragile-worker-")]
    assert alive == ["fragile-worker-0"]
    assert queue.submit(abs, -1).result(WAIT) == 1  # the pool still works
    queue.shutdown()
    assert queue.stats().retried == 1
    assert queue.stats().succeeded == 2


@pytest.mark.timeout(60)
def test_injected_faults_never_drop_a_task() -> None:
    for _ in range(5):
        queue = crashing_acks(workers=3, every=7, retries=1, backoff=Backoff.none())
        ran: List[int] = []
        lock = threading.Lock()

        def work(i: int) -> int:
            with lock:
                ran.append(i)
            if i % 5 == 0 and ran.count(i) == 1:
                raise ConnectionError(i)
            return i

        handles = [queue.submit(work, i) for i in range(300)]
        queue.shutdown()
        assert [h.result(0) for h in handles] == list(range(300))
        assert set(ran) == set(range(300))  # at least once
        assert len(ran) > 300  # and some more than once: the faults happened
        assert_settled(queue, handles)


# -- 7. thread safety ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_eight_producers_ten_thousand_tasks_each_counters_exact() -> None:
    queue = TaskQueue(workers=4, maxsize=256, retries=1, backoff=Backoff.none())
    handles: List[List[TaskHandle]] = [[] for _ in range(8)]
    start = threading.Barrier(9)
    seen_bad = []

    def body(n: int) -> int:
        if n % 10 == 3 and n % 20 != 3:
            raise ValueError(n)  # 1 in 20 fails on both attempts
        return n

    def produce(index: int) -> None:
        start.wait()
        for n in range(10_000):
            handles[index].append(queue.submit(body, n))

    def watch() -> None:
        while not all(len(h) == 10_000 for h in handles):
            s = queue.stats()
            if s.pending < 0 or s.submitted < s.succeeded + s.failed + s.cancelled:
                seen_bad.append(s)
            if queue.join(timeout=0.005):
                pass

    producers = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    watcher = threading.Thread(target=watch)
    for t in producers:
        t.start()
    watcher.start()
    start.wait()
    for t in producers:
        t.join(WAIT * 5)
    watcher.join(WAIT)
    assert queue.join(WAIT)
    flat = [h for hs in handles for h in hs]
    assert len(flat) == 80_000 and not seen_bad
    assert_settled(queue, flat)
    stats = queue.stats()
    assert stats.failed == 8 * 500 == len(queue.dead_letters())
    assert stats.succeeded == 80_000 - 4_000
    assert all(h.result() == n for hs in handles for n, h in enumerate(hs) if n % 20 != 13)
    queue.shutdown()


def test_cancel_races_with_workers_and_counts_once() -> None:
    for _ in range(20):
        queue = TaskQueue(workers=2)
        handles = [queue.submit(abs, i) for i in range(500)]
        cancelled = [h.cancel() for h in reversed(handles)]
        queue.shutdown()
        assert_settled(queue, handles)
        assert queue.stats().cancelled == sum(cancelled)


# -- 8. no leaks ------------------------------------------------------------------------


class Payload:
    pass


def test_terminal_tasks_release_function_arguments_and_results() -> None:
    queue = TaskQueue(workers=2, retries=1, backoff=Backoff.none())
    refs = []

    def make(i: int) -> Callable[[Payload], Payload]:
        def task(arg: Payload) -> Payload:
            if i % 3 == 0 and not hasattr(arg, "seen"):
                arg.seen = True  # type: ignore[attr-defined]
                raise ConnectionError  # one retry
            return Payload()
        return task

    kept = []
    for i in range(300):
        fn, arg = make(i), Payload()
        refs.append((weakref.ref(fn), weakref.ref(arg)))
        handle = queue.submit(fn, arg)
        if i % 2:
            kept.append(handle)  # kept handles keep only their results
        del fn, arg, handle
    assert queue.join(WAIT)
    gc.collect()
    assert all(fn() is None and arg() is None for fn, arg in refs)
    results = [weakref.ref(h.result()) for h in kept]
    del kept
    gc.collect()
    assert all(r() is None for r in results)
    queue.shutdown()


@pytest.mark.timeout(120)
def test_memory_stays_flat_over_two_hundred_thousand_discarded_handles() -> None:
    queue = TaskQueue(workers=4, maxsize=1024)
    # What the queue's own code holds: not what other threads of the test
    # process (an earlier test's Redis listener) allocate meanwhile.
    package = os.path.dirname(taskqueue.__file__)
    mine = [tracemalloc.Filter(True, os.path.join(package, "*")),
            tracemalloc.Filter(False, os.path.join(package, "brokers", "redis*"))]
    tracemalloc.start()
    try:
        for i in range(30_000):  # warm up, traced: the stats windows fill up
            queue.submit(abs, i)
        assert queue.join(WAIT)
        gc.collect()
        before = tracemalloc.take_snapshot().filter_traces(mine)
        for i in range(200_000):
            queue.submit(abs, i)
        assert queue.join(WAIT * 3)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(mine)
    finally:
        tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    queue.shutdown()
    assert growth < 64 * 1024, f"grew by {growth} bytes over 200,000 tasks"


# -- the Hardening issue: shutdown from the queue's own threads, and after a timeout ---------


@pytest.mark.timeout(30)
def test_shutdown_from_a_done_callback_on_the_timer_thread_does_not_deadlock() -> None:
    # A task blocked in C past its time limit is abandoned on the timer's
    # thread, and its done callbacks run there. shutdown() from one of them
    # used to wait for a delayed task that only that thread could make due.
    for _ in range(3):
        queue = TaskQueue(workers=2, time_limit=0.1, time_limit_grace=0.05)
        release = threading.Event()
        stuck = queue.submit(Task(release.wait, (WAIT,)))
        called = threading.Event()
        stuck.add_done_callback(lambda h: (queue.shutdown(), called.set()))
        later = queue.submit(Task(lambda: "later", delay=0.3))
        finished = threading.Event()
        threading.Thread(target=lambda: (queue.shutdown(), finished.set()), daemon=True).start()
        assert finished.wait(WAIT), "shutdown() never returned"
        assert called.is_set()
        assert isinstance(stuck.exception(0), TimeLimitExceeded)
        assert later.result(0) == "later"
        release.set()


@pytest.mark.timeout(60)
def test_time_limits_are_enforced_after_a_shutdown_whose_timeout_ran_out() -> None:
    # The timer that enforces time limits used to stop as shutdown(timeout=)
    # returned, while attempts still ran: a 3 s Python loop with a 0.05 s
    # limit ran to the end and succeeded.
    for _ in range(5):
        queue = TaskQueue(workers=1, time_limit=0.2)
        started = threading.Event()

        def spin() -> str:
            started.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # pure Python: interruptible
                pass
            return "ran to the end"

        handle = queue.submit(spin)
        assert started.wait(WAIT)
        queue.shutdown(timeout=0.01)  # returns while spin() still runs
        assert isinstance(handle.exception(WAIT), TimeLimitExceeded)
        queue.shutdown()


@pytest.mark.timeout(60)
def test_a_later_shutdown_returns_only_after_an_earlier_ones_cancelling_is_done() -> None:
    # After shutdown(wait=False, timeout=...), a later shutdown() used to
    # return before the CANCELLED listeners and done callbacks had run.
    for round_ in range(5):
        queue = TaskQueue(workers=1)
        gate = Gate()
        running = queue.submit(gate.wait)
        gate.wait_for_arrivals(1)
        returned = threading.Event()
        cancelled_events: List[Any] = []
        callbacks: List[Any] = []

        def on_event(event: Any) -> None:
            if event.kind is EventKind.CANCELLED:
                if not cancelled_events:
                    # Held until the later shutdown() has returned (or for a
                    # moment, if it rightly waits for this listener).
                    returned.wait(0.2)
                cancelled_events.append(event)

        queue.add_listener(on_event)
        queued = [queue.submit(abs, -i) for i in range(5)]
        for handle in queued:
            handle.add_done_callback(callbacks.append)
        queue.shutdown(wait=False, timeout=0.001)
        # The background cancelling's first pass marks them all cancelled;
        # its second (events, callbacks) is held by the listener above.
        assert not cf.wait(queued, WAIT).not_done
        gate.open()
        queue.shutdown()
        seen_events, seen_callbacks = len(cancelled_events), len(callbacks)
        returned.set()
        assert running.done()
        assert all(h.cancelled() for h in queued)
        assert (seen_callbacks, seen_events) == (5, 5), round_


@pytest.mark.timeout(60)
def test_shutdown_without_wait_and_no_time_left_cancels_before_it_returns(shaken: None) -> None:
    # With the deadline already passed, the cancelling used to be handed to
    # a background thread that raced the workers for the queued tasks.
    for _ in range(50):
        queue = TaskQueue(workers=2)
        gate = Gate()
        running = [queue.submit(gate.wait) for _ in range(2)]
        gate.wait_for_arrivals(2)
        queued = [queue.submit(abs, -i) for i in range(20)]
        queue.shutdown(wait=False, timeout=0)
        assert all(h.cancelled() for h in queued)
        gate.open()
        queue.shutdown()
        assert all(h.result(0) == "through" for h in running)
