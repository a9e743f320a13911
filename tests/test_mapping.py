"""Tests for taskqueue.mapping: lazy_map keeps order, bounds what is in flight, cancels.

Most tests hand lazy_map a fake ``submit`` that returns plain Futures the
test settles itself, so what is pulled, submitted and cancelled is exact.
A few run it on a real TaskQueue, whose ``submit`` is what the pool will pass.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import math
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import pytest

from conftest import WAIT, FakeClock, Gate
from taskqueue import TaskHandle
from taskqueue.mapping import lazy_map


class Counted:
    """An input iterator that counts the items pulled from it."""

    def __init__(self, source: Iterable[Any]) -> None:
        self._source = iter(source)
        self.pulled = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> Any:
        item = next(self._source)
        self.pulled += 1
        return item


class FakeSubmit:
    """A fake ``submit``: records every call and returns a plain Future.

    With ``run=True`` the call runs at once and its Future is settled;
    otherwise the Future stays pending until the test settles it.
    """

    def __init__(self, run: bool = False) -> None:
        self.run = run
        self.calls: List[Tuple[Any, ...]] = []
        self.futures: List[cf.Future] = []

    def __call__(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        self.calls.append(args)
        self.futures.append(future)
        if self.run:
            try:
                future.set_result(fn(*args))
            except Exception as exc:
                future.set_exception(exc)
        return future


class RecordingSubmit:
    """Wraps a queue's submit and keeps every handle it returned, in order."""

    def __init__(self, submit: Callable[..., TaskHandle]) -> None:
        self._submit = submit
        self.handles: List[TaskHandle] = []

    def __call__(self, fn: Callable[..., Any], *args: Any) -> TaskHandle:
        handle = self._submit(fn, *args)
        self.handles.append(handle)
        return handle


class TimedFuture(cf.Future):
    """A settled Future that records the timeout each ``result`` call gets."""

    def __init__(self, value: Any, timeouts: List[Optional[float]]) -> None:
        super().__init__()
        self.set_result(value)
        self._timeouts = timeouts

    def result(self, timeout: Optional[float] = None) -> Any:
        self._timeouts.append(timeout)
        return super().result(timeout)


def square(x: int) -> int:
    return x * x


# -- order and laziness --------------------------------------------------------

@pytest.mark.timeout(30)
def test_results_come_in_input_order_when_tasks_finish_in_reverse(make_queue) -> None:
    # Given four tasks, each of which finishes only after the one behind it
    count = 4
    finished_event = [threading.Event() for _ in range(count)]
    finished: List[int] = []

    def work(i: int) -> int:
        if i + 1 < count and not finished_event[i + 1].wait(WAIT):
            raise TimeoutError(f"task {i + 1} never finished")
        finished.append(i)
        finished_event[i].set()
        return i * 10

    queue = make_queue(workers=count)
    # When they are mapped with room for all of them at once
    results = list(lazy_map(queue.submit, work, (range(count),), buffersize=count))
    # Then they finished last-first, and the results are still first-first
    assert finished == [3, 2, 1, 0]
    assert results == [0, 10, 20, 30]


def test_the_first_batch_is_submitted_before_any_result_is_asked_for() -> None:
    submit, source = FakeSubmit(), Counted(range(100))
    results = lazy_map(submit, square, (source,), buffersize=5)
    assert source.pulled == 5
    assert submit.calls == [(0,), (1,), (2,), (3,), (4,)]
    results.close()


def test_each_result_handed_out_lets_exactly_one_more_item_in() -> None:
    submit, source = FakeSubmit(run=True), Counted(range(20))
    results = lazy_map(submit, square, (source,), buffersize=3)
    for k in range(1, 21):
        assert next(results) == (k - 1) ** 2
        assert source.pulled == min(20, k + 3)
        assert len(submit.calls) == source.pulled
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.timeout(30)
def test_on_a_real_queue_k_results_pull_exactly_k_plus_buffersize_items(make_queue) -> None:
    queue = make_queue(workers=2)
    source = Counted(range(50))
    results = lazy_map(queue.submit, square, (source,), buffersize=3)
    assert source.pulled == 3
    for k, result in enumerate(results, start=1):
        assert result == (k - 1) ** 2
        assert source.pulled == min(50, k + 3)
        assert queue.stats().submitted == source.pulled
    assert source.pulled == 50


@pytest.mark.timeout(60)
def test_ten_million_items_are_pulled_lazily_and_the_rest_cancelled_on_close(make_queue) -> None:
    # Given a ten-million-item input, whose items past the first few thousand
    # block on a gate, so that what is in flight at the end stays put
    consumed, buffersize = 3000, 64
    gate = Gate()

    def work(x: int) -> int:
        if x >= consumed:
            gate.wait()
        return x

    queue = make_queue(workers=2)
    submit = RecordingSubmit(queue.submit)
    source = Counted(range(10_000_000))
    try:
        # When only the first few thousand results are consumed
        results = lazy_map(submit, work, (source,), buffersize=buffersize)
        assert list(itertools.islice(results, consumed)) == list(range(consumed))
        # Then only a buffer's worth more was pulled, and submitted
        assert source.pulled == consumed + buffersize
        assert len(submit.handles) == consumed + buffersize
        # And when the consumer stops, with both workers held at the gate,
        gate.wait_for_arrivals(2)
        results.close()
        # every task still in flight is cancelled, except the two running
        in_flight = submit.handles[consumed:]
        assert [h.cancelled() for h in in_flight] == [False, False] + [True] * (buffersize - 2)
        assert all(h.running() for h in in_flight[:2])
        assert queue.stats().cancelled == buffersize - 2
        assert source.pulled == consumed + buffersize
    finally:
        gate.open()


def test_dropping_an_unread_iterator_cancels_nothing_and_warns_if_input_was_left(
        caplog: pytest.LogCaptureFixture) -> None:
    # CPython #11777: executor.map(fn, items) used for its side effects must
    # run its work even though its result is never read.
    submit = FakeSubmit()
    results = lazy_map(submit, square, (range(10),), buffersize=4)
    del results
    gc.collect()
    assert len(submit.futures) == 4
    assert not any(f.cancelled() for f in submit.futures)
    assert "dropped unread" in caplog.text and "first 4 items" in caplog.text


def test_dropping_an_unread_iterator_over_a_short_input_is_silent(
        caplog: pytest.LogCaptureFixture) -> None:
    submit = FakeSubmit()
    results = lazy_map(submit, square, (range(3),), buffersize=4)
    del results
    gc.collect()
    assert len(submit.futures) == 3 and not any(f.cancelled() for f in submit.futures)
    assert "dropped unread" not in caplog.text


def test_on_a_real_queue_an_unread_map_runs_every_item(make_queue) -> None:
    queue = make_queue(workers=2)
    seen: List[int] = []
    queue.map(seen.append, range(10))  # the result is never kept
    queue.shutdown(wait=True)
    assert sorted(seen) == list(range(10))


def test_dropping_an_iterator_after_its_first_result_cancels_the_rest() -> None:
    submit = FakeSubmit()
    results = lazy_map(submit, square, (range(10),), buffersize=4)
    submit.futures[0].set_result(0)
    assert next(results) == 0
    del results
    gc.collect()
    assert [f.cancelled() for f in submit.futures] == [False, True, True, True, True]


def test_the_iterator_keeps_no_reference_to_a_result_it_handed_out(make_queue) -> None:
    # CPython #14406, test_free_reference: once the caller drops a result,
    # nothing in the iterator keeps it alive.
    class Big:
        pass

    queue = make_queue(workers=2)
    results = queue.map(lambda _: Big(), range(5))
    for _ in range(5):
        obj = next(results)
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_closing_after_some_results_cancels_only_those_not_handed_out() -> None:
    submit = FakeSubmit()
    results = lazy_map(submit, square, (range(10),), buffersize=3)
    for i in range(2):
        submit.futures[i].set_result(i)
        assert next(results) == i
    results.close()
    assert [f.cancelled() for f in submit.futures] == [False, False, True, True, True]


# -- failures ------------------------------------------------------------------

def test_the_first_failure_raises_when_reached_and_cancels_the_rest() -> None:
    submit = FakeSubmit()
    results = lazy_map(submit, square, (range(10),), buffersize=6)
    # Given item 3 failed (and item 4 before it, in time), items 0-2 succeeded
    submit.futures[4].set_exception(KeyError("four"))
    submit.futures[3].set_exception(ValueError("three"))
    for i in range(3):
        submit.futures[i].set_result(i)
    # Then the earlier results come first, and item 3's error when it is reached
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(results)
    # And the tasks still pending were cancelled; the iterator is finished
    assert [f.cancelled() for f in submit.futures[5:]] == [True] * 4
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.timeout(30)
def test_on_a_real_queue_a_failed_item_raises_its_exception_after_earlier_results(make_queue) -> None:
    def work(x: int) -> int:
        if x == 2:
            raise ArithmeticError(f"item {x} failed")
        return x

    queue = make_queue(workers=2)
    results = lazy_map(queue.submit, work, (range(5),), buffersize=2)
    assert next(results) == 0
    assert next(results) == 1
    with pytest.raises(ArithmeticError, match="item 2 failed"):
        next(results)


def test_an_input_that_raises_in_the_first_batch_cancels_what_was_submitted() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise LookupError("input broke")

    submit = FakeSubmit()
    with pytest.raises(LookupError, match="input broke"):
        lazy_map(submit, square, (source(),), buffersize=5)
    assert len(submit.futures) == 2
    assert all(f.cancelled() for f in submit.futures)


def test_an_input_that_raises_later_raises_from_the_iterator_and_cancels() -> None:
    def source() -> Iterator[int]:
        yield from range(3)
        raise LookupError("input broke")

    submit = FakeSubmit()
    results = lazy_map(submit, square, (source(),), buffersize=3)
    submit.futures[0].set_result(0)
    with pytest.raises(LookupError, match="input broke"):
        next(results)
    assert [f.cancelled() for f in submit.futures] == [False, True, True]


# -- timeout -------------------------------------------------------------------

def test_a_result_not_ready_by_the_deadline_raises_timeout_and_cancels() -> None:
    submit = FakeSubmit()
    results = lazy_map(submit, square, (range(5),), buffersize=3, timeout=0)
    with pytest.raises(cf.TimeoutError):
        next(results)
    assert all(f.cancelled() for f in submit.futures)


@pytest.mark.timeout(30)
def test_on_a_real_queue_a_held_task_times_out(make_queue, gate: Gate) -> None:
    queue = make_queue(workers=1)
    results = lazy_map(queue.submit, gate.wait, (range(3),), buffersize=2, timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        next(results)


def test_the_timeout_is_measured_from_the_call_not_per_result() -> None:
    # Given settled futures that record the timeout each result() call gets
    clock, timeouts = FakeClock(), []  # type: ignore[var-annotated]

    def submit(fn: Callable[..., Any], x: int) -> cf.Future:
        return TimedFuture(fn(x), timeouts)

    results = lazy_map(submit, square, (range(4),), buffersize=2, timeout=10, clock=clock)
    # When the clock moves 3 seconds before each result is asked for
    for _ in range(4):
        clock.advance(3)
        next(results)
    # Then each wait gets what is left of the 10 seconds, and none once past
    assert timeouts == [7.0, 4.0, 1.0, 0.0]


def test_past_the_deadline_a_ready_result_is_still_handed_out() -> None:
    clock = FakeClock()
    results = lazy_map(FakeSubmit(run=True), square, (range(2),), buffersize=1,
                       timeout=1, clock=clock)
    clock.advance(5)
    assert list(results) == [0, 1]


# -- arguments -----------------------------------------------------------------

@pytest.mark.parametrize("buffersize, error", [
    (0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
    (None, TypeError), ("4", TypeError),
])
def test_a_bad_buffersize_is_refused_before_anything_is_pulled(buffersize: Any, error: type) -> None:
    submit, source = FakeSubmit(), Counted(range(10))
    with pytest.raises(error, match="buffersize"):
        lazy_map(submit, square, (source,), buffersize=buffersize)
    assert submit.calls == [] and source.pulled == 0


@pytest.mark.parametrize("timeout, error", [
    (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError),
])
def test_a_bad_timeout_is_refused_before_anything_is_pulled(timeout: Any, error: type) -> None:
    submit, source = FakeSubmit(), Counted(range(10))
    with pytest.raises(error, match="timeout"):
        lazy_map(submit, square, (source,), buffersize=2, timeout=timeout)
    assert submit.calls == [] and source.pulled == 0


def test_a_fn_that_is_not_callable_is_refused_before_anything_is_pulled() -> None:
    submit, source = FakeSubmit(), Counted(range(10))
    with pytest.raises(TypeError, match="fn must be callable"):
        lazy_map(submit, 42, (source,), buffersize=2)  # type: ignore[arg-type]
    assert submit.calls == [] and source.pulled == 0


def test_several_iterables_are_zipped_and_the_shortest_ends_it() -> None:
    submit = FakeSubmit(run=True)
    results = lazy_map(submit, "{}{}{}".format, ("abc", "de", itertools.count()), buffersize=2)
    assert list(results) == ["ad0", "be1"]
    assert submit.calls == [("a", "d", 0), ("b", "e", 1)]


def test_an_empty_input_submits_nothing_and_yields_nothing() -> None:
    submit = FakeSubmit()
    assert list(lazy_map(submit, square, ((),), buffersize=4)) == []
    assert list(lazy_map(submit, square, (), buffersize=4)) == []
    assert submit.calls == []
