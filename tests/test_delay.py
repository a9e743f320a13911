"""Delayed tasks: SCHEDULED in the scheduler until due, never early, drained or cancelled at shutdown."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, List

import pytest

from conftest import WAIT, Gate
from taskqueue import Backoff, EventKind, QueueClosed, Task, TaskQueue, TaskState

pytestmark = pytest.mark.timeout(30)


class Stamp:
    """A task body that records ``time.monotonic()`` when it starts."""

    def __init__(self) -> None:
        self.starts: List[float] = []
        self.ran = threading.Event()

    def __call__(self, value: object = None) -> object:
        self.starts.append(time.monotonic())
        self.ran.set()
        return value


# -- state and timing ------------------------------------------------------------


def test_a_delayed_task_is_scheduled_until_due_then_runs(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    stamp = Stamp()
    handle = queue.submit(Task(stamp, ("late",), delay=0.3))
    assert handle.state is TaskState.SCHEDULED
    assert not handle.running() and not handle.done() and handle.attempts == 0
    assert handle.result(WAIT) == "late"
    assert handle.state is TaskState.SUCCEEDED and handle.attempts == 1


@pytest.mark.parametrize("delay", [0.05, 0.25])
def test_a_delayed_task_never_starts_before_its_delay(
        make_queue: Callable[..., TaskQueue], delay: float) -> None:
    # An outcome, not a speed: the start is measured against a clock reading
    # taken before the submit, so start - submit >= delay must hold exactly.
    queue = make_queue(workers=2)
    queue.start()
    stamps = [Stamp() for _ in range(5)]
    submitted = []
    handles = []
    for stamp in stamps:
        submitted.append(time.monotonic())
        handles.append(queue.submit(Task(stamp, delay=delay)))
    for handle in handles:
        handle.result(WAIT)
    for stamp, at in zip(stamps, submitted):
        assert stamp.starts[0] - at >= delay


def test_the_delay_is_measured_on_the_queues_clock(make_queue: Callable[..., TaskQueue]) -> None:
    # Given a queue whose clock has another epoch than time.monotonic(): a
    # delay computed on one clock and waited out on another would run at
    # once or never
    def clock() -> float:
        return time.monotonic() + 1000.0

    queue = make_queue(workers=1, clock=clock)
    queue.start()
    starts: List[float] = []
    before = clock()
    handle = queue.submit(Task(lambda: starts.append(clock()), delay=0.2))
    # Then it runs, and no earlier than the delay on that clock
    handle.result(WAIT)
    assert starts[0] - before >= 0.2


def test_a_delayed_task_does_not_occupy_a_worker(make_queue: Callable[..., TaskQueue]) -> None:
    # Given one worker and a task delayed far into the future
    queue = make_queue(workers=1)
    stamp = Stamp()
    delayed = queue.submit(Task(stamp, delay=60))
    # When other work is submitted, the one worker runs it at once
    assert [queue.submit(pow, 2, i).result(WAIT) for i in range(5)] == [1, 2, 4, 8, 16]
    # Then the delayed one is still waiting in the scheduler, not started
    assert delayed.state is TaskState.SCHEDULED and not stamp.starts
    assert delayed.cancel()
    assert delayed.state is TaskState.CANCELLED


def test_zero_delay_is_no_delay(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    handle = queue.submit(Task(abs, (-3,), delay=0))
    assert handle.state is TaskState.PENDING
    gate.open()
    assert handle.result(WAIT) == 3


def test_delayed_tasks_run_in_due_order(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    order: List[str] = []
    lock = threading.Lock()

    def note(label: str) -> None:
        with lock:
            order.append(label)

    handles = [queue.submit(Task(note, (label,), delay=delay))
               for label, delay in [("third", 0.3), ("first", 0.1), ("second", 0.2)]]
    for handle in handles:
        handle.result(WAIT)
    assert order == ["first", "second", "third"]


# -- counting ---------------------------------------------------------------------


def test_a_delayed_task_counts_as_submitted_and_pending_until_it_runs(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    events: List[EventKind] = []
    queue.add_listener(lambda e: events.append(e.kind))
    handle = queue.submit(Task(abs, (-1,), delay=0.1))
    stats = queue.stats()
    assert stats.submitted == 1 and stats.pending == 1 and stats.running == 0
    assert events == [EventKind.SUBMITTED]
    assert handle.result(WAIT) == 1
    assert queue.join(WAIT)
    stats = queue.stats()
    assert stats.submitted == 1 and stats.succeeded == 1 and stats.pending == 0
    assert stats.cancelled == 0 and stats.retried == 0


def test_cancelling_a_delayed_task_counts_it_once_and_never_runs_it(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    stamp = Stamp()
    handle = queue.submit(Task(stamp, delay=0.2))
    assert handle.cancel() and handle.cancel()
    # join returns once the cancelled one is accounted for, before its due time
    assert queue.join(WAIT)
    # A later task delayed past the cancelled one's due time proves the
    # scheduler passed that time without running it.
    after = queue.submit(Task(abs, (-1,), delay=0.4))
    assert after.result(WAIT) == 1
    assert not stamp.starts
    stats = queue.stats()
    assert stats.submitted == 2 and stats.cancelled == 1 and stats.succeeded == 1
    assert stats.pending == 0


def test_join_waits_for_delayed_tasks(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    stamp = Stamp()
    handle = queue.submit(Task(stamp, delay=0.2))
    assert queue.join(WAIT)
    assert handle.state is TaskState.SUCCEEDED and stamp.starts


def test_retries_of_a_delayed_task_use_the_backoff_not_the_delay(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    starts: List[float] = []

    def flaky() -> str:
        starts.append(time.monotonic())
        if len(starts) == 1:
            raise ValueError("once")
        return "ok"

    before = time.monotonic()
    handle = queue.submit(Task(flaky, delay=0.2, retries=1, backoff=Backoff.none()))
    assert handle.result(WAIT) == "ok"
    assert handle.attempts == 2 and starts[0] - before >= 0.2


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_cancel_futures_cancels_delayed_tasks() -> None:
    queue = TaskQueue(workers=1)
    stamp = Stamp()
    handles = [queue.submit(Task(stamp, delay=30)) for _ in range(3)]
    plain = queue.submit(abs, -1)
    plain.result(WAIT)
    queue.shutdown(cancel_futures=True)
    assert all(h.state is TaskState.CANCELLED for h in handles)
    assert not stamp.starts
    stats = queue.stats()
    assert stats.cancelled == 3 and stats.succeeded == 1 and stats.pending == 0


def test_default_shutdown_drain_waits_for_delayed_tasks() -> None:
    queue = TaskQueue(workers=1)
    stamp = Stamp()
    before = time.monotonic()
    handle = queue.submit(Task(stamp, ("done",), delay=0.3))
    queue.shutdown()  # wait=True, no cancel: drains what was accepted
    assert handle.state is TaskState.SUCCEEDED and handle.result(0) == "done"
    assert stamp.starts[0] - before >= 0.3
    assert queue.stats().pending == 0


def test_shutdown_without_wait_still_runs_delayed_tasks_in_the_background() -> None:
    queue = TaskQueue(workers=1)
    handle = queue.submit(Task(abs, (-5,), delay=0.2))
    queue.shutdown(wait=False)
    assert handle.result(WAIT) == 5
    with pytest.raises(QueueClosed):
        queue.submit(Task(abs, (-5,), delay=0.2))


def test_shutdown_timeout_cancels_delayed_tasks_that_are_not_due() -> None:
    queue = TaskQueue(workers=1)
    stamp = Stamp()
    handle = queue.submit(Task(stamp, delay=30))
    queue.shutdown(timeout=0.1)
    assert handle.state is TaskState.CANCELLED and not stamp.starts


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.001, -1, float("nan"), float("inf"), -math.inf])
def test_a_bad_delay_value_is_a_value_error_naming_delay(bad: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        Task(abs, (1,), delay=bad)


@pytest.mark.parametrize("bad", ["1", b"1", [1], True, object()])
def test_a_delay_that_is_not_a_number_is_a_type_error_naming_delay(bad: object) -> None:
    with pytest.raises(TypeError, match="delay"):
        Task(abs, (1,), delay=bad)  # type: ignore[arg-type]


def test_a_bad_delay_submits_nothing(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue()
    with pytest.raises(ValueError, match="delay"):
        queue.submit(Task(abs, (1,), delay=-1))
    assert queue.stats().submitted == 0
