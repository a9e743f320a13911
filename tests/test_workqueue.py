"""Tests for taskqueue.workqueue: admission, closing, sealing and waiting.

Producers that must block run in threads; the tests wait on Events and join
with timeouts, so a bug fails a test instead of hanging it.
"""

from __future__ import annotations

import math
import queue
import random
import threading
from typing import Any, List

import pytest

from taskqueue.errors import QueueClosed, QueueFull
from taskqueue.workqueue import WorkQueue

WAIT = 5.0
# How long a negative check waits for something that must not happen. A
# broken queue could slip past it only by being slow; a correct one never
# fails it.
NOT_YET = 0.05


class Producer:
    """Admits one item from its own thread and records how that ended."""

    def __init__(self, work: WorkQueue, item: Any, **options: Any) -> None:
        self.outcome: List[Any] = []
        self.about_to_admit = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(work, item, options),
                                        daemon=True)
        self._thread.start()

    def _run(self, work: WorkQueue, item: Any, options: dict) -> None:
        self.about_to_admit.set()
        try:
            work.admit(item, **options)
            self.outcome.append("admitted")
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.outcome.append(exc)
        finally:
            self.finished.set()

    def join(self) -> None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the producer is still blocked"


def drain(work: WorkQueue) -> List[Any]:
    items = []
    while True:
        try:
            items.append(work.get_nowait())
        except queue.Empty:
            return items


def test_is_a_fifo_queue_queue():
    work = WorkQueue(maxsize=10)
    assert isinstance(work, queue.Queue)
    for i in range(5):
        work.admit(i)
    assert drain(work) == [0, 1, 2, 3, 4]


def test_admit_counts_admissions_and_unfinished_tasks():
    work = WorkQueue(maxsize=10)
    work.admit("a")
    work.admit("b", bounded=False)
    assert (work.admitted, work.unfinished_tasks, work.qsize()) == (2, 2, 2)


def test_admit_without_block_raises_queue_full_at_once():
    work = WorkQueue(maxsize=2, name="orders")
    work.admit(1)
    work.admit(2)
    with pytest.raises(QueueFull, match="orders"):
        work.admit(3, block=False)
    assert drain(work) == [1, 2]
    assert work.admitted == 2 and work.unfinished_tasks == 2


def test_admit_raises_queue_full_after_its_timeout():
    work = WorkQueue(maxsize=1)
    work.admit(1)
    with pytest.raises(QueueFull):
        work.admit(2, timeout=0.01)
    with pytest.raises(QueueFull):
        work.admit(2, timeout=0)
    assert drain(work) == [1]


def test_admit_blocks_while_full_until_a_worker_takes_an_item():
    # Given a full queue and a producer waiting for room
    work = WorkQueue(maxsize=1)
    work.admit("first")
    producer = Producer(work, "second", timeout=WAIT)
    assert producer.about_to_admit.wait(WAIT)
    assert not producer.finished.wait(NOT_YET), "admit did not wait for room"

    # When a worker takes the queued item
    assert work.get(timeout=WAIT) == "first"

    # Then the producer's item goes in
    producer.join()
    assert producer.outcome == ["admitted"]
    assert drain(work) == ["second"]


def test_unbounded_admission_goes_past_maxsize():
    work = WorkQueue(maxsize=1)
    work.admit(1)
    work.admit(2, bounded=False)
    work.admit(3, bounded=False, block=False)
    assert work.qsize() == 3
    assert drain(work) == [1, 2, 3]


def test_maxsize_zero_means_no_bound():
    work = WorkQueue(maxsize=0)
    for i in range(1000):
        work.admit(i, block=False)
    assert work.qsize() == 1000


def test_close_refuses_producers_with_queue_closed():
    work = WorkQueue(maxsize=0, name="orders")
    work.admit(1)
    work.close()
    assert work.accepting is False and work.sealed is False
    for options in ({}, {"block": False}, {"bounded": False}):
        with pytest.raises(QueueClosed, match="orders"):
            work.admit(2, **options)
    with pytest.raises(RuntimeError):
        work.admit(2)
    assert drain(work) == [1]  # what was queued stays queued
    assert work.admitted == 1 and work.unfinished_tasks == 1


def test_close_on_a_full_queue_refuses_even_without_block():
    work = WorkQueue(maxsize=1)
    work.admit(1)
    work.close()
    with pytest.raises(QueueClosed):
        work.admit(2, block=False)


def test_close_wakes_a_producer_blocked_on_a_full_queue():
    # Given a producer blocked on a full queue with no timeout
    work = WorkQueue(maxsize=1)
    work.admit("first")
    producer = Producer(work, "second")
    assert producer.about_to_admit.wait(WAIT)
    assert not producer.finished.wait(NOT_YET)

    # When the queue is closed
    work.close()

    # Then the producer wakes with QueueClosed and its item is not queued
    producer.join()
    assert len(producer.outcome) == 1 and isinstance(producer.outcome[0], QueueClosed)
    assert drain(work) == ["first"]


def test_seal_wakes_a_producer_blocked_on_a_full_queue():
    work = WorkQueue(maxsize=1)
    work.admit("first")
    producer = Producer(work, "second")
    assert producer.about_to_admit.wait(WAIT)
    assert work.seal() == ["first"]
    producer.join()
    assert isinstance(producer.outcome[0], QueueClosed)
    assert drain(work) == []


def test_reenter_works_after_close_and_past_the_bound():
    work = WorkQueue(maxsize=1)
    work.admit("queued")
    work.close()
    assert work.reenter("retry") is True
    assert work.qsize() == 2
    assert work.admitted == 1 and work.unfinished_tasks == 1  # not counted again
    assert drain(work) == ["queued", "retry"]


def test_reenter_is_refused_after_seal():
    work = WorkQueue(maxsize=0)
    work.seal()
    assert work.reenter("retry") is False
    assert work.qsize() == 0


def test_seal_returns_the_queued_items_and_refuses_everything():
    work = WorkQueue(maxsize=0)
    for i in range(4):
        work.admit(i)
    assert work.seal() == [0, 1, 2, 3]
    assert (work.accepting, work.sealed, work.qsize()) == (False, True, 0)
    with pytest.raises(QueueClosed):
        work.admit(9)
    assert work.seal() == []


def test_a_stopped_queue_hands_out_what_it_holds_then_none():
    work = WorkQueue(maxsize=0)
    work.admit(1)
    work.admit(2)
    work.stop()
    assert [work.get(timeout=WAIT), work.get(timeout=WAIT)] == [1, 2]
    assert work.get(timeout=WAIT) is None
    assert work.finish_and_get(2) is None
    assert work.wait_all_done(0)


def test_stop_wakes_every_blocked_get():
    work = WorkQueue(maxsize=1)
    got: List[Any] = []
    getters = [threading.Thread(target=lambda: got.append(work.get(timeout=WAIT)), daemon=True)
               for _ in range(3)]
    for getter in getters:
        getter.start()
    work.stop()
    for getter in getters:
        getter.join(WAIT)
        assert not getter.is_alive()
    assert got == [None, None, None]


def test_wait_all_done_times_out_while_tasks_are_unfinished():
    work = WorkQueue(maxsize=0)
    work.admit(1)
    work.get()
    assert work.wait_all_done(timeout=0.01) is False
    assert work.wait_all_done(timeout=0) is False


def test_wait_all_done_returns_true_when_nothing_is_unfinished():
    work = WorkQueue(maxsize=0)
    assert work.wait_all_done(timeout=0) is True
    work.admit(1)
    work.get()
    work.task_done()
    assert work.wait_all_done(timeout=0) is True
    assert work.wait_all_done() is True


def test_wait_all_done_wakes_when_another_thread_finishes_the_last_task():
    # Given two admitted tasks and a thread waiting for all to be done
    work = WorkQueue(maxsize=0)
    work.admit(1)
    work.admit(2)
    result: List[bool] = []
    waiting = threading.Event()

    def waiter():
        waiting.set()
        result.append(work.wait_all_done(timeout=WAIT))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert waiting.wait(WAIT)

    # When both are taken and marked done
    work.get()
    work.task_done()
    work.get()
    work.task_done()

    # Then the waiter returns True (before its timeout)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert result == [True]


class LifoWorkQueue(WorkQueue):
    """Ordering is changed through the four hooks only, as PriorityQueue does."""

    def _init(self, maxsize: int) -> None:
        self.queue = []  # type: ignore[assignment]

    def _qsize(self) -> int:
        return len(self.queue)

    def _put(self, item: Any) -> None:
        self.queue.append(item)

    def _get(self) -> Any:
        return self.queue.pop()


def test_a_subclass_changes_the_order_through_the_hooks():
    work = LifoWorkQueue(maxsize=2)
    work.admit(1)
    work.admit(2)
    with pytest.raises(QueueFull):
        work.admit(3, block=False)
    assert work.reenter(3)
    assert drain(work) == [3, 2, 1]
    work.admit(4)
    work.admit(5)
    assert work.seal() == [5, 4]


# -- get / put / task_done: queue.Queue's contract, with notifies skipped ----------


def test_get_without_block_raises_empty_at_once():
    work = WorkQueue(maxsize=1)
    with pytest.raises(queue.Empty):
        work.get(block=False)
    with pytest.raises(queue.Empty):
        work.get_nowait()


def test_get_raises_empty_after_its_timeout():
    work = WorkQueue(maxsize=1)
    with pytest.raises(queue.Empty):
        work.get(timeout=0.01)
    with pytest.raises(ValueError, match="timeout"):
        work.get(timeout=-1)


def test_put_is_a_producers_admit():
    work = WorkQueue(maxsize=1)
    work.put("a")
    assert (work.admitted, work.unfinished_tasks) == (1, 1)
    with pytest.raises(QueueFull):
        work.put("b", block=False)
    work.close()
    work.get()
    with pytest.raises(QueueClosed):
        work.put("c")


def test_task_done_called_too_often_raises_and_changes_nothing():
    work = WorkQueue(maxsize=0)
    work.admit(1)
    work.get()
    work.task_done()
    with pytest.raises(ValueError, match="too many times"):
        work.task_done()
    assert work.unfinished_tasks == 0


@pytest.mark.parametrize("maxsize", [1, 2, 8])
def test_no_wakeup_is_lost_when_nobody_seems_to_wait(maxsize, shaken):
    # A notify is skipped when no thread waits: if the count of waiters
    # were ever too low, a getter or a producer would sleep for ever with
    # an item or room there for it, and the joins below would time out.
    for _ in range(30):
        work = WorkQueue(maxsize=maxsize)
        items, producers, getters = 300, 3, 3
        got: List[Any] = []

        def produce(base: int) -> None:
            for i in range(items):
                work.admit((base, i))

        def consume() -> None:
            while True:
                item = work.get(timeout=WAIT)
                if item is None:
                    return
                got.append(item)
                work.task_done()

        threads = ([threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
                   + [threading.Thread(target=consume, daemon=True) for _ in range(getters)])
        for thread in threads:
            thread.start()
        for thread in threads[:producers]:
            thread.join(WAIT)
        assert work.wait_all_done(WAIT)
        work.stop()
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        assert sorted(got) == [(p, i) for p in range(producers) for i in range(items)]


def test_task_done_marks_a_count_at_once():
    work = WorkQueue(maxsize=0)
    for item in range(3):
        work.admit(item)
    work.task_done(2)
    assert work.unfinished_tasks == 1
    with pytest.raises(ValueError, match="too many times"):
        work.task_done(2)
    assert work.unfinished_tasks == 1


def test_finish_and_get_marks_done_before_it_waits_for_the_next_item():
    # Given one task taken, and a thread waiting for every task to be done
    work = WorkQueue(maxsize=0)
    work.admit("first")
    assert work.get() == "first"
    joined = threading.Event()
    waiter = threading.Thread(target=lambda: work.wait_all_done(WAIT) and joined.set(), daemon=True)
    waiter.start()

    # When a worker marks it done while taking its next item (none is there yet)
    got: List[Any] = []
    worker = threading.Thread(target=lambda: got.append(work.finish_and_get(1)), daemon=True)
    worker.start()

    # Then the waiter is released at once, and the worker gets the next item
    assert joined.wait(WAIT)
    work.admit("second")
    worker.join(WAIT)
    assert got == ["second"] and work.unfinished_tasks == 1


def test_finish_and_get_refuses_to_mark_more_than_are_unfinished():
    work = WorkQueue(maxsize=0)
    work.admit("a")
    with pytest.raises(ValueError, match="too many times"):
        work.finish_and_get(2)
    assert work.unfinished_tasks == 1 and work.get_nowait() == "a"


class Level:
    """A priority that counts how often it is compared (order, not equality)."""

    compared = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __neg__(self) -> "Level":
        return Level(-self.value)

    def __lt__(self, other: "Level") -> bool:
        Level.compared += 1
        return self.value < other.value

    def __gt__(self, other: "Level") -> bool:
        Level.compared += 1
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Level) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


class Prioritised:
    def __init__(self, priority: Level, label: int) -> None:
        self.priority = priority
        self.label = label


def test_a_backlog_of_distinct_priorities_costs_log_levels_per_item() -> None:
    # Every new level used to re-sort every level under the mutex: 8,000
    # tasks at distinct priorities cost O(n^2 log n) comparisons in all.
    count = 4000
    work = WorkQueue(maxsize=0)
    order = list(range(count))
    random.Random(3).shuffle(order)
    Level.compared = 0
    for label, value in enumerate(order):
        work.admit(Prioritised(Level(value), label))
    out = [work.get() for _ in range(count)]
    bound = 4 * count * math.ceil(math.log2(count))
    assert Level.compared <= bound, (Level.compared, bound)
    assert [item.priority.value for item in out] == sorted(order, reverse=True)


def test_many_levels_still_come_out_first_in_first_out_within_a_level() -> None:
    work = WorkQueue(maxsize=0)
    for label in range(600):
        work.admit(Prioritised(Level(label % 200), label))
    out = [work.get() for _ in range(600)]
    for value in range(200):
        labels = [item.label for item in out if item.priority.value == value]
        assert labels == sorted(labels)
    assert [item.priority.value for item in out] == sorted((l % 200 for l in range(600)),
                                                            reverse=True)
