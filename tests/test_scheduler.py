"""Tests for taskqueue.scheduler: driven by a fake clock through run_due().

Only the last tests start the real timer thread; they wait on Events with
timeouts, never on sleeps.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
import time
import tracemalloc
from typing import Any, List

import pytest

from conftest import FakeClock
from taskqueue import scheduler as scheduler_module
from taskqueue.scheduler import Scheduler

WAIT = 5.0


class Collector:
    """An on_due that records what it is handed."""

    def __init__(self) -> None:
        self.items: List[Any] = []

    def __call__(self, item: Any) -> None:
        self.items.append(item)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=100.0)


@pytest.fixture
def handed() -> Collector:
    return Collector()


@pytest.fixture
def scheduler(clock: FakeClock, handed: Collector) -> Scheduler:
    return Scheduler(handed, clock=clock)


def test_run_due_with_nothing_held(scheduler, handed):
    assert scheduler.run_due() is None
    assert handed.items == []
    assert len(scheduler) == 0


def test_due_items_come_out_in_due_time_order(scheduler, clock, handed):
    for item, due in [("c", 103.0), ("a", 101.0), ("d", 104.0), ("b", 102.0)]:
        assert scheduler.schedule(item, due) is not None
    assert len(scheduler) == 4
    clock.advance(110.0 - clock())
    assert scheduler.run_due() is None
    assert handed.items == ["a", "b", "c", "d"]
    assert len(scheduler) == 0


def test_equal_due_times_come_out_first_in_first_out(scheduler, clock, handed):
    for item in ["x1", "x2", "x3", "x4", "x5"]:
        scheduler.schedule(item, 101.0)
    scheduler.schedule("early", 100.5)
    scheduler.schedule("x6", 101.0)
    clock.advance(101.0 - clock())
    scheduler.run_due()
    assert handed.items == ["early", "x1", "x2", "x3", "x4", "x5", "x6"]


def test_equal_items_are_all_kept_and_handed_over(scheduler, clock, handed):
    item = {"same": "object"}
    scheduler.schedule(item, 101.0)
    scheduler.schedule(item, 101.0)
    clock.advance(101.0 - clock())
    scheduler.run_due()
    assert handed.items == [item, item]


def test_nothing_is_handed_over_before_it_is_due(scheduler, clock, handed):
    scheduler.schedule("soon", 101.0)
    scheduler.schedule("later", 105.0)

    clock.advance(100.999 - clock())
    assert scheduler.run_due() == 101.0
    assert handed.items == []

    clock.advance(101.0 - clock())  # due exactly now counts as due
    assert scheduler.run_due() == 105.0
    assert handed.items == ["soon"]

    clock.advance(104.0 - clock())
    assert scheduler.run_due() == 105.0
    assert handed.items == ["soon"]
    assert len(scheduler) == 1

    clock.advance(200.0 - clock())
    assert scheduler.run_due() is None
    assert handed.items == ["soon", "later"]


def test_an_item_due_in_the_past_is_handed_over_at_once(scheduler, handed):
    scheduler.schedule("overdue", 50.0)
    scheduler.run_due()
    assert handed.items == ["overdue"]


def test_on_due_may_schedule_again(clock):
    # Given an on_due that reschedules every item one second later
    handed: List[Any] = []

    def on_due(item):
        handed.append(item)
        scheduler.schedule(item, clock() + 1.0)

    scheduler = Scheduler(on_due, clock=clock)
    scheduler.schedule("tick", 100.0)

    # When the clock moves on twice
    scheduler.run_due()
    assert len(scheduler) == 1
    clock.advance(100.5 - clock())
    scheduler.run_due()
    clock.advance(101.0 - clock())
    scheduler.run_due()

    # Then it was handed over each time it was due, and is held again
    assert handed == ["tick", "tick"]
    assert len(scheduler) == 1
    assert scheduler.seal() == ["tick"]


def test_run_due_reports_an_item_that_on_due_scheduled(clock):
    scheduler = Scheduler(lambda item: scheduler.schedule(item, clock() + 1.0), clock=clock)
    scheduler.schedule("tick", 100.0)
    assert scheduler.run_due() == 101.0  # "the due time of the next item still held"


def test_seal_returns_held_items_earliest_first_and_refuses_new_ones(scheduler, clock, handed):
    scheduler.schedule("b", 102.0)
    scheduler.schedule("a", 101.0)
    scheduler.schedule("b2", 102.0)
    assert scheduler.seal() == ["a", "b", "b2"]
    assert len(scheduler) == 0

    assert scheduler.schedule("late", 101.0) is None
    assert len(scheduler) == 0
    clock.advance(1000.0 - clock())
    assert scheduler.run_due() is None
    assert handed.items == []
    assert scheduler.seal() == []


def test_a_raising_on_due_is_logged_and_the_others_still_go(clock, caplog):
    # Given an on_due that fails on some items, even with a BaseException
    caplog.set_level(logging.ERROR, logger="taskqueue")
    handed: List[Any] = []

    def on_due(item):
        if item == "bad":
            raise RuntimeError("cannot take it")
        if item == "worse":
            raise KeyboardInterrupt
        handed.append(item)

    scheduler = Scheduler(on_due, clock=clock, name="sched-under-test")
    for item, due in [("a", 100.0), ("bad", 100.0), ("b", 100.0), ("worse", 100.0), ("c", 100.0)]:
        scheduler.schedule(item, due)

    # When they fall due
    scheduler.run_due()

    # Then the good ones were handed over and each failure was logged
    assert handed == ["a", "b", "c"]
    records = [r for r in caplog.records if r.name.startswith("taskqueue")]
    assert len(records) == 2
    assert [r.exc_info[0] for r in records] == [RuntimeError, KeyboardInterrupt]
    assert all(r.levelno == logging.ERROR for r in records)
    assert "'bad'" in records[0].getMessage()
    assert "sched-under-test" in records[0].getMessage()


def test_a_cancelled_item_is_never_handed_over_and_not_counted(scheduler, clock, handed):
    keep = scheduler.schedule("keep", 101.0)
    drop = scheduler.schedule("drop", 101.0)
    assert scheduler.cancel(drop) is True
    assert scheduler.cancel(drop) is False  # once
    assert len(scheduler) == 1
    clock.advance(101.0 - clock())
    assert scheduler.run_due() is None
    assert handed.items == ["keep"]
    assert scheduler.cancel(keep) is False  # already handed over


def test_a_cancelled_item_is_let_go_at_once_not_at_its_due_time(scheduler):
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    entry = scheduler.schedule(payload, 1e9)
    del payload
    scheduler.cancel(entry)
    gc.collect()
    assert ref() is None


def test_many_cancelled_items_do_not_pile_up_until_their_due_times(scheduler, clock, handed):
    scheduler.schedule("live", 150.0)
    # What the scheduler's own code holds: not what other threads of the
    # test process (an earlier test's) allocate meanwhile.
    mine = [tracemalloc.Filter(True, scheduler_module.__file__)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(mine)
        for i in range(10_000):
            scheduler.cancel(scheduler.schedule(f"item {i}", 200.0 + i))
        after = tracemalloc.take_snapshot().filter_traces(mine)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # Kept until due, 10,000 entries would hold about 1 MB; swept, a few KB.
    assert grown < 64 * 1024, grown
    assert len(scheduler) == 1
    clock.advance(1e6 - clock())
    scheduler.run_due()
    assert handed.items == ["live"]


def test_a_cancelled_earliest_item_does_not_set_the_next_due_time(scheduler, clock):
    first = scheduler.schedule("first", 101.0)
    scheduler.schedule("second", 105.0)
    scheduler.cancel(first)
    assert scheduler.run_due() == 105.0


def test_sealing_skips_cancelled_items(scheduler):
    scheduler.cancel(scheduler.schedule("gone", 101.0))
    scheduler.schedule("held", 102.0)
    assert scheduler.seal() == ["held"]
    assert len(scheduler) == 0


# -- the real timer thread ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_an_item_due_centuries_away_does_not_stop_the_timer() -> None:
    # An item due beyond threading.TIMEOUT_MAX used to kill the timer thread
    # (OverflowError in Condition.wait): nothing was handed over after it.
    fired = threading.Event()
    scheduler = Scheduler(lambda item: item(), name="far-timer")
    scheduler.start()
    try:
        scheduler.schedule(lambda: None, time.monotonic() + 1e12)
        assert timer_threads("far-timer")
        scheduler.schedule(fired.set, time.monotonic())
        assert fired.wait(WAIT)
        assert timer_threads("far-timer")[0].is_alive()
    finally:
        scheduler.stop(WAIT)


def timer_threads(name: str) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_timer_thread_hands_over_a_due_item_and_stops():
    # Given a started scheduler whose on_due sets an Event
    fired = threading.Event()
    handed: List[Any] = []

    def on_due(item):
        handed.append((item, threading.current_thread().name))
        fired.set()

    name = "test-sched-timer-1"
    scheduler = Scheduler(on_due, name=name)
    scheduler.start()
    try:
        [thread] = timer_threads(name)
        assert thread.daemon

        # When an item falls due now
        assert scheduler.schedule("now", time.monotonic())

        # Then the timer thread hands it over
        assert fired.wait(WAIT), "the timer thread never handed the item over"
        assert handed == [("now", name)]
    finally:
        scheduler.stop(timeout=WAIT)
    assert not thread.is_alive()
    assert timer_threads(name) == []


def test_timer_thread_reaims_at_a_new_earliest_item():
    # Given a timer waiting for an item due far in the future
    fired = threading.Event()
    handed: List[Any] = []

    def on_due(item):
        handed.append(item)
        fired.set()

    scheduler = Scheduler(on_due, name="test-sched-timer-2")
    scheduler.start()
    try:
        scheduler.schedule("far", time.monotonic() + 3600)

        # When an item due now is scheduled
        scheduler.schedule("now", time.monotonic())

        # Then it is handed over without waiting for the far one
        assert fired.wait(WAIT), "the timer did not re-aim at the earlier item"
        assert handed == ["now"]
    finally:
        scheduler.stop(timeout=WAIT)

    # And stop() left the far item held
    assert len(scheduler) == 1
    assert scheduler.seal() == ["far"]


def test_start_twice_starts_one_thread_and_start_after_stop_starts_none():
    name = "test-sched-timer-3"
    scheduler = Scheduler(lambda item: None, name=name)
    scheduler.start()
    try:
        scheduler.start()
        assert len(timer_threads(name)) == 1
    finally:
        scheduler.stop(timeout=WAIT)
    assert timer_threads(name) == []
    scheduler.start()
    assert timer_threads(name) == []


def test_stop_without_start_returns():
    scheduler = Scheduler(lambda item: None, name="test-sched-timer-4")
    scheduler.stop(timeout=WAIT)
    assert timer_threads("test-sched-timer-4") == []
