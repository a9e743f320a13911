"""Delayed tasks: SCHEDULED in the scheduler until due, never early, drained or cancelled at shutdown."""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, List

import pytest

from conftest import WAIT, FakeClock, Gate
from taskqueue import Backoff, EventKind, QueueClosed, Task, TaskQueue, TaskState

pytestmark = pytest.mark.timeout(30)


class Stamp:
    """A task body that records the queue's clock when it starts."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.starts: List[float] = []
        self.ran = threading.Event()

    def __call__(self, value: object = None) -> object:
        self.starts.append(self._clock())
        self.ran.set()
        return value


@pytest.fixture
def driven(make_queue: Callable[..., TaskQueue], fake_clock: FakeClock) -> Callable[..., TaskQueue]:
    """Queues whose delays wait on the test's fake clock."""
    def make(**kwargs: Any) -> TaskQueue:
        kwargs.setdefault("workers", 1)
        return make_queue(clock=fake_clock, wait=fake_clock.wait, **kwargs)
    return make


# -- state and timing ------------------------------------------------------------


def test_a_delayed_task_is_scheduled_until_due_then_runs(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    stamp = Stamp(fake_clock)
    handle = queue.submit(Task(stamp, ("late",), delay=30))
    assert handle.state is TaskState.SCHEDULED
    assert not handle.running() and not handle.done() and handle.attempts == 0
    fake_clock.advance(29.999)
    assert handle.state is TaskState.SCHEDULED and not stamp.starts
    fake_clock.advance(0.001)
    assert handle.result(WAIT) == "late"
    assert handle.state is TaskState.SUCCEEDED and handle.attempts == 1


@pytest.mark.parametrize("delay", [0.0625, 8.0, 4096.0])  # exact in binary: no rounding
def test_a_delayed_task_never_starts_before_its_delay(driven: Any, fake_clock: FakeClock,
                                                      delay: float) -> None:
    queue = driven(workers=2)
    queue.start()
    stamps = [Stamp(fake_clock) for _ in range(5)]
    submitted = fake_clock()
    handles = [queue.submit(Task(stamp, delay=delay)) for stamp in stamps]
    fake_clock.advance(delay * 15 / 16)
    assert all(h.state is TaskState.SCHEDULED for h in handles)
    fake_clock.advance(delay / 16)
    for handle in handles:
        handle.result(WAIT)
    assert all(stamp.starts[0] - submitted >= delay for stamp in stamps)


def test_the_delay_is_measured_on_the_queues_clock(driven: Any, fake_clock: FakeClock) -> None:
    # The fake clock's epoch (1000 s) is not time.monotonic()'s: a delay
    # computed on one clock and waited out on another would run at once or never.
    queue = driven()
    stamp = Stamp(fake_clock)
    before = fake_clock()
    handle = queue.submit(Task(stamp, delay=20))
    fake_clock.advance(10)
    assert not stamp.ran.is_set()
    fake_clock.advance(10)
    handle.result(WAIT)
    assert stamp.starts[0] - before >= 20


def test_a_delayed_task_does_not_occupy_a_worker(driven: Any, fake_clock: FakeClock) -> None:
    # Given one worker and a task delayed far into the future
    queue = driven()
    stamp = Stamp(fake_clock)
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


def test_delayed_tasks_run_in_due_order(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    order: List[str] = []
    lock = threading.Lock()

    def note(label: str) -> None:
        with lock:
            order.append(label)

    handles = [queue.submit(Task(note, (label,), delay=delay))
               for label, delay in [("third", 3), ("first", 1), ("second", 2)]]
    fake_clock.advance(3)
    for handle in handles:
        handle.result(WAIT)
    assert order == ["first", "second", "third"]


# -- counting ---------------------------------------------------------------------


def test_a_delayed_task_counts_as_submitted_and_pending_until_it_runs(
        driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    events: List[EventKind] = []
    queue.add_listener(lambda e: events.append(e.kind))
    handle = queue.submit(Task(abs, (-1,), delay=10))
    stats = queue.stats()
    assert stats.submitted == 1 and stats.pending == 1 and stats.running == 0
    assert events == [EventKind.SUBMITTED]
    fake_clock.advance(10)
    assert handle.result(WAIT) == 1
    assert queue.join(WAIT)
    stats = queue.stats()
    assert stats.submitted == 1 and stats.succeeded == 1 and stats.pending == 0
    assert stats.cancelled == 0 and stats.retried == 0


def test_cancelling_a_delayed_task_counts_it_once_and_never_runs_it(
        driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    stamp = Stamp(fake_clock)
    handle = queue.submit(Task(stamp, delay=20))
    assert handle.cancel() and handle.cancel()
    # join returns once the cancelled one is accounted for, before its due time
    assert queue.join(WAIT)
    fake_clock.advance(40)  # the scheduler has passed its due time, and run nothing
    assert not stamp.starts
    stats = queue.stats()
    assert stats.submitted == 1 and stats.cancelled == 1 and stats.pending == 0


def test_join_waits_for_delayed_tasks(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    stamp = Stamp(fake_clock)
    handle = queue.submit(Task(stamp, delay=20))
    assert not queue.join(0)
    fake_clock.advance(20)
    assert queue.join(WAIT)
    assert handle.state is TaskState.SUCCEEDED and stamp.starts


def test_retries_of_a_delayed_task_use_the_backoff_not_the_delay(
        driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    starts: List[float] = []

    def flaky() -> str:
        starts.append(fake_clock())
        if len(starts) == 1:
            raise ValueError("once")
        return "ok"

    before = fake_clock()
    handle = queue.submit(Task(flaky, delay=20, retries=1, backoff=Backoff.none()))
    fake_clock.advance(20)
    assert handle.result(WAIT) == "ok"  # the retry did not wait for another 20 s
    assert handle.attempts == 2 and starts[0] - before >= 20 and starts[1] == starts[0]


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_cancel_futures_cancels_delayed_tasks(fake_clock: FakeClock) -> None:
    queue = TaskQueue(workers=1, clock=fake_clock, wait=fake_clock.wait)
    stamp = Stamp(fake_clock)
    handles = [queue.submit(Task(stamp, delay=30)) for _ in range(3)]
    plain = queue.submit(abs, -1)
    plain.result(WAIT)
    queue.shutdown(cancel_futures=True)
    assert all(h.state is TaskState.CANCELLED for h in handles)
    assert not stamp.starts
    stats = queue.stats()
    assert stats.cancelled == 3 and stats.succeeded == 1 and stats.pending == 0


def test_default_shutdown_drain_waits_for_delayed_tasks(fake_clock: FakeClock) -> None:
    queue = TaskQueue(workers=1, clock=fake_clock, wait=fake_clock.wait)
    stamp = Stamp(fake_clock)
    before = fake_clock()
    handle = queue.submit(Task(stamp, ("done",), delay=30))
    closer = threading.Thread(target=queue.shutdown)  # wait=True, no cancel: drains
    closer.start()
    closer.join(0.05)
    assert closer.is_alive() and not stamp.starts  # waiting for the delay
    fake_clock.advance(30)
    closer.join(WAIT)
    assert not closer.is_alive()
    assert handle.state is TaskState.SUCCEEDED and handle.result(0) == "done"
    assert stamp.starts[0] - before >= 30
    assert queue.stats().pending == 0


def test_shutdown_without_wait_still_runs_delayed_tasks_in_the_background(
        fake_clock: FakeClock) -> None:
    queue = TaskQueue(workers=1, clock=fake_clock, wait=fake_clock.wait)
    handle = queue.submit(Task(abs, (-5,), delay=20))
    queue.shutdown(wait=False)
    fake_clock.advance(20)
    assert handle.result(WAIT) == 5
    with pytest.raises(QueueClosed):
        queue.submit(Task(abs, (-5,), delay=20))


def test_shutdown_timeout_cancels_delayed_tasks_that_are_not_due(fake_clock: FakeClock) -> None:
    queue = TaskQueue(workers=1, clock=fake_clock, wait=fake_clock.wait)
    stamp = Stamp(fake_clock)
    handle = queue.submit(Task(stamp, delay=30))
    queue.shutdown(timeout=0)
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
