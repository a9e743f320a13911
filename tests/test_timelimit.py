"""Time limits: interrupt a running attempt, abandon a stuck thread, keep the pool whole.

Bounds here are generous (a limit of 0.2 s is checked with a 5 s wait):
they tell a hung queue from a slow machine, not a fast queue from a slow one.
Tasks stuck in C wait on an Event (a lock acquire, which an asynchronous
exception cannot interrupt) that the fixture sets, and whose threads it
joins, at teardown; one test uses the 10 s sleep itself, and that thread is
joined at the end of the module. So no abandoned thread comes back (and
logs) during another test. Log assertions look only at records that name
their own test's queue.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest

from conftest import WAIT, Gate
from taskqueue import Backoff, EventKind, Task, TaskQueue, TaskState
from taskqueue.errors import TimeLimitExceeded

pytestmark = pytest.mark.timeout(30)


def busy_for(seconds: float) -> str:
    """Run Python bytecode (no blocking C call) for ``seconds``."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return "finished"


def spin() -> str:
    """A busy Python loop that only a time limit ends (or WAIT, if the limit failed)."""
    return busy_for(WAIT)


class Stuck:
    """Task bodies stuck in C (a lock acquire) until released; remembers their threads."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.threads: List[threading.Thread] = []

    def wait(self) -> None:
        self.threads.append(threading.current_thread())
        self.released.wait(WAIT)

    def release(self) -> None:
        self.released.set()
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    """Stuck task bodies, released (and their threads joined) at teardown."""
    bodies = Stuck()
    yield bodies
    bodies.release()


_sleepers: List[threading.Thread] = []


@pytest.fixture(scope="module", autouse=True)
def _join_the_10s_sleepers() -> Iterator[None]:
    yield
    for thread in _sleepers:
        thread.join(15)


def sleep_10s() -> None:
    _sleepers.append(threading.current_thread())
    time.sleep(10)


def worker_threads(name: str) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-worker-")]


def assert_balanced(queue: TaskQueue) -> None:
    stats = queue.stats()
    assert stats.pending == 0 and stats.running == 0
    assert stats.submitted == stats.succeeded + stats.failed + stats.cancelled


def test_time_limit_exceeded_is_a_base_exception_not_an_exception() -> None:
    assert issubclass(TimeLimitExceeded, BaseException)
    assert not issubclass(TimeLimitExceeded, Exception)


# -- the stuck task: abandoned and replaced ---------------------------------------------


def test_a_task_sleeping_10s_fails_within_a_generous_bound_and_all_workers_keep_running(
        make_queue: Callable[..., TaskQueue], gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskqueue")
    # Given two workers, one of them stuck in a 10 s sleep with a 0.2 s limit
    queue = make_queue(workers=2, name="stuck")
    stuck = queue.submit(Task(sleep_10s, time_limit=0.2))
    # Then the other worker keeps running tasks meanwhile
    assert [queue.submit(pow, 2, i).result(WAIT) for i in range(10)] == [2**i for i in range(10)]
    # and the stuck one fails with TimeLimitExceeded well within 5 s
    error = stuck.exception(timeout=5)
    assert isinstance(error, TimeLimitExceeded)
    assert stuck.state is TaskState.FAILED and stuck.attempts == 1
    # When two tasks that hold at a gate are submitted
    held = [queue.submit(gate.wait) for _ in range(2)]
    # Then both run at the same time: the pool is back to two workers, while
    # the abandoned thread still sleeps
    gate.wait_for_arrivals(2)
    assert queue.stats().running == 2 and queue.stats().workers == 2
    assert len(worker_threads("stuck")) == 3
    gate.open()
    assert [h.result(WAIT) for h in held] == ["through", "through"]
    # and the failure is a dead letter, and the abandonment was logged
    [letter] = queue.dead_letters()
    assert isinstance(letter.exception, TimeLimitExceeded) and letter.attempts == 1
    assert any(r.levelno >= logging.ERROR and "abandoned" in r.getMessage()
               and "stuck-worker" in r.getMessage() for r in caplog.records)
    assert_balanced(queue)


def test_the_abandoned_threads_late_result_is_ignored_and_logged(
        make_queue: Callable[..., TaskQueue], stuck: Stuck,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskqueue")
    # Given a task stuck in C past its limit, abandoned by the queue
    queue = make_queue(workers=1, time_limit_grace=0.1, name="late")

    def stuck_then_late() -> str:
        stuck.wait()
        return "late result"

    handle = queue.submit(Task(stuck_then_late, time_limit=0.1))
    assert isinstance(handle.exception(WAIT), TimeLimitExceeded)
    assert queue.submit(abs, -1).result(WAIT) == 1  # the replacement works
    before = queue.stats()
    # When the stuck thread finally comes back with a result
    stuck.release()
    assert not stuck.threads[0].is_alive()
    # Then the handle keeps its failure, the counters do not move, and the
    # late comeback is logged
    assert handle.state is TaskState.FAILED
    assert isinstance(handle.exception(0), TimeLimitExceeded)
    after = queue.stats()
    assert (after.submitted, after.succeeded, after.failed) == (before.submitted, before.succeeded,
                                                               before.failed) == (2, 1, 1)
    assert_balanced(queue)
    late = [r for r in caplog.records
            if "came back" in r.getMessage() and "late-worker" in r.getMessage()]
    assert len(late) == 1 and late[0].levelno == logging.WARNING
    assert "ignored" in late[0].getMessage()
    # and the pool still has exactly one worker, which still works
    assert queue.submit(abs, -2).result(WAIT) == 2
    assert len(worker_threads("late")) == 1


def test_an_abandoned_attempt_is_retried_on_the_replacement(
        make_queue: Callable[..., TaskQueue], stuck: Stuck) -> None:
    queue = make_queue(workers=1, time_limit_grace=0.1)
    idents: List[int] = []

    def stuck_first_time() -> str:
        idents.append(threading.get_ident())
        if len(idents) == 1:
            stuck.wait()
        return "second try"

    handle = queue.submit(Task(stuck_first_time, time_limit=0.1, retries=1, backoff=Backoff.none()))
    assert handle.result(WAIT) == "second try"
    assert handle.attempts == 2 and idents[0] != idents[1]
    assert queue.stats().retried == 1
    assert_balanced(queue)


def test_the_shutdown_drain_ends_with_a_stuck_task_abandoned(stuck: Stuck) -> None:
    # Given a queue whose only worker is stuck in C past its limit
    queue = TaskQueue(workers=1, time_limit_grace=0.1)
    handle = queue.submit(Task(stuck.wait, time_limit=0.1))
    after = queue.submit(abs, -4)
    # When it shuts down, draining (a test timeout would catch a hang)
    queue.shutdown()
    # Then the stuck attempt failed with its limit, the task behind it ran on
    # the replacement, and nothing is left pending
    assert isinstance(handle.exception(0), TimeLimitExceeded)
    assert after.result(0) == 4
    assert_balanced(queue)


# -- Python code is interrupted in place ------------------------------------------------------


def test_a_busy_python_loop_is_interrupted_and_the_worker_lives_on(
        make_queue: Callable[..., TaskQueue], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskqueue")
    queue = make_queue(workers=1, time_limit_grace=5, name="busy")
    idents: List[int] = []

    def spin_here() -> str:
        idents.append(threading.get_ident())
        return spin()

    handle = queue.submit(Task(spin_here, time_limit=0.2))
    assert isinstance(handle.exception(timeout=5), TimeLimitExceeded)
    # The same thread took the next task: it was interrupted, not abandoned
    # (its grace of 5 s has not even run out)
    assert queue.submit(threading.get_ident).result(WAIT) == idents[0]
    assert not [r for r in caplog.records
                if "abandon" in r.getMessage() and "busy-worker" in r.getMessage()]
    assert_balanced(queue)


def test_except_exception_in_the_task_cannot_swallow_it(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    cleaned_up = threading.Event()
    swallowed: List[BaseException] = []

    def stubborn() -> str:
        try:
            return spin()
        except Exception as exc:  # the task's own catch-all
            swallowed.append(exc)
            return "swallowed"
        finally:
            cleaned_up.set()

    handle = queue.submit(Task(stubborn, time_limit=0.2))
    assert isinstance(handle.exception(timeout=5), TimeLimitExceeded)
    assert not swallowed
    assert cleaned_up.is_set()  # but the task's finally blocks did run


def test_a_time_limit_is_retried_while_retries_remain_then_dead_lettered(
        make_queue: Callable[..., TaskQueue]) -> None:
    # Given a task that always spins, with two retries (the default retry_on
    # is (Exception,), which TimeLimitExceeded is not: it is retried anyway)
    queue = make_queue(workers=1)
    retrying: List[BaseException] = []
    queue.add_listener(lambda e: e.kind is EventKind.RETRYING and retrying.append(e.exception))
    handle = queue.submit(Task(spin, time_limit=0.1, retries=2, backoff=Backoff.none(), name="spinner"))
    # Then it ran three times and failed for good
    assert isinstance(handle.exception(timeout=10), TimeLimitExceeded)
    assert handle.attempts == 3
    assert len(retrying) == 2 and all(isinstance(e, TimeLimitExceeded) for e in retrying)
    [letter] = queue.dead_letters()
    assert letter.attempts == 3 and isinstance(letter.exception, TimeLimitExceeded)
    assert letter.task.name == "spinner"
    stats = queue.stats()
    assert stats.retried == 2 and stats.failed == 1 and stats.succeeded == 0
    assert_balanced(queue)


def test_a_retry_after_a_time_limit_can_succeed(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, retries=1, backoff=Backoff.none())
    calls: List[int] = []

    def slow_then_fast() -> str:
        calls.append(1)
        return spin() if len(calls) == 1 else "fast"

    handle = queue.submit(Task(slow_then_fast, time_limit=0.2))
    assert handle.result(timeout=10) == "fast"
    assert handle.attempts == 2 and not queue.dead_letters()


# -- which limit applies -------------------------------------------------------------------


def test_the_queue_default_time_limit_applies_to_plain_submits(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, time_limit=0.2)
    assert isinstance(queue.submit(spin).exception(timeout=5), TimeLimitExceeded)
    assert isinstance(queue.submit(Task(spin)).exception(timeout=5), TimeLimitExceeded)


def test_a_task_time_limit_overrides_a_shorter_queue_default(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, time_limit=0.1)
    assert queue.submit(Task(busy_for, (0.4,), time_limit=WAIT)).result(WAIT) == "finished"


def test_a_task_time_limit_overrides_a_longer_queue_default(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, time_limit=WAIT)
    handle = queue.submit(Task(spin, time_limit=0.2))
    assert isinstance(handle.exception(timeout=5), TimeLimitExceeded)
    # while a plain task under the long default is not interrupted
    assert queue.submit(busy_for, 0.3).result(WAIT) == "finished"


# -- within the limit, nothing happens ------------------------------------------------------


def test_a_task_within_its_limit_is_unaffected(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=2, time_limit=5)
    handles = [queue.submit(Task(pow, (2, i), time_limit=5)) for i in range(50)]
    handles += [queue.submit(pow, 3, i) for i in range(50)]
    assert [h.result(WAIT) for h in handles] == [2**i for i in range(50)] + [3**i for i in range(50)]
    assert all(h.attempts == 1 for h in handles)
    assert queue.stats().failed == 0 and not queue.dead_letters()


def test_an_earlier_tasks_deadline_never_hits_a_later_task(make_queue: Callable[..., TaskQueue]) -> None:
    # Given one worker that finishes a task with a short limit at once
    queue = make_queue(workers=1, time_limit_grace=0.05)
    assert queue.submit(Task(abs, (-1,), time_limit=0.1)).result(WAIT) == 1
    # When the same worker then runs, past that old deadline and past its
    # grace, a task with no limit and one with a long limit
    unlimited = queue.submit(busy_for, 0.3)
    long_limit = queue.submit(Task(busy_for, (0.3,), time_limit=WAIT))
    # Then neither is interrupted
    assert unlimited.result(WAIT) == "finished"
    assert long_limit.result(WAIT) == "finished"
    assert queue.stats().failed == 0


@pytest.mark.timeout(60)
def test_no_stray_time_limit_reaches_a_later_task(
        make_queue: Callable[..., TaskQueue], caplog: pytest.LogCaptureFixture) -> None:
    # Given tasks whose limits are just above their run time, so that the
    # limit often fires as they return, interleaved on the same workers with
    # tasks that have no limit or a long one; and thread switches forced
    # very often, to widen every race between a worker and the watchdog
    caplog.set_level(logging.WARNING, logger="taskqueue")
    queue = make_queue(workers=2, time_limit_grace=0.05, name="stray")
    tight: List[Any] = []
    others: List[Any] = []
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for i in range(300):
            duration = 0.0005 + (i % 5) * 0.0005
            tight.append(queue.submit(Task(busy_for, (duration,), time_limit=duration * 1.1)))
            others.append(queue.submit(sum, range(2000)))
            others.append(queue.submit(Task(sum, (range(2000),), time_limit=WAIT)))
        assert queue.join(WAIT)
        # Let every grace period of every attempt run out on the queue's
        # timer: a periodic tick is handed over there after every check due
        # before it, and the first one is due a grace period from now.
        passed = threading.Event()
        queue.every(0.6, passed.set)
        assert passed.wait(WAIT)
    finally:
        sys.setswitchinterval(old_interval)
    # Then every task without a tight limit succeeded at the first attempt
    assert all(h.state is TaskState.SUCCEEDED and h.attempts == 1 for h in others)
    # and the tight ones either finished or failed with their own limit
    for handle in tight:
        assert handle.state is TaskState.SUCCEEDED or isinstance(handle.exception(0), TimeLimitExceeded)
    # and no worker was abandoned, crashed or replaced
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR
                and "stray-worker" in r.getMessage()]
    assert len(worker_threads("stray")) == 2
    stats = queue.stats()
    assert stats.retried == 0
    assert_balanced(queue)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5, float("nan"), float("inf"), -math.inf])
def test_a_bad_task_time_limit_is_a_value_error_naming_time_limit(bad: float) -> None:
    with pytest.raises(ValueError, match="time_limit"):
        Task(abs, (1,), time_limit=bad)


@pytest.mark.parametrize("bad", ["1", b"1", [1], True, object()])
def test_a_task_time_limit_that_is_not_a_number_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="time_limit"):
        Task(abs, (1,), time_limit=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_a_bad_queue_time_limit_is_a_value_error_naming_time_limit(bad: float) -> None:
    with pytest.raises(ValueError, match="time_limit"):
        TaskQueue(time_limit=bad)


def test_a_queue_time_limit_that_is_not_a_number_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="time_limit"):
        TaskQueue(time_limit="1")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_a_bad_grace_is_a_value_error_naming_time_limit_grace(bad: float) -> None:
    with pytest.raises(ValueError, match="time_limit_grace"):
        TaskQueue(time_limit_grace=bad)


# -- the worker and the watchdog, wired by hand ------------------------------------------------


def test_a_limit_that_fires_as_the_attempt_is_armed_does_not_get_the_idle_worker_abandoned() -> None:
    # The watchdog can raise TimeLimitExceeded in a worker's thread between
    # arming the guard and calling the task (the deadline may have passed
    # already: a slow STARTED listener, a busy machine). The seam is the
    # worker's ``arm`` callable; the watchdog runs on a fake clock and a
    # scheduler driven by run_due(), so the race is played out in order.
    from taskqueue.brokers import Binding, MemoryBroker
    from taskqueue.events import Listeners
    from taskqueue.message import Message
    from taskqueue.retry import Backoff as _Backoff
    from taskqueue.retry import RetryPolicy
    from taskqueue.scheduler import Scheduler
    from taskqueue.stats import WorkerTally
    from taskqueue.task import TaskHandle
    from taskqueue.timelimit import Watchdog
    from taskqueue.worker import Worker

    now = [100.0]

    def clock() -> float:
        return now[0]

    scheduler = Scheduler(lambda item: item(), clock=clock)  # no timer thread: run_due() only
    abandoned: List[Any] = []
    watchdog = Watchdog(scheduler.schedule, clock, 0.5, lambda owner, exc: abandoned.append(owner))
    fired = threading.Lock()
    fired.acquire()

    def the_limit_fires_now() -> None:
        now[0] += 5  # past the deadline
        scheduler.run_due()  # the watchdog raises TimeLimitExceeded in the worker's thread
        fired.release()

    def arm(guard: Any, deadline: float) -> None:
        watchdog.arm(guard, deadline)
        # Given the limit firing on the watchdog's thread just as arming ends
        threading.Thread(target=the_limit_fires_now).start()
        fired.acquire()  # blocked in C: the exception is delivered as this returns

    outcomes: List[Any] = []
    reported = threading.Event()

    class Recorded:
        """A settle step that only records outcomes."""

        def succeeded(self, consumer: Any, message: Any, result: Any) -> None:
            outcomes.append(result)
            reported.set()

        def failed(self, consumer: Any, message: Any, exc: BaseException) -> None:
            outcomes.append(exc)
            reported.set()

    broker = MemoryBroker()
    broker.bind(Binding(name="armed", maxsize=0, dead_letter_limit=0, clock=clock,
                        wait=lambda cond, timeout: cond.wait(timeout), exempt=lambda: False,
                        lookup=lambda name: None, message_for=lambda task: None))  # type: ignore
    crashes: List[BaseException] = []
    worker = Worker(0, broker.consumer(WorkerTally()), Recorded(), clock=clock,  # type: ignore
                    listeners=Listeners(), on_start=lambda w: True,
                    on_crash=lambda w, exc: crashes.append(exc), arm=arm,
                    time_limit=1.0, name="armed-worker")
    watchdog.watch(worker.guard)
    worker.thread.start()
    try:
        handle = TaskHandle("abs")
        handle._message = Message(abs, (-1,), None, "abs",
                                  RetryPolicy(0, _Backoff(), (Exception,)), handle)
        broker.enqueue(handle._message, block=True, timeout=None)
        assert reported.wait(WAIT)
        # When the attempt has failed with its limit, and the worker is idle
        assert len(outcomes) == 1 and isinstance(outcomes[0], TimeLimitExceeded)
        # and the grace period runs out on the watchdog's clock
        now[0] += 10
        scheduler.run_due()
        # Then the watchdog does not abandon (and so replace) a worker whose
        # attempt is over: in a pool that would leave two threads in one
        # slot, and fail whatever task the old one runs by then
        assert abandoned == []
        assert not crashes
    finally:
        broker.stop_consumers()
        worker.thread.join(WAIT)
