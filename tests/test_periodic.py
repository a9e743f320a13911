"""Periodic work: fixed-rate runs, skipped (never stacked) when busy, stopped by cancel or shutdown.

The queues here run on the tests' fake clock: time moves only when a test
(or a listener standing for a slow hand-over) advances it, and
``advance()`` returns once the queue's timers have handled everything that
fell due. Run bodies record the fake clock, so due times are checked
exactly, with no sleep.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import weakref
from typing import Any, Callable, List, Tuple

import pytest

from conftest import WAIT, FakeClock, Gate
from taskqueue import Backoff, Event, EventKind, QueueClosed, Task, TaskQueue
from taskqueue.periodic import Periodic

pytestmark = pytest.mark.timeout(30)


class Runs:
    """A periodic body: records each run's start and the skipped count it saw.

    ``runs[n - 1]`` is ``(skipped, start)`` for the n-th run, ``start`` on
    the fake clock; ``reached(n)`` is set once n runs have started. Tracks
    how many runs overlap.
    """

    def __init__(self, clock: FakeClock, body: Callable[[int], Any] = lambda n: None) -> None:
        self.periodic: Periodic | None = None
        self.runs: List[Tuple[int, float]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._clock = clock
        self._body = body
        self._lock = threading.Lock()
        self._reached: dict = {}

    def reached(self, n: int) -> threading.Event:
        with self._lock:
            event = self._reached.setdefault(n, threading.Event())
            if len(self.runs) >= n:
                event.set()
            return event

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Read skipped before the clock: every tick it counts was due before now.
        skipped = self.periodic.skipped if self.periodic is not None else 0
        start = self._clock()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.runs.append((skipped, start))
            n = len(self.runs)
            for k, event in self._reached.items():
                if n >= k:
                    event.set()
        try:
            return self._body(n)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def driven(make_queue: Callable[..., TaskQueue], fake_clock: FakeClock) -> Callable[..., TaskQueue]:
    """Queues whose timers run on the test's fake clock."""
    def make(**kwargs: Any) -> TaskQueue:
        kwargs.setdefault("workers", 2)
        return make_queue(clock=fake_clock, wait=fake_clock.wait, **kwargs)
    return make


def start_every(queue: TaskQueue, interval: float, runs: Runs, *args: Any, **kwargs: Any
                ) -> Tuple[Periodic, float]:
    queue.start()
    periodic = queue.every(interval, runs, *args, **kwargs)
    runs.periodic = periodic
    return periodic, runs._clock()


def tick_until(queue: TaskQueue, clock: FakeClock, interval: float, event: threading.Event,
               most: int = 100) -> int:
    """Advance one interval at a time until ``event`` is set; return how many intervals.

    After each step it waits for the queue to be idle: what fell due has run.
    """
    for ticks in range(1, most + 1):
        clock.advance(interval)
        assert queue.join(WAIT)
        if event.is_set():
            return ticks
    raise AssertionError("the event never came")


def assert_on_the_grid(runs: Runs, interval: float, start: float, late: float) -> None:
    """Run n started at or after its due time, start + T * interval, and less than ``late`` after it.

    T = n + the skips seen at its start: every tick up to T was either run or
    skipped before run n began. A rate that drifts (each due time measured
    from the previous hand-over) makes the lateness grow run by run.
    """
    for n, (skipped, begun) in enumerate(runs.runs, 1):
        tick = n + skipped
        assert begun >= start + tick * interval, f"run {n} started before tick {tick} was due"
        assert begun < start + tick * interval + late, (
            f"run {n} started {begun - start - tick * interval:.3f}s after tick {tick} was due")


# -- runs and their due times ----------------------------------------------------------


def test_every_runs_the_function_with_its_arguments_and_counts_runs(
        driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    seen: List[Tuple[Any, ...]] = []
    runs = Runs(fake_clock, lambda n: seen.append(n))
    periodic, _ = start_every(queue, 30, runs, 1, two=2)
    assert isinstance(periodic, Periodic) and periodic.interval == 30
    fake_clock.advance(29)
    assert not runs.runs  # the first run is due one interval after every()
    assert tick_until(queue, fake_clock, 1, runs.reached(1)) == 1
    for n in range(2, 6):
        fake_clock.advance(30)
        assert runs.reached(n).wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    assert periodic.runs == len(runs.runs) == 5
    stats = queue.stats()
    assert stats.submitted == stats.succeeded == periodic.runs
    assert periodic.last is not None and periodic.last.result(0) is None


def test_every_passes_args_and_kwargs(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven(workers=1)
    got: List[Any] = []
    done = threading.Event()

    def body(*args: Any, **kwargs: Any) -> None:
        got.append((args, kwargs))
        done.set()

    periodic = queue.every(2, body, 1, "a", key="v")
    fake_clock.advance(2)
    assert done.wait(WAIT)
    periodic.cancel()
    assert got[0] == ((1, "a"), {"key": "v"})


def test_every_run_starts_on_its_due_time_however_long_runs_take(
        driven: Any, fake_clock: FakeClock) -> None:
    # Given runs that themselves take half the interval (of the fake clock)
    queue = driven()
    interval = 8.0
    runs = Runs(fake_clock, lambda n: fake_clock.advance(interval / 2))
    periodic, start = start_every(queue, interval, runs)
    fake_clock.advance(interval)
    for n in range(1, 11):
        assert runs.reached(n).wait(WAIT)
        assert queue.join(WAIT)  # the run has taken its half interval
        if n < 10:
            fake_clock.advance(interval / 2)  # and this is the rest of it
    periodic.cancel()
    # Then every run began exactly on the fixed grid start + T * interval: the
    # runs' durations did not push the rate back
    assert [begun for _, begun in runs.runs] == [start + n * interval for n in range(1, 11)]
    assert runs.max_in_flight == 1


def test_a_slow_hand_over_does_not_accumulate_drift(driven: Any, fake_clock: FakeClock) -> None:
    # Given a listener that makes every hand-over of a run take most of an
    # interval (it runs on the timer's thread, as the run is queued)
    queue = driven()
    interval = 10.0

    def slow_listener(event: Event) -> None:
        if event.kind is EventKind.SUBMITTED:
            fake_clock.advance(7.0)  # a slow hand-over is the scenario

    queue.add_listener(slow_listener)
    runs = Runs(fake_clock)
    periodic, start = start_every(queue, interval, runs)
    # When twelve runs have started, the test moving time on by what is left
    # of each interval
    fake_clock.advance(interval)
    for n in range(1, 13):
        assert runs.reached(n).wait(WAIT)
        fake_clock.advance(interval - 7.0)
    periodic.cancel()
    # Then each started within its own interval: had each due time been
    # measured from the last hand-over, 7 s a run would have accumulated
    assert_on_the_grid(runs, interval, start, late=interval)
    assert all(skipped == 0 for skipped, _ in runs.runs)


def test_a_stalled_hand_over_resumes_on_the_grid_without_a_burst(
        driven: Any, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    # Given a first hand-over that holds the timer for 3.5 intervals
    caplog.set_level(logging.DEBUG, logger="taskqueue.periodic")
    queue = driven()
    interval = 10.0

    def stalling_listener(event: Event) -> None:
        if event.kind is EventKind.SUBMITTED and len(stalls) == 0:
            stalls.append(fake_clock())
            fake_clock.advance(3.5 * interval)  # the stall is the scenario

    stalls: List[float] = []
    queue.add_listener(stalling_listener)
    runs = Runs(fake_clock)
    periodic, start = start_every(queue, interval, runs)
    fake_clock.advance(interval)
    assert runs.reached(1).wait(WAIT)
    # When time goes on to the next grid point after the stall (it ended at
    # start + 4.5 intervals: the next is start + 5)
    assert fake_clock() == start + 4.5 * interval
    fake_clock.advance(0.5 * interval)
    assert runs.reached(2).wait(WAIT)
    periodic.cancel()
    # Then the ticks missed during the stall were counted as skipped, not
    # fired late one after another, and the second run waited for the next
    # due time on the original grid
    skipped, second = runs.runs[1]
    assert skipped == 3 and periodic.runs == 2
    assert second == start + 5 * interval
    assert runs.runs[0][1] >= start + interval  # the first ran once due (the stall came after)
    # and the debug log says which ticks (2 to 4) were skipped and why
    assert [r.getMessage().split(" skipped ")[1] for r in caplog.records
            if " skipped " in r.getMessage()] == ["ticks 2 to 4: its timer was held up"]


# -- busy runs are skipped, never stacked ------------------------------------------------


def test_a_run_held_at_a_gate_makes_later_ticks_skipped_not_stacked(
        driven: Any, fake_clock: FakeClock, gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    # Given a periodic whose first run blocks at a gate, and a spare worker
    caplog.set_level(logging.DEBUG, logger="taskqueue.periodic")
    queue = driven(workers=3)
    interval = 3.0
    runs = Runs(fake_clock, lambda n: gate.wait() if n == 1 else None)
    periodic, start = start_every(queue, interval, runs)
    fake_clock.advance(interval)
    gate.wait_for_arrivals(1)
    # When ten more intervals pass
    for _ in range(10):
        fake_clock.advance(interval)
    # Then those ticks were skipped and counted, and no run was queued for them
    assert periodic.skipped == 10
    assert periodic.runs == 1 and len(runs.runs) == 1
    assert queue.stats().submitted == 1 and queue.stats().pending == 0
    # and the debug log names each skipped tick (2 to 11: the first ran)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG] == [
        f"periodic {periodic.task.name} skipped tick {n}: its last run is not done"
        for n in range(2, 12)]
    # When the gate opens, runs resume on the grid, one at a time
    gate.open()
    assert queue.join(WAIT)
    for n in range(2, 5):
        fake_clock.advance(interval)
        assert runs.reached(n).wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    assert runs.max_in_flight == 1
    assert_on_the_grid(runs, interval, start, late=interval)
    assert periodic.runs == len(runs.runs) == 4
    # and runs plus skips are exactly the ticks that were due
    assert periodic.runs + periodic.skipped == round((fake_clock() - start) / interval)


def test_a_run_waiting_for_a_retry_counts_as_busy(driven: Any, fake_clock: FakeClock) -> None:
    # Given a periodic run that fails once and waits ten intervals for its retry
    queue = driven()
    interval = 3.0
    seen: List[Tuple[int, int, int]] = []

    def body(n: int) -> None:
        if n == 1:
            raise ValueError("first attempt fails")
        seen.append((n, periodic.skipped, queue.stats().submitted))

    runs = Runs(fake_clock, body)
    task = Task(runs, retries=1, backoff=Backoff.constant(10 * interval))
    queue.start()
    periodic = queue.every(interval, task)
    runs.periodic = periodic
    # When the retry runs (it is the second call), ten intervals later
    fake_clock.advance(interval)
    assert runs.reached(1).wait(WAIT) and queue.join(0) is False
    for _ in range(10):
        fake_clock.advance(interval)
    assert runs.reached(2).wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    # Then the ticks during the backoff were skipped, and no other run was queued
    n, skipped, submitted = seen[0]
    assert n == 2 and skipped >= 9 and submitted == 1


# -- stopping -----------------------------------------------------------------------------


def test_cancel_stops_further_runs(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven()
    interval = 2.0
    runs = Runs(fake_clock)
    periodic, _ = start_every(queue, interval, runs)
    for n in range(1, 4):
        fake_clock.advance(interval)
        assert runs.reached(n).wait(WAIT)
    # When it is cancelled
    periodic.cancel()
    assert periodic.cancelled
    at_cancel = len(runs.runs)
    # Then over the next ten intervals no run starts
    for _ in range(10):
        fake_clock.advance(interval)
    assert queue.join(WAIT)
    assert len(runs.runs) == at_cancel == periodic.runs
    periodic.cancel()  # idempotent
    assert "cancelled" in repr(periodic)


def test_shutdown_stops_periodic_runs(fake_clock: FakeClock) -> None:
    queue = TaskQueue(workers=2, name="ticking", clock=fake_clock, wait=fake_clock.wait)
    runs = Runs(fake_clock)
    periodic, _ = start_every(queue, 2, runs)
    for n in range(1, 4):
        fake_clock.advance(2)
        assert runs.reached(n).wait(WAIT)
    # When the queue shuts down (draining)
    queue.shutdown()
    # Then the periodic is cancelled, every run submitted ran, and the timer is gone
    assert periodic.cancelled
    assert periodic.runs == len(runs.runs) == queue.stats().submitted == queue.stats().succeeded
    assert not [t for t in threading.enumerate() if t.name.startswith("ticking-")]
    with pytest.raises(QueueClosed):
        queue.every(2, runs)


def test_shutdown_drains_a_run_in_progress(fake_clock: FakeClock, gate: Gate) -> None:
    queue = TaskQueue(workers=1, clock=fake_clock, wait=fake_clock.wait)
    runs = Runs(fake_clock, lambda n: gate.wait())
    periodic, _ = start_every(queue, 2, runs)
    fake_clock.advance(2)
    gate.wait_for_arrivals(1)
    closer = threading.Thread(target=queue.shutdown)
    closer.start()
    gate.open()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert periodic.cancelled and periodic.last is not None
    assert periodic.last.result(0) == "through"
    assert periodic.runs == len(runs.runs)


def test_shutdown_cancel_futures_stops_a_periodic(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven(workers=1)
    runs = Runs(fake_clock)
    periodic, _ = start_every(queue, 2, runs)
    for n in range(1, 3):
        fake_clock.advance(2)
        assert runs.reached(n).wait(WAIT)
    queue.shutdown(cancel_futures=True)
    assert periodic.cancelled
    stats = queue.stats()
    assert stats.pending == 0 and stats.submitted == periodic.runs
    assert stats.succeeded + stats.cancelled == periodic.runs


# -- runs are ordinary tasks ------------------------------------------------------------


def test_a_failing_periodic_run_is_retried_then_dead_lettered(
        driven: Any, fake_clock: FakeClock) -> None:
    # Given a periodic function that always fails, with one retry per run
    queue = driven(workers=2)
    failed = threading.Event()
    failures: List[Event] = []

    def on_event(event: Event) -> None:
        if event.kind is EventKind.FAILED:
            failures.append(event)
            if len(failures) >= 2:
                failed.set()

    queue.add_listener(on_event)

    def always_fails() -> None:
        raise ValueError("no")

    periodic = queue.every(3, Task(always_fails, retries=1, backoff=Backoff.none(),
                                   name="nightly"))
    # When two runs have failed for good
    tick_until(queue, fake_clock, 3, failed)
    periodic.cancel()
    queue.shutdown()
    # Then each was retried once, dead-lettered, and counted
    letters = queue.dead_letters()
    stats = queue.stats()
    assert len(letters) == stats.failed == periodic.runs >= 2
    assert stats.retried == periodic.runs and stats.succeeded == 0
    assert all(l.attempts == 2 and isinstance(l.exception, ValueError) for l in letters)
    assert all(l.task.name == "nightly" for l in letters)


def test_a_periodic_run_uses_the_queue_retry_defaults(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven(workers=1, retries=2, backoff=Backoff.none())
    calls: List[int] = []
    done = threading.Event()

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        done.set()
        return "ok"

    periodic = queue.every(2, flaky)
    fake_clock.advance(2)
    assert done.wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    first = queue.stats()
    assert first.failed == 0 and first.retried == 2 and first.succeeded == periodic.runs


def test_periodic_runs_emit_events(driven: Any, fake_clock: FakeClock) -> None:
    queue = driven(workers=1)
    kinds: List[EventKind] = []
    got = threading.Event()

    def listen(event: Event) -> None:
        kinds.append(event.kind)
        if event.kind is EventKind.SUCCEEDED:
            got.set()

    queue.add_listener(listen)
    periodic = queue.every(2, abs, -1)
    fake_clock.advance(2)
    assert got.wait(WAIT)
    periodic.cancel()
    assert {EventKind.SUBMITTED, EventKind.STARTED, EventKind.SUCCEEDED} <= set(kinds)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.01, float("nan"), float("inf"), -math.inf])
def test_a_bad_interval_value_is_a_value_error_naming_interval(
        make_queue: Callable[..., TaskQueue], bad: float) -> None:
    queue = make_queue()
    with pytest.raises(ValueError, match="interval"):
        queue.every(bad, abs, -1)
    assert queue.stats().submitted == 0


@pytest.mark.parametrize("bad", [None, "1", b"1", [1], True, object()])
def test_an_interval_that_is_not_a_number_is_a_type_error_naming_interval(
        make_queue: Callable[..., TaskQueue], bad: object) -> None:
    queue = make_queue()
    with pytest.raises(TypeError, match="interval"):
        queue.every(bad, abs, -1)  # type: ignore[arg-type]


def test_every_refuses_what_it_cannot_run(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue()
    with pytest.raises(TypeError):
        queue.every(1, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no further arguments"):
        queue.every(1, Task(abs), -1)


def test_every_refuses_a_task_with_a_delay_or_a_key(make_queue) -> None:
    queue = make_queue()
    for task in (Task(abs, (1,), delay=1), Task(abs, (1,), key="k")):
        with pytest.raises(ValueError, match="delay or key"):
            queue.every(1, task)


def test_a_cancelled_periodic_is_let_go_with_its_arguments_and_last_result(
        driven: Any, fake_clock: FakeClock) -> None:
    # A cancelled Periodic used to stay referenced by its queue for the
    # queue's life: 20,000 every() + cancel() kept 20,000 of them, each with
    # its function, arguments and last result.
    class Report:
        pass

    queue = driven(workers=1)
    payload = Report()
    payload_ref = weakref.ref(payload)
    ran = threading.Event()

    def body(report: Report) -> Report:
        ran.set()
        return report

    periodic = queue.every(1, body, payload)
    fake_clock.advance(1)
    assert ran.wait(WAIT)
    periodic.cancel()
    assert queue.join(WAIT)
    last = periodic.last
    assert last is not None and last.result(timeout=WAIT) is payload
    del periodic, payload, last
    gc.collect()
    assert payload_ref() is None

    refs = []
    for i in range(2000):
        argument = Report()
        refs.append(weakref.ref(argument))
        queue.every(3600, print, argument).cancel()
        del argument
    gc.collect()
    assert all(ref() is None for ref in refs)
