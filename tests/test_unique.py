"""Unique tasks: one live task per key; the key is free again once that task is terminal."""

from __future__ import annotations

import logging
import queue as queue_
import threading
from concurrent.futures import CancelledError
from typing import Any, Callable, List

import pytest

from conftest import WAIT, FakeClock, Gate
from taskqueue import Backoff, EventKind, QueueFull, Task, TaskHandle, TaskQueue, TaskState

pytestmark = pytest.mark.timeout(30)


class Calls:
    """A task body that counts its calls and returns its label."""

    def __init__(self) -> None:
        self.labels: List[Any] = []
        self._lock = threading.Lock()

    def __call__(self, label: Any = None) -> Any:
        with self._lock:
            self.labels.append(label)
        return label


def hold_the_only_worker(queue: TaskQueue, gate: Gate) -> TaskHandle:
    handle = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    return handle


# -- one live task per key ----------------------------------------------------------------


def test_same_key_while_pending_returns_the_same_handle(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a keyed task queued behind a held worker
    queue = make_queue(workers=1)
    calls = Calls()
    hold_the_only_worker(queue, gate)
    first = queue.submit(Task(calls, ("first",), key="booking-42"))
    # When the same key is submitted again, even with other work
    second = queue.submit(Task(calls, ("second",), key="booking-42"))
    third = queue.submit_nowait(Task(abs, (-1,), key="booking-42"))
    # Then every submitter gets the first handle, and only the first task runs
    assert second is first and third is first
    assert queue.stats().submitted == 2  # the gate task and the first
    gate.open()
    assert first.result(WAIT) == "first"
    assert queue.join(WAIT)
    assert calls.labels == ["first"]


def test_same_key_while_running_returns_the_running_handle(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=2)
    running = queue.submit(Task(gate.wait, key="k"))
    gate.wait_for_arrivals(1)
    assert running.state is TaskState.RUNNING
    assert queue.submit(Task(gate.wait, key="k")) is running
    gate.open()
    assert running.result(WAIT) == "through"
    assert queue.stats().submitted == 1


def test_same_key_while_waiting_for_a_retry_returns_the_same_handle(
        make_queue: Callable[..., TaskQueue]) -> None:
    # Given a keyed task that failed once and waits out a long backoff
    queue = make_queue(workers=1)
    retrying = threading.Event()
    queue.add_listener(lambda e: e.kind is EventKind.RETRYING and retrying.set())

    def fails() -> None:
        raise ValueError("no")

    first = queue.submit(Task(fails, key="k", retries=1, backoff=Backoff.constant(WAIT)))
    assert retrying.wait(WAIT)
    assert first.state is TaskState.SCHEDULED
    # Then the key is still taken
    assert queue.submit(Task(abs, (-1,), key="k")) is first
    # and once it is cancelled, it is free
    assert first.cancel()
    again = queue.submit(Task(abs, (-1,), key="k"))
    assert again is not first and again.result(WAIT) == 1


def test_a_task_that_resubmits_its_own_key_gets_its_own_handle(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    inner: List[TaskHandle] = []

    def resubmit() -> str:
        inner.append(queue.submit(Task(resubmit, key="self")))
        return "once"

    outer = queue.submit(Task(resubmit, key="self"))
    assert outer.result(WAIT) == "once"
    assert inner == [outer]
    assert queue.join(WAIT) and queue.stats().submitted == 1


def test_a_deduplicated_submit_is_neither_counted_nor_announced(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    hold_the_only_worker(queue, gate)
    kinds: List[EventKind] = []
    queue.add_listener(lambda e: kinds.append(e.kind))
    first = queue.submit(Task(abs, (-1,), key="k"))
    for _ in range(5):
        assert queue.submit(Task(abs, (-1,), key="k")) is first
    assert kinds == [EventKind.SUBMITTED]
    assert queue.stats().submitted == 2


def test_tasks_without_a_key_are_never_deduplicated(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    hold_the_only_worker(queue, gate)
    task = Task(abs, (-1,))
    handles = [queue.submit(task) for _ in range(3)]
    assert len({id(h) for h in handles}) == 3
    gate.open()
    assert [h.result(WAIT) for h in handles] == [1, 1, 1]


def test_different_keys_are_independent(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=2)
    a = queue.submit(Task(gate.wait, key="a"))
    b = queue.submit(Task(gate.wait, key="b"))
    assert a is not b
    gate.wait_for_arrivals(2)  # both run at once
    assert queue.submit(Task(gate.wait, key="a")) is a
    assert queue.submit(Task(gate.wait, key="b")) is b
    assert queue.submit(Task(gate.wait, key="A")) not in (a, b)  # keys are case-sensitive
    gate.open()
    assert queue.join(WAIT)
    assert queue.stats().submitted == 3


# -- the key is free once the task is terminal ---------------------------------------------


def test_key_is_free_after_success(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    calls = Calls()
    first = queue.submit(Task(calls, (1,), key="k"))
    assert first.result(WAIT) == 1
    second = queue.submit(Task(calls, (2,), key="k"))
    assert second is not first and second.result(WAIT) == 2
    assert calls.labels == [1, 2]


def test_key_is_free_after_failure(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, retries=0)

    def fails() -> None:
        raise ValueError("no")

    first = queue.submit(Task(fails, key="k"))
    assert isinstance(first.exception(WAIT), ValueError)
    assert first.state is TaskState.FAILED
    second = queue.submit(Task(abs, (-2,), key="k"))
    assert second is not first and second.result(WAIT) == 2


def test_key_is_free_after_cancel(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    calls = Calls()
    hold_the_only_worker(queue, gate)
    first = queue.submit(Task(calls, ("first",), key="k"))
    assert first.cancel()
    second = queue.submit(Task(calls, ("second",), key="k"))
    assert second is not first
    gate.open()
    assert second.result(WAIT) == "second"
    with pytest.raises(CancelledError):
        first.result(0)
    assert queue.join(WAIT) and calls.labels == ["second"]


def test_a_done_callback_may_resubmit_the_key_at_once(make_queue: Callable[..., TaskQueue]) -> None:
    # The moment a handle is terminal (its callbacks run then), the key is free
    queue = make_queue(workers=1)
    resubmitted: List[TaskHandle] = []
    done = threading.Event()
    first = queue.submit(Task(abs, (-1,), key="k"))

    def again(handle: Any) -> None:
        resubmitted.append(queue.submit(Task(abs, (-2,), key="k")))
        done.set()

    first.add_done_callback(again)
    assert done.wait(WAIT)
    assert resubmitted[0] is not first and resubmitted[0].result(WAIT) == 2


def test_a_refused_submit_frees_its_key(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a full one-slot queue
    queue = make_queue(workers=1, maxsize=1)
    hold_the_only_worker(queue, gate)
    queue.submit(abs, -1)
    # When a keyed submit is refused for lack of room
    with pytest.raises(QueueFull):
        queue.submit_nowait(Task(abs, (-2,), key="k"))
    # Then the key is not held by the refused task
    gate.open()
    assert queue.join(WAIT)
    handle = queue.submit(Task(abs, (-3,), key="k"))
    assert handle.result(WAIT) == 3
    assert queue.stats().submitted == 3 and queue.stats().cancelled == 0


def test_a_submit_that_returns_a_handle_never_gets_one_that_was_refused(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a full one-slot queue, and a producer blocked (with a timeout) on
    # a keyed submit
    queue = make_queue(workers=1, maxsize=1, submit_timeout=0.5)
    hold_the_only_worker(queue, gate)
    queue.submit(abs, -1)
    returned: List[TaskHandle] = []
    stop = threading.Event()

    def other_producer() -> None:
        # Keeps offering the same key without blocking until it is let in or told to stop
        while not stop.is_set():
            try:
                returned.append(queue.submit_nowait(Task(abs, (-2,), key="k")))
                return
            except QueueFull:
                continue

    other = threading.Thread(target=other_producer)
    other.start()
    try:
        returned.append(queue.submit(Task(abs, (-2,), key="k")))
    except QueueFull:
        pass  # this producer was refused: fine, it knows
    stop.set()
    other.join(WAIT)
    # When room is made
    gate.open()
    assert queue.join(WAIT)
    # Then every handle a submit returned runs to success: none was cancelled
    # behind its submitter's back
    assert [h.state for h in returned] == [TaskState.SUCCEEDED] * len(returned)


def test_a_same_key_submitter_waits_for_the_owners_admission_and_never_gets_a_refused_handle(
        make_queue: Callable[..., TaskQueue], gate: Gate,
        caplog: pytest.LogCaptureFixture) -> None:
    # Given a full one-slot queue: one task held running, one held queued
    queue = make_queue(workers=1, maxsize=1, submit_timeout=0.5)
    hold_the_only_worker(queue, gate)
    second_gate = Gate()
    queued = queue.submit(second_gate.wait)
    try:
        # When two producers offer the same key while there is no room
        returned: "queue_.Queue[Any]" = queue_.Queue()

        def producer() -> None:
            try:
                returned.put(queue.submit(Task(abs, (-1,), key="k")))
            except QueueFull as exc:
                returned.put(exc)

        producers = [threading.Thread(target=producer) for _ in range(2)]
        for thread in producers:
            thread.start()
        outcomes = [returned.get(timeout=WAIT), returned.get(timeout=WAIT)]
        for thread in producers:
            thread.join(WAIT)
        # Then neither was handed a task the queue never accepted: both were
        # told the queue is full, and the counts know only the two held tasks
        assert all(isinstance(o, QueueFull) for o in outcomes), outcomes
        assert queue.stats().submitted == 2
        gate.open()
        second_gate.wait_for_arrivals(1)
        assert queue.stats().pending >= 0
        assert queue.join(timeout=0.3) is False
    finally:
        second_gate.open()
    assert queued.result(WAIT) == "through"
    assert queue.join(WAIT)
    assert queue.stats().pending == 0
    assert queue.submit(Task(abs, (-1,), key="k")).result(WAIT) == 1  # the key is free
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


# -- racing submitters ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_concurrent_submitters_of_one_key_get_one_handle(make_queue: Callable[..., TaskQueue]) -> None:
    # Given a key whose task is held until every submitter has returned
    queue = make_queue(workers=2)
    threads_per_round = 8
    for round_ in range(40):
        release = threading.Event()
        calls = Calls()
        barrier = threading.Barrier(threads_per_round)
        got: List[TaskHandle] = []
        lock = threading.Lock()
        before = queue.stats().submitted

        def submitter() -> None:
            barrier.wait(WAIT)
            handle = queue.submit(Task(lambda: calls(release.wait(WAIT)), key="racy"))
            with lock:
                got.append(handle)

        # When many threads submit it at the same instant
        threads = [threading.Thread(target=submitter) for _ in range(threads_per_round)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        # Then they all got the same handle, and one task was queued
        assert len(got) == threads_per_round, f"round {round_}"
        assert all(h is got[0] for h in got), f"round {round_}: {len(set(map(id, got)))} handles"
        assert queue.stats().submitted == before + 1
        release.set()
        assert got[0].result(WAIT) is True
        assert calls.labels == [True]


@pytest.mark.timeout(60)
def test_racing_resubmits_after_the_end_never_run_two_at_once(
        make_queue: Callable[..., TaskQueue]) -> None:
    # Many threads keep submitting one key while its tasks end: at no time
    # do two tasks with that key run at once.
    queue = make_queue(workers=4)
    lock = threading.Lock()
    live = [0]
    overlap = []

    def body() -> None:
        with lock:
            live[0] += 1
            if live[0] > 1:
                overlap.append(live[0])
        busy = sum(range(200))
        with lock:
            live[0] -= 1
        return busy

    barrier = threading.Barrier(6)

    def submitter() -> None:
        barrier.wait(WAIT)
        for _ in range(300):
            queue.submit(Task(body, key="one-at-a-time"))

    threads = [threading.Thread(target=submitter) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert queue.join(WAIT)
    assert not overlap


# -- keys with delays ------------------------------------------------------------------------


def test_a_delayed_keyed_task_holds_its_key_until_it_has_run(
        make_queue: Callable[..., TaskQueue], fake_clock: FakeClock) -> None:
    queue = make_queue(workers=1, clock=fake_clock, wait=fake_clock.wait)
    calls = Calls()
    delayed = queue.submit(Task(calls, ("delayed",), key="later", delay=20))
    assert delayed.state is TaskState.SCHEDULED
    assert queue.submit(Task(calls, ("dup",), key="later")) is delayed
    assert queue.submit(Task(calls, ("dup",), key="later", delay=5)) is delayed
    fake_clock.advance(19)
    assert queue.submit(Task(calls, ("dup",), key="later")) is delayed
    fake_clock.advance(1)
    assert delayed.result(WAIT) == "delayed"
    after = queue.submit(Task(calls, ("after",), key="later"))
    assert after is not delayed and after.result(WAIT) == "after"
    assert calls.labels == ["delayed", "after"]


def test_shutdown_cancel_frees_keys_of_delayed_tasks() -> None:
    queue = TaskQueue(workers=1)
    delayed = queue.submit(Task(abs, (-1,), key="k", delay=30))
    queue.shutdown(cancel_futures=True)
    assert delayed.state is TaskState.CANCELLED
    assert queue.stats().cancelled == 1 and queue.stats().pending == 0


# -- bad keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1, 1.5, b"k", ("a",), ["a"], {"a"}, {"a": 1}, object(), True])
def test_a_key_that_is_not_a_str_is_a_type_error_naming_key(bad: object) -> None:
    with pytest.raises(TypeError, match="key"):
        Task(abs, (1,), key=bad)  # type: ignore[arg-type]


def test_an_empty_key_is_a_value_error_naming_key() -> None:
    with pytest.raises(ValueError, match="key"):
        Task(abs, (1,), key="")


def test_a_str_subclass_key_deduplicates_by_value(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    class Key(str):
        pass

    queue = make_queue(workers=1)
    hold_the_only_worker(queue, gate)
    first = queue.submit(Task(abs, (-1,), key=Key("k")))
    assert queue.submit(Task(abs, (-1,), key="k")) is first


@pytest.mark.timeout(60)
def test_a_key_stays_taken_until_its_handle_is_done(make_queue: Callable[..., TaskQueue],
                                                   shaken: None) -> None:
    # The key used to be freed a moment before the handle ended: a second
    # submit got a new handle while the first still read RUNNING.
    queue = make_queue(workers=2)
    for _ in range(20):
        previous = queue.submit(Task(abs, (-1,), key="k"))
        seen = 0
        while seen < 200:
            handle = queue.submit(Task(abs, (-1,), key="k"))
            if handle is not previous:
                assert previous.done(), f"new handle while the old one is {previous.state}"
                previous = handle
                seen += 1
        assert previous.result(WAIT) == 1
