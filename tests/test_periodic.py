"""Periodic work: fixed-rate runs, skipped (never stacked) when busy, stopped by cancel or shutdown.

Where a test must know that some time has passed on the queue's scheduler,
it submits a delayed task and waits for it: the scheduler hands items over
in due order, so once that task runs, every tick due before it has been
handled. Run bodies record ``time.monotonic()``; due times are checked
against readings taken before and after ``every()`` was called.
"""

from __future__ import annotations

import gc
import math
import threading
import time
import weakref
from typing import Any, Callable, List, Tuple

import pytest

from conftest import WAIT, Gate
from taskqueue import Backoff, Event, EventKind, QueueClosed, Task, TaskQueue
from taskqueue.periodic import Periodic

pytestmark = pytest.mark.timeout(30)


class Runs:
    """A periodic body: records each run's start and the skipped count it saw.

    ``runs[n - 1]`` is ``(skipped, start)`` for the n-th run; ``reached(n)``
    is set once n runs have started. Tracks how many runs overlap.
    """

    def __init__(self, body: Callable[[int], Any] = lambda n: None) -> None:
        self.periodic: Periodic | None = None
        self.runs: List[Tuple[int, float]] = []
        self.in_flight = 0
        self.max_in_flight = 0
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
        start = time.monotonic()
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


def start_every(queue: TaskQueue, interval: float, runs: Runs, *args: Any, **kwargs: Any
                ) -> Tuple[Periodic, float, float]:
    queue.start()
    before = time.monotonic()
    periodic = queue.every(interval, runs, *args, **kwargs)
    after = time.monotonic()
    runs.periodic = periodic
    return periodic, before, after


def assert_on_the_grid(runs: Runs, interval: float, before: float, after: float, late: float) -> None:
    """Run n started at or after its due time, start + T * interval, and less than ``late`` after it.

    T = n + the skips seen at its start: every tick up to T was either run or
    skipped before run n began. A rate that drifts (each due time measured
    from the previous hand-over) makes the lateness grow run by run.
    """
    for n, (skipped, start) in enumerate(runs.runs, 1):
        tick = n + skipped
        assert start >= before + tick * interval, f"run {n} started before tick {tick} was due"
        assert start < after + tick * interval + late, (
            f"run {n} started {start - after - tick * interval:.3f}s after tick {tick} was due")


def wait_on_the_scheduler(queue: TaskQueue, seconds: float) -> None:
    """Return once the queue's scheduler has handled everything due ``seconds`` from now."""
    assert queue.submit(Task(abs, (-1,), delay=seconds)).result(WAIT) == 1


# -- runs and their due times ----------------------------------------------------------


def test_every_runs_the_function_with_its_arguments_and_counts_runs(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=2)
    seen: List[Tuple[Any, ...]] = []
    runs = Runs(lambda n: seen.append(n))
    periodic, _, _ = start_every(queue, 0.03, runs, 1, two=2)
    assert isinstance(periodic, Periodic) and periodic.interval == 0.03
    assert runs.reached(5).wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    assert periodic.runs == len(runs.runs) >= 5
    stats = queue.stats()
    assert stats.submitted == stats.succeeded == periodic.runs
    assert periodic.last is not None and periodic.last.result(0) is None


def test_every_passes_args_and_kwargs(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    got: List[Any] = []
    done = threading.Event()

    def body(*args: Any, **kwargs: Any) -> None:
        got.append((args, kwargs))
        done.set()

    periodic = queue.every(0.02, body, 1, "a", key="v")
    assert done.wait(WAIT)
    periodic.cancel()
    assert got[0] == ((1, "a"), {"key": "v"})


def test_every_run_starts_at_or_after_its_due_time(make_queue: Callable[..., TaskQueue]) -> None:
    # Given runs that themselves take half the interval
    queue = make_queue(workers=2)
    runs = Runs(lambda n: time.sleep(0.04))  # the run's own duration is the scenario
    interval = 0.08
    periodic, before, after = start_every(queue, interval, runs)
    assert runs.reached(10).wait(WAIT)
    periodic.cancel()
    # Then every run began on the fixed grid start + T * interval, never early,
    # and the 10th no later than a generous bound after its due time: the
    # runs' durations did not push the rate back
    assert_on_the_grid(runs, interval, before, after, late=0.5)
    skipped10, start10 = runs.runs[9]
    assert start10 < after + (10 + skipped10) * interval + 0.5
    assert runs.max_in_flight == 1


def test_a_slow_hand_over_does_not_accumulate_drift(make_queue: Callable[..., TaskQueue]) -> None:
    # Given a listener that makes every hand-over of a run take most of an
    # interval (it runs on the scheduler's thread, after the run is queued)
    queue = make_queue(workers=2)
    interval = 0.1

    def slow_listener(event: Event) -> None:
        if event.kind is EventKind.SUBMITTED:
            time.sleep(0.07)  # a slow hand-over is the scenario

    queue.add_listener(slow_listener)
    runs = Runs()
    periodic, before, after = start_every(queue, interval, runs)
    # When twelve runs have started
    assert runs.reached(12).wait(WAIT)
    periodic.cancel()
    # Then each still started near its own due time
    assert_on_the_grid(runs, interval, before, after, late=0.5)
    # and the 12th within a generous bound of start + 12 intervals: had each
    # due time been measured from the last hand-over, 11 * 0.07 s would have
    # accumulated by now (a machine stalled long enough to skip 5 ticks
    # could fail this; the hand-overs alone leave 0.03 s of slack a tick)
    assert runs.runs[11][1] < after + 12 * interval + 0.5


def test_a_stalled_hand_over_resumes_on_the_grid_without_a_burst(
        make_queue: Callable[..., TaskQueue]) -> None:
    # Given a first hand-over that holds the scheduler for 3.5 intervals
    queue = make_queue(workers=2)
    interval = 0.1
    stall_ended: List[float] = []

    def stalling_listener(event: Event) -> None:
        if event.kind is EventKind.SUBMITTED and not stall_ended:
            time.sleep(3.5 * interval)  # the stall is the scenario
            stall_ended.append(time.monotonic())

    queue.add_listener(stalling_listener)
    runs = Runs()
    periodic, before, after = start_every(queue, interval, runs)
    # When the runs after the stall have started
    assert runs.reached(3).wait(WAIT)
    periodic.cancel()
    # Then the ticks missed during the stall were counted as skipped, not
    # fired late one after another, and the next run waited for the next
    # due time on the original grid
    skipped, second = runs.runs[1]
    assert skipped >= 3
    next_grid_point = before + math.ceil((stall_ended[0] - after) / interval) * interval
    assert second >= next_grid_point
    assert_on_the_grid(runs, interval, before, after, late=0.5)


# -- busy runs are skipped, never stacked ------------------------------------------------


def test_a_run_held_at_a_gate_makes_later_ticks_skipped_not_stacked(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a periodic whose first run blocks at a gate, and a spare worker
    queue = make_queue(workers=3)
    interval = 0.03
    runs = Runs(lambda n: gate.wait() if n == 1 else None)
    periodic, before, after = start_every(queue, interval, runs)
    gate.wait_for_arrivals(1)
    # When at least ten more intervals pass on the queue's scheduler
    wait_on_the_scheduler(queue, 10 * interval)
    # Then those ticks were skipped and counted, and no run was queued for them
    assert periodic.skipped >= 8
    assert periodic.runs == 1 and len(runs.runs) == 1
    assert queue.stats().submitted == 2  # the held run and the scheduler wait
    assert queue.stats().pending == 0
    # When the gate opens, runs resume on the grid, one at a time
    gate.open()
    assert runs.reached(4).wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    assert runs.max_in_flight == 1
    assert_on_the_grid(runs, interval, before, after, late=1.0)
    assert periodic.runs == len(runs.runs)
    # and runs plus skips never exceed the ticks that were due
    assert periodic.runs + periodic.skipped <= (time.monotonic() - before) / interval + 1


def test_a_run_waiting_for_a_retry_counts_as_busy(make_queue: Callable[..., TaskQueue]) -> None:
    # Given a periodic run that fails once and waits ten intervals for its retry
    queue = make_queue(workers=2)
    interval = 0.03
    seen: List[Tuple[int, int, int]] = []

    def body(n: int) -> None:
        if n == 1:
            raise ValueError("first attempt fails")
        seen.append((n, periodic.skipped, queue.stats().submitted))

    runs = Runs(body)
    task = Task(runs, retries=1, backoff=Backoff.constant(10 * interval))
    queue.start()
    periodic = queue.every(interval, task)
    runs.periodic = periodic
    # When the retry runs (it is the second call)
    assert runs.reached(2).wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    # Then the ticks during the backoff were skipped, and no other run was queued
    n, skipped, submitted = seen[0]
    assert n == 2 and skipped >= 8 and submitted == 1


# -- stopping -----------------------------------------------------------------------------


def test_cancel_stops_further_runs(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=2)
    interval = 0.02
    runs = Runs()
    periodic, _, _ = start_every(queue, interval, runs)
    assert runs.reached(3).wait(WAIT)
    # When it is cancelled
    periodic.cancel()
    assert periodic.cancelled
    at_cancel = len(runs.runs)
    # Then over the next ten intervals at most the one run already on its way starts
    wait_on_the_scheduler(queue, 10 * interval)
    assert queue.join(WAIT)
    assert len(runs.runs) <= at_cancel + 1
    assert periodic.runs == len(runs.runs)
    periodic.cancel()  # idempotent
    assert "cancelled" in repr(periodic)


def test_shutdown_stops_periodic_runs() -> None:
    queue = TaskQueue(workers=2, name="ticking")
    runs = Runs()
    periodic, _, _ = start_every(queue, 0.02, runs)
    assert runs.reached(3).wait(WAIT)
    # When the queue shuts down (draining)
    queue.shutdown()
    # Then the periodic is cancelled, every run submitted ran, and the timer is gone
    assert periodic.cancelled
    assert periodic.runs == len(runs.runs) == queue.stats().submitted == queue.stats().succeeded
    assert not [t for t in threading.enumerate() if t.name.startswith("ticking-")]
    with pytest.raises(QueueClosed):
        queue.every(0.02, runs)


def test_shutdown_drains_a_run_in_progress(gate: Gate) -> None:
    queue = TaskQueue(workers=1)
    runs = Runs(lambda n: gate.wait())
    periodic, _, _ = start_every(queue, 0.02, runs)
    gate.wait_for_arrivals(1)
    closer = threading.Thread(target=queue.shutdown)
    closer.start()
    gate.open()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert periodic.cancelled and periodic.last is not None
    assert periodic.last.result(0) == "through"
    assert periodic.runs == len(runs.runs)


def test_shutdown_cancel_futures_stops_a_periodic(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    runs = Runs()
    periodic, _, _ = start_every(queue, 0.02, runs)
    assert runs.reached(2).wait(WAIT)
    queue.shutdown(cancel_futures=True)
    assert periodic.cancelled
    stats = queue.stats()
    assert stats.pending == 0 and stats.submitted == periodic.runs
    assert stats.succeeded + stats.cancelled == periodic.runs


# -- runs are ordinary tasks ------------------------------------------------------------


def test_a_failing_periodic_run_is_retried_then_dead_lettered(
        make_queue: Callable[..., TaskQueue]) -> None:
    # Given a periodic function that always fails, with one retry per run
    queue = make_queue(workers=2)
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

    periodic = queue.every(0.03, Task(always_fails, retries=1, backoff=Backoff.none(),
                                      name="nightly"))
    # When two runs have failed for good
    assert failed.wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    # Then each was retried once, dead-lettered, and counted
    letters = queue.dead_letters()
    stats = queue.stats()
    assert len(letters) == stats.failed == periodic.runs >= 2
    assert stats.retried == periodic.runs and stats.succeeded == 0
    assert all(l.attempts == 2 and isinstance(l.exception, ValueError) for l in letters)
    assert all(l.task.name == "nightly" for l in letters)


def test_a_periodic_run_uses_the_queue_retry_defaults(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, retries=2, backoff=Backoff.none())
    calls: List[int] = []
    done = threading.Event()

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        done.set()
        return "ok"

    periodic = queue.every(0.02, flaky)
    assert done.wait(WAIT)
    periodic.cancel()
    queue.shutdown()
    first = queue.stats()
    assert first.failed == 0 and first.retried == 2 and first.succeeded == periodic.runs


def test_periodic_runs_emit_events(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    kinds: List[EventKind] = []
    got = threading.Event()

    def listen(event: Event) -> None:
        kinds.append(event.kind)
        if event.kind is EventKind.SUCCEEDED:
            got.set()

    queue.add_listener(listen)
    periodic = queue.every(0.02, abs, -1)
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
        make_queue: Callable[..., TaskQueue]) -> None:
    # A cancelled Periodic used to stay referenced by its queue for the
    # queue's life: 20,000 every() + cancel() kept 20,000 of them, each with
    # its function, arguments and last result.
    class Report:
        pass

    queue = make_queue(workers=1)
    payload = Report()
    payload_ref = weakref.ref(payload)
    ran = threading.Event()

    def body(report: Report) -> Report:
        ran.set()
        return report

    periodic = queue.every(0.01, body, payload)
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
