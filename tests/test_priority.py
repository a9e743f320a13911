"""Priorities: higher first, FIFO among equals, retries keep theirs, the bound still holds.

Every ordering test uses one worker held at a gate while the queue fills,
then opens the gate: the order the tasks then run in is the order the queue
hands them out, with no sleeps and no races.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Callable, List, Tuple

import pytest

from conftest import WAIT, Gate
from taskqueue import Backoff, QueueFull, Task, TaskQueue, TaskState

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """Task bodies that append their label to one list, in the order they run."""

    def __init__(self) -> None:
        self.order: List[Any] = []
        self._lock = threading.Lock()

    def __call__(self, label: Any) -> Any:
        with self._lock:
            self.order.append(label)
        return label


def hold_the_only_worker(queue: TaskQueue, gate: Gate) -> None:
    """Occupy the queue's single worker at the gate, so that what follows queues up."""
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)


def submit_all(queue: TaskQueue, record: Recorder, specs: List[Tuple[Any, int]]) -> list:
    return [queue.submit(Task(record, (label,), priority=priority)) for label, priority in specs]


# -- ordering ------------------------------------------------------------------


def test_higher_priority_runs_first(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given one worker held at the gate, and tasks queued low to high
    queue = make_queue(workers=1)
    record = Recorder()
    hold_the_only_worker(queue, gate)
    handles = submit_all(queue, record, [("low", -1), ("zero", 0), ("high", 5), ("mid", 2)])
    # When the worker is let go
    gate.open()
    assert queue.join(WAIT)
    # Then they ran highest first
    assert record.order == ["high", "mid", "zero", "low"]
    assert all(h.state is TaskState.SUCCEEDED for h in handles)


def test_equal_priorities_run_in_submission_order(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    record = Recorder()
    hold_the_only_worker(queue, gate)
    submit_all(queue, record, [(("a", i), 3) for i in range(20)] + [(("b", i), 0) for i in range(20)])
    # plain submit() is priority 0: it queues behind the earlier 0s, FIFO
    for i in range(20, 25):
        queue.submit(record, ("b", i))
    gate.open()
    assert queue.join(WAIT)
    assert record.order == [("a", i) for i in range(20)] + [("b", i) for i in range(25)]


def test_interleaved_priorities_keep_fifo_within_each_level(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    record = Recorder()
    hold_the_only_worker(queue, gate)
    specs = [((p, i), p) for i in range(10) for p in (1, 0, 2)]  # round-robin over levels
    submit_all(queue, record, specs)
    gate.open()
    assert queue.join(WAIT)
    assert record.order == [(p, i) for p in (2, 1, 0) for i in range(10)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_levels_come_out_sorted_and_stable(
        make_queue: Callable[..., TaskQueue], gate: Gate, seed: int) -> None:
    # Given more distinct levels than the queue keeps idle (16), with
    # negative, zero and huge priorities, many tasks per level, in random order
    rng = random.Random(seed)
    levels = list(range(-20, 21)) + [10**30, -(10**30)]
    specs = []
    for i in range(600):
        priority = rng.choice(levels)
        specs.append(((i, priority), priority))
    queue = make_queue(workers=1, maxsize=0)
    record = Recorder()
    hold_the_only_worker(queue, gate)
    submit_all(queue, record, specs)
    gate.open()
    assert queue.join(WAIT)
    # Then they ran by priority, highest first, and by submission within a level
    assert record.order == sorted((label for label, _ in specs), key=lambda lab: -lab[1])


def test_levels_are_reused_after_the_queue_drains(make_queue: Callable[..., TaskQueue]) -> None:
    # Rounds that each use fresh levels exercise dropping idle levels: order
    # must survive the queue forgetting and rebuilding them.
    queue = make_queue(workers=1, maxsize=0)
    for round_ in range(6):
        gate = Gate()
        record = Recorder()
        hold_the_only_worker(queue, gate)
        priorities = [round_ * 10 + k for k in range(10)] + [-round_ * 10 - k for k in range(10)]
        random.Random(round_).shuffle(priorities)
        submit_all(queue, record, [(p, p) for p in priorities])
        gate.open()
        assert queue.join(WAIT)
        assert record.order == sorted(priorities, reverse=True)


def test_a_task_queued_later_with_higher_priority_overtakes(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    record = Recorder()
    hold_the_only_worker(queue, gate)
    submit_all(queue, record, [(i, 0) for i in range(5)])
    urgent = queue.submit(Task(record, ("urgent",), priority=1))
    gate.open()
    assert urgent.result(WAIT) == "urgent"
    assert queue.join(WAIT)
    assert record.order == ["urgent", 0, 1, 2, 3, 4]


# -- retries keep their priority --------------------------------------------------


def fails_first_call(record: Recorder) -> Callable[[], str]:
    """A task that records "flaky" on every call and raises on the first one only."""
    calls = []

    def flaky() -> str:
        calls.append(1)
        record("flaky")
        if len(calls) == 1:
            raise ValueError("first attempt fails")
        return "ok"

    return flaky


def test_a_retry_keeps_its_priority(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given one held worker, a high-priority task that fails once (retried at
    # once), and plain tasks queued behind it
    queue = make_queue(workers=1)
    record = Recorder()
    flaky = fails_first_call(record)
    hold_the_only_worker(queue, gate)
    handle = queue.submit(Task(flaky, priority=7, retries=1, backoff=Backoff.none()))
    submit_all(queue, record, [(i, 0) for i in range(5)])
    # When the worker is let go
    gate.open()
    assert handle.result(WAIT) == "ok"
    assert queue.join(WAIT)
    # Then the retry went back ahead of the priority-0 tasks, not behind them
    assert record.order == ["flaky", "flaky", 0, 1, 2, 3, 4]
    assert handle.attempts == 2


def test_a_low_priority_retry_stays_behind(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    record = Recorder()
    flaky = fails_first_call(record)
    hold_the_only_worker(queue, gate)
    handle = queue.submit(Task(flaky, priority=9, retries=1, backoff=Backoff.none()))
    submit_all(queue, record, [(i, 0) for i in range(3)])
    low = queue.submit(Task(flaky, priority=-9, retries=1, backoff=Backoff.none()))
    gate.open()
    assert handle.result(WAIT) == "ok" and low.result(WAIT) == "ok"
    assert record.order == ["flaky", "flaky", 0, 1, 2, "flaky"]


# -- the bound and backpressure still hold -----------------------------------------


def test_maxsize_bounds_tasks_of_every_priority(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a two-slot queue whose one worker is held and whose slots are full
    queue = make_queue(workers=1, maxsize=2)
    hold_the_only_worker(queue, gate)
    queue.submit(Task(abs, (-1,), priority=-5))
    queue.submit(Task(abs, (-2,), priority=0))
    before = queue.stats().submitted
    # Then no priority buys a place past the bound
    for priority in (-100, 0, 100, 10**9):
        with pytest.raises(QueueFull):
            queue.submit_nowait(Task(abs, (-3,), priority=priority))
    assert queue.stats().submitted == before
    assert queue.stats().pending == 2


def test_backpressure_blocks_a_high_priority_submit_until_room(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a full one-slot queue and a held worker
    queue = make_queue(workers=1, maxsize=1)
    record = Recorder()
    hold_the_only_worker(queue, gate)
    queue.submit(Task(record, ("queued",), priority=0))
    # When a producer submits a high-priority task, it blocks
    submitted = threading.Event()
    result: list = []

    def producer() -> None:
        result.append(queue.submit(Task(record, ("urgent",), priority=100)))
        submitted.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not submitted.wait(0.2)  # a negative: it is still blocked, the queue is full
    # and a non-blocking submit of any priority is refused
    with pytest.raises(QueueFull):
        queue.submit_nowait(Task(record, ("nope",), priority=1000))
    # Then opening the gate makes room and it gets in
    gate.open()
    thread.join(WAIT)
    assert not thread.is_alive() and submitted.is_set()
    assert result[0].result(WAIT) == "urgent"
    assert queue.join(WAIT)
    assert "nope" not in record.order and sorted(record.order) == ["queued", "urgent"]


def test_submit_timeout_applies_to_prioritised_tasks(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=1, submit_timeout=0.05)
    hold_the_only_worker(queue, gate)
    queue.submit(abs, -1)
    with pytest.raises(QueueFull):
        queue.submit(Task(abs, (-2,), priority=50))
    assert queue.stats().submitted == 2


# -- shutdown drains every priority before the workers stop -------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_shutdown_drain_runs_even_the_lowest_priorities(gate: Gate, workers: int) -> None:
    # Given held workers, and tasks queued at very low priorities
    queue = TaskQueue(workers=workers, maxsize=0)
    record = Recorder()
    for _ in range(workers):
        queue.submit(gate.wait)
    gate.wait_for_arrivals(workers)
    priorities = [-1, -(10**30), 0, -(10**9), 5, -2]
    handles = [queue.submit(Task(record, (p,), priority=p)) for p in priorities for _ in range(3)]
    # When shutdown(wait=True) starts while they are still queued
    closer = threading.Thread(target=queue.shutdown)
    closer.start()
    gate.open()
    closer.join(WAIT)
    assert not closer.is_alive()
    # Then every one of them ran: the stop sentinel overtook none of them
    assert all(h.state is TaskState.SUCCEEDED for h in handles)
    assert sorted(record.order) == sorted(p for p in priorities for _ in range(3))
    if workers == 1:
        assert record.order == sorted(record.order, reverse=True)
    stats = queue.stats()
    assert stats.succeeded == len(handles) + workers and stats.pending == 0


def test_priority_must_be_an_int() -> None:
    for bad in (1.5, "high", None, True, float("-inf"), float("nan")):
        with pytest.raises(TypeError, match="priority"):
            Task(abs, (1,), priority=bad)  # type: ignore[arg-type]


def test_an_immediate_retry_runs_next_on_the_same_worker(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given one held worker, a task that fails once with no backoff, and
    # equal-priority tasks queued behind it
    queue = make_queue(workers=1)
    record = Recorder()
    threads: List[int] = []

    def flaky() -> str:
        threads.append(threading.get_ident())
        record("flaky")
        if len(threads) == 1:
            raise ValueError("first attempt fails")
        return "ok"

    hold_the_only_worker(queue, gate)
    handle = queue.submit(Task(flaky, retries=1, backoff=Backoff.none()))
    submit_all(queue, record, [(i, 0) for i in range(3)])
    gate.open()
    # Then the retry ran at once, on the same thread, before the queued tasks
    assert handle.result(WAIT) == "ok"
    assert queue.join(WAIT)
    assert record.order == ["flaky", "flaky", 0, 1, 2]
    assert len(set(threads)) == 1 and handle.attempts == 2
    assert queue.stats().retried == 1
