"""Nothing is lost: shutdown in every mode, dead workers, many producers, leaks."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import random
import threading
import tracemalloc
import weakref
from typing import Any, Callable, List

import pytest

from conftest import WAIT, Gate, assert_settled
from taskqueue import Backoff, Retry, TaskHandle, TaskQueue, TaskState
from taskqueue.stats import WorkerTally



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


class CrashingAcks(TaskQueue):
    """A queue whose acknowledgement fails every ``every``-th time (the fault seam)."""

    def __init__(self, *args: Any, every: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = every
        self.acks = 0
        self._ack_lock = threading.Lock()

    def _fault(self) -> None:
        with self._ack_lock:
            self.acks += 1
            crash = self.acks % self.every == 1
        if crash:
            raise RuntimeError("injected fault between the task and its acknowledgement")

    def _settle_success(self, handle: TaskHandle, result: Any, tally: WorkerTally) -> None:
        self._fault()
        super()._settle_success(handle, result, tally)

    def _settle_failure(self, handle: TaskHandle, exc: BaseException, tally: WorkerTally) -> None:
        self._fault()
        super()._settle_failure(handle, exc, tally)


def test_a_task_whose_worker_dies_runs_again_on_a_replacement() -> None:
    # Given a one-worker queue whose first acknowledgement fails
    queue = CrashingAcks(workers=1, every=1_000_000, name="fragile")
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
        queue = CrashingAcks(workers=3, every=7, retries=1, backoff=Backoff.none())
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
    tracemalloc.start()
    try:
        for i in range(30_000):  # warm up, traced: the stats windows fill up
            queue.submit(abs, i)
        assert queue.join(WAIT)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200_000):
            queue.submit(abs, i)
        assert queue.join(WAIT * 3)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    queue.shutdown()
    assert growth < 64 * 1024, f"grew by {growth} bytes over 200,000 tasks"
