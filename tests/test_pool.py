"""TaskQueue's public contract: submitting, retrying, failing, joining, watching."""

from __future__ import annotations

import asyncio
import gc
import concurrent.futures as cf
import logging
import math
import re
import threading
import weakref
from typing import Any, Callable, Dict, List

import pytest

from conftest import WAIT, Gate, assert_settled
from taskqueue import (
    Backoff,
    Event,
    EventKind,
    QueueClosed,
    QueueFull,
    Retry,
    Task,
    TaskHandle,
    TaskQueue,
    TaskState,
)


class FailTimes:
    """A task body that raises ``error`` the first ``times`` calls per key."""

    def __init__(self, times: int, error: type = ValueError) -> None:
        self.times = times
        self.error = error
        self.calls: Dict[Any, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Any) -> Any:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            call = self.calls[key]
        if call <= self.times:
            raise self.error(f"{key} failed on call {call}")
        return key



# -- starting ------------------------------------------------------------------


def test_threads_start_on_first_submit_and_are_named(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=3, name="mailer")
    assert not [t for t in threading.enumerate() if t.name.startswith("mailer-worker-")]
    assert queue.submit(threading.current_thread).result(WAIT).name.startswith("mailer-worker-")
    names = sorted(t.name for t in threading.enumerate() if t.name.startswith("mailer-worker-"))
    assert names == ["mailer-worker-0", "mailer-worker-1", "mailer-worker-2"]
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("mailer-worker-"))


def test_start_and_with_start_the_pool(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=2, name="early")
    assert queue.start() is queue
    assert sum(t.name.startswith("early-worker-") for t in threading.enumerate()) == 2
    with TaskQueue(workers=1, name="ctx") as ctx:
        assert any(t.name == "ctx-worker-0" for t in threading.enumerate())
        handle = ctx.submit(pow, 2, 10)
    assert handle.result(0) == 1024  # the with block drained it


# -- the Executor contract -------------------------------------------------------


def test_submit_returns_a_future_with_result_and_kwargs(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue()
    handle = queue.submit(sorted, [3, 1, 2], reverse=True)
    assert isinstance(handle, cf.Future)
    assert handle.result(WAIT) == [3, 2, 1]
    assert handle.state is TaskState.SUCCEEDED and handle.attempts == 1
    assert handle.name == "sorted"


def test_executor_map_wait_and_as_completed(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=4)
    assert list(queue.map(pow, range(50), [2] * 50, timeout=WAIT)) == [i * i for i in range(50)]
    handles = [queue.submit(abs, -i) for i in range(200)]
    done, not_done = cf.wait(handles, timeout=WAIT)
    assert not not_done and len(done) == 200
    assert sorted(h.result() for h in cf.as_completed(handles, timeout=WAIT)) == list(range(200))


def test_run_in_executor_and_wrap_future(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue()

    async def main() -> List[int]:
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(queue, pow, 3, 3)
        second = await asyncio.wrap_future(queue.submit(pow, 2, 5))
        return [first, second]

    assert asyncio.run(main()) == [27, 32]


def test_submit_a_task_object_uses_its_options(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(retries=0)
    flaky = FailTimes(2)
    handle = queue.submit(Task(flaky, ("k",), name="flaky-one", retries=2, backoff=Backoff.none()))
    assert handle.result(WAIT) == "k"
    assert handle.attempts == 3 and handle.name == "flaky-one"


def test_submit_task_with_extra_arguments_is_refused(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue()
    with pytest.raises(TypeError, match="no further arguments"):
        queue.submit(Task(print), 1)
    assert queue.stats().submitted == 0


# -- 1. retries never deadlock and never block a worker ------------------------------


@pytest.mark.parametrize("backoff", [Backoff.none(), Backoff.constant(0.001)], ids=["none", "1ms"])
@pytest.mark.timeout(60)
def test_retries_through_a_one_slot_one_worker_queue_do_not_deadlock(backoff: Backoff) -> None:
    for _ in range(5):
        flaky = FailTimes(2)
        with TaskQueue(workers=1, maxsize=1, retries=2, backoff=backoff) as queue:
            handles = [queue.submit(flaky, i) for i in range(100)]
            assert queue.join(timeout=WAIT)
        assert [h.result(0) for h in handles] == list(range(100))
        assert all(h.attempts == 3 for h in handles)
        assert_settled(queue, handles)
        assert queue.stats().retried == 200


def test_other_tasks_run_while_one_waits_out_a_backoff(make_queue: Callable[..., TaskQueue]) -> None:
    # Given one worker and a task that fails once, then waits out a 1 s backoff
    queue = make_queue(workers=1, retries=1, backoff=Backoff.constant(1.0))
    flaky = FailTimes(1)
    retrying = threading.Event()
    queue.add_listener(lambda e: e.kind is EventKind.RETRYING and retrying.set())
    slow = queue.submit(flaky, "slow")
    assert retrying.wait(WAIT)
    # When other tasks are submitted during the backoff
    seen: List[TaskState] = []
    others = [queue.submit(lambda: seen.append(slow.state)) for _ in range(10)]
    # Then they all run on the one worker while the retry is still scheduled
    cf.wait(others, timeout=WAIT)
    assert all(o.done() for o in others)
    assert seen == [TaskState.SCHEDULED] * 10
    assert slow.result(WAIT) == "slow" and slow.attempts == 2


# -- 2. failures are contained ---------------------------------------------------------


class CustomBase(BaseException):
    pass


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt, GeneratorExit, CustomBase, ValueError])
def test_any_exception_fails_the_attempt_and_never_kills_the_worker(
        make_queue: Callable[..., TaskQueue], error: type) -> None:
    queue = make_queue(workers=1, retries=0)

    def boom() -> None:
        raise error("boom")

    before = queue.submit(threading.get_ident).result(WAIT)
    failed = queue.submit(boom)
    assert isinstance(failed.exception(WAIT), error)
    with pytest.raises(error):
        failed.result(0)
    assert failed.state is TaskState.FAILED
    assert queue.submit(threading.get_ident).result(WAIT) == before  # same thread lives on
    [letter] = queue.dead_letters()
    assert isinstance(letter.exception, error) and letter.attempts == 1
    assert "boom" in letter.traceback


def test_base_exceptions_are_not_retried_by_default(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(retries=3, backoff=Backoff.none())
    handle = queue.submit(FailTimes(1, KeyboardInterrupt), "k")
    assert isinstance(handle.exception(WAIT), KeyboardInterrupt)
    assert handle.attempts == 1


def test_error_outside_retry_on_fails_at_once_with_a_dead_letter(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(retries=5, retry_on=(ConnectionError,), backoff=Backoff.none())
    handle = queue.submit(FailTimes(1, ValueError), "k")
    assert isinstance(handle.exception(WAIT), ValueError)
    assert handle.attempts == 1
    [letter] = queue.dead_letters()
    assert letter.task_id == handle.id and letter.name == "FailTimes"


def test_exhausted_retries_end_failed_with_the_last_error(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(retries=2, backoff=Backoff.none())
    handle = queue.submit(FailTimes(10), "k")
    with pytest.raises(ValueError, match="failed on call 3"):
        handle.result(WAIT)
    assert handle.attempts == 3
    [letter] = queue.dead_letters()
    assert letter.attempts == 3 and "failed on call 3" in str(letter.exception)
    assert letter.submitted_at <= letter.failed_at
    stats = queue.stats()
    assert (stats.failed, stats.retried, stats.dead_letters) == (1, 2, 1)


def test_a_task_can_ask_for_a_retry(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(retries=2, retry_on=(ConnectionError,))
    calls = []

    def polite() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise Retry(delay=0)
        return len(calls)

    assert queue.submit(polite).result(WAIT) == 3


def test_requeue_submits_a_dead_letter_again(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(retries=0)
    flaky = FailTimes(1)
    first = queue.submit(flaky, "k")
    assert first.exception(WAIT) is not None
    [letter] = queue.dead_letters()
    second = queue.requeue(letter)
    assert second.result(WAIT) == "k" and second.id != first.id
    assert queue.dead_letters() == []
    with pytest.raises(TypeError, match="dead_letter"):
        queue.requeue("not a letter")  # type: ignore[arg-type]


def test_dead_letters_are_bounded_oldest_dropped(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(dead_letter_limit=3)
    handles = [queue.submit(FailTimes(1), i) for i in range(10)]
    assert queue.join(WAIT)
    letters = queue.dead_letters()
    assert len(letters) == 3
    stats = queue.stats()
    assert (stats.dead_letters, stats.dead_letters_dropped, stats.failed) == (3, 7, 10)
    assert {letter.task_id for letter in letters} <= {h.id for h in handles}


# -- retries and failures are logged --------------------------------------------------


def test_retries_log_at_info_and_failures_an_error_with_traceback(
        make_queue: Callable[..., TaskQueue], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="taskqueue")
    queue = make_queue(retries=1, backoff=Backoff.none())
    handle = queue.submit(Task(FailTimes(5), ("k",), name="send_mail"))
    handle.exception(WAIT)
    assert queue.join(WAIT)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(infos) == 1 and len(errors) == 1
    assert "send_mail" in infos[0].getMessage() and handle.id in infos[0].getMessage()
    assert "attempt 1" in infos[0].getMessage() and "retrying in" in infos[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].name.startswith("taskqueue")


def test_a_retry_logs_nothing_at_warning(
        make_queue: Callable[..., TaskQueue], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskqueue")
    queue = make_queue(retries=1, backoff=Backoff.none())
    handle = queue.submit(FailTimes(1), "k")
    assert handle.result(WAIT) == "k" and handle.attempts == 2
    assert [r for r in caplog.records if r.name.startswith("taskqueue")] == []


def test_the_library_only_adds_a_null_handler() -> None:
    handlers = logging.getLogger("taskqueue").handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)


# -- events --------------------------------------------------------------------------


def test_listeners_see_every_kind_of_event(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, retries=1, backoff=Backoff.none())
    events: List[Event] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            events.append(event)

    queue.add_listener(record)
    blocker = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    ok = queue.submit(abs, -1)
    bad = queue.submit(FailTimes(5), "k")
    doomed = queue.submit(abs, 0)
    assert doomed.cancel()
    gate.open()
    assert queue.join(WAIT)
    by_handle: Dict[str, List[EventKind]] = {}
    for event in events:
        by_handle.setdefault(event.handle.id, []).append(event.kind)
    S, ST, OK, R, F, C = (EventKind.SUBMITTED, EventKind.STARTED, EventKind.SUCCEEDED,
                          EventKind.RETRYING, EventKind.FAILED, EventKind.CANCELLED)
    assert by_handle[blocker.id] == [S, ST, OK]
    assert by_handle[ok.id] == [S, ST, OK]
    assert by_handle[bad.id] == [S, ST, R, ST, F]
    assert by_handle[doomed.id] == [S, C]
    failures = [e for e in events if e.kind in (R, F)]
    assert all(isinstance(e.exception, ValueError) for e in failures)


def test_a_raising_listener_is_logged_and_breaks_nothing(
        make_queue: Callable[..., TaskQueue], caplog: pytest.LogCaptureFixture) -> None:
    queue = make_queue(workers=2)
    queue.add_listener(lambda event: 1 / 0)
    seen = []
    queue.add_listener(seen.append)
    handles = [queue.submit(abs, -i) for i in range(20)]
    assert [h.result(WAIT) for h in handles] == list(range(20))
    assert queue.join(WAIT)
    assert len(seen) == 60
    assert any("listener" in r.getMessage() for r in caplog.records)
    with pytest.raises(TypeError, match="callback"):
        queue.add_listener("nope")  # type: ignore[arg-type]


# -- stats ---------------------------------------------------------------------------


def test_stats_snapshot_at_rest_and_while_running(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=2, maxsize=100)
    held = [queue.submit(gate.wait) for _ in range(2)]
    gate.wait_for_arrivals(2)
    queued = [queue.submit(abs, -i) for i in range(5)]
    stats = queue.stats()
    assert (stats.submitted, stats.running, stats.pending, stats.workers) == (7, 2, 5, 2)
    gate.open()
    assert queue.join(WAIT)
    stats = queue.stats()
    assert stats.submitted == stats.succeeded == 7
    assert stats.submitted == stats.succeeded + stats.failed + stats.cancelled + stats.pending + stats.running
    assert 0 < stats.run_p50 <= stats.run_p95 <= stats.run_p99
    assert 0 <= stats.wait_p50 <= stats.wait_p95 <= stats.wait_p99
    assert stats.completed_per_second > 0
    assert all(h.done() for h in held + queued)
    with pytest.raises(Exception):
        stats.submitted = 0  # type: ignore[misc]  # frozen


# -- 9. bad input -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, name", [
    ({"workers": 0}, ValueError, "workers"),
    ({"workers": -3}, ValueError, "workers"),
    ({"workers": 2.5}, TypeError, "workers"),
    ({"maxsize": -1}, ValueError, "maxsize"),
    ({"retries": -1}, ValueError, "retries"),
    ({"submit_timeout": -1}, ValueError, "submit_timeout"),
    ({"submit_timeout": math.nan}, ValueError, "submit_timeout"),
    ({"dead_letter_limit": -1}, ValueError, "dead_letter_limit"),
    ({"backoff": 0.5}, TypeError, "backoff"),
    ({"retry_on": "ValueError"}, TypeError, "retry_on"),
    ({"name": ""}, TypeError, "name"),
])
def test_bad_constructor_arguments_name_the_parameter(kwargs: Dict[str, Any], error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        TaskQueue(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"base": -1}, "base"), ({"base": math.nan}, "base"), ({"max": -0.5}, "max"),
    ({"factor": 0.5}, "factor"), ({"factor": math.inf}, "factor"),
])
def test_bad_backoff_names_the_parameter(kwargs: Dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Backoff(**kwargs)


def test_bad_submissions_enqueue_nothing(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue()
    with pytest.raises(TypeError, match="fn must be callable"):
        queue.submit(42)
    with pytest.raises(TypeError, match="fn must be callable"):
        queue.submit_nowait("not a function")
    with pytest.raises(TypeError, match="fn"):
        Task(None)  # type: ignore[arg-type]
    assert queue.stats().submitted == 0
    for bad in (-1, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            queue.join(timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            queue.shutdown(timeout=bad)
    assert queue.submit(abs, -2).result(WAIT) == 2  # the failed shutdowns changed nothing


def test_submit_after_shutdown_raises_queue_closed(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue()
    queue.submit(abs, 1).result(WAIT)
    queue.shutdown()
    for submit in (queue.submit, queue.submit_nowait):
        with pytest.raises(QueueClosed, match="shut down") as caught:
            submit(abs, 1)
        assert isinstance(caught.value, RuntimeError)
    assert queue.stats().submitted == 1
    never_started = TaskQueue()
    never_started.shutdown()
    with pytest.raises(QueueClosed):
        never_started.submit(abs, 1)


def test_join_from_a_worker_is_refused(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    with pytest.raises(RuntimeError, match="wait for itself"):
        queue.submit(queue.join).result(WAIT)


# -- 5. backpressure ---------------------------------------------------------------


def test_a_full_queue_blocks_then_times_out(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=2, submit_timeout=0.05)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, 1)
    queue.submit(abs, 2)
    with pytest.raises(QueueFull, match="full"):
        queue.submit(abs, 3)
    with pytest.raises(QueueFull):
        queue.submit_nowait(abs, 4)
    assert queue.stats().submitted == 3
    gate.open()
    assert queue.join(WAIT)


def test_a_blocked_producer_proceeds_when_room_appears(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, 1)
    results: List[TaskHandle] = []
    producer = threading.Thread(target=lambda: results.append(queue.submit(abs, -7)))
    producer.start()
    gate.open()
    producer.join(WAIT)
    assert results and results[0].result(WAIT) == 7


def test_blocked_producer_gets_queue_closed_on_shutdown(make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, 1)
    errors: List[BaseException] = []

    def produce() -> None:
        try:
            queue.submit(abs, 2)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    stopper = threading.Thread(target=queue.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    producer.join(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], QueueClosed)
    gate.open()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert queue.stats().submitted == 2


@pytest.mark.timeout(120)
def test_memory_is_bounded_by_maxsize_for_a_long_producer(make_queue: Callable[..., TaskQueue]) -> None:
    # The queue itself never holds more than maxsize tasks, however many come.
    # Counted exactly (under the queue's lock, by overview()), not from
    # stats(), whose pending is derived from counters read one after another
    # and can be seen a few tasks high while workers finish tasks meanwhile.
    queue = make_queue(workers=4, maxsize=100)
    high_water = [0]

    def sample(i: int) -> None:
        if i % 997 == 0:
            queued = sum(queue.overview(limit=0).pending_by_priority.values())
            high_water[0] = max(high_water[0], queued)

    for i in range(200_000):
        queue.submit(sample, i)
    assert queue.join(WAIT * 3)
    assert 0 < high_water[0] <= 100
    assert queue.stats().succeeded == 200_000


def test_a_worker_submitting_into_its_own_full_queue_does_not_deadlock(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Submissions from the queue's own workers are admitted past the bound.
    queue = make_queue(workers=1, maxsize=1)

    def fan_out() -> List[TaskHandle]:
        return [queue.submit(abs, -i) for i in range(20)]

    parent = queue.submit(fan_out)
    children = parent.result(WAIT)
    assert [c.result(WAIT) for c in children] == list(range(20))


def test_map_over_a_task_function_keeps_its_options(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=2, retries=0)
    flaky = FailTimes(1)
    send = queue.task(name="flaky", retries=1, backoff=Backoff.none())(flaky)
    assert list(queue.map(send, range(20))) == list(range(20))
    assert queue.stats().retried == 20


@pytest.mark.parametrize("style", ["submit(fn, x)", "submit(Task(fn, (x,)))", "task_function.submit(x)"])
def test_a_kept_handle_holds_only_the_outcome_whatever_the_submit_style(
        make_queue: Callable[..., TaskQueue], style: str) -> None:
    # README "No leaks": a handle you keep holds only the outcome. A handle
    # of a Task (the README's main style, through @queue.task) used to keep
    # the Task, and with it the function's arguments, for as long as it lived.
    class Payload:
        pass

    queue = make_queue(workers=1)

    @queue.task
    def send(payload: Payload) -> str:
        return "sent"

    submit = {
        "submit(fn, x)": lambda p: queue.submit(lambda q: "sent", p),
        "submit(Task(fn, (x,)))": lambda p: queue.submit(Task(lambda q: "sent", (p,))),
        "task_function.submit(x)": lambda p: send.submit(p),
    }[style]
    payload = Payload()
    ref = weakref.ref(payload)
    handle = submit(payload)
    del payload
    assert handle.result(timeout=WAIT) == "sent"
    assert queue.join(WAIT)
    gc.collect()
    assert ref() is None
    assert handle.result() == "sent"  # the outcome is still there


# -- a drop-in for ThreadPoolExecutor: the constructor ----------------------------------


def test_max_workers_is_a_synonym_of_workers(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(max_workers=3)
    assert queue.stats().workers == 3
    assert make_queue(workers=3, max_workers=3).stats().workers == 3
    with pytest.raises(TypeError, match="not both"):
        TaskQueue(workers=2, max_workers=3)


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"max_workers": 0}, {"max_workers": -1}])
def test_no_workers_is_refused_in_words_both_spellings_know(kwargs: Dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"workers must be >= 1.*max_workers must be greater than 0"):
        TaskQueue(**kwargs)


def test_thread_name_prefix_names_threads_as_thread_pool_executor_does(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=3, thread_name_prefix="SpecialPool")
    names = {queue.submit(lambda: threading.current_thread().name).result(WAIT) for _ in range(30)}
    assert names and all(re.fullmatch(r"SpecialPool_[0-2]", name) for name in names)


def test_two_queues_with_default_names_have_threads_of_their_own_names(
        make_queue: Callable[..., TaskQueue]) -> None:
    first, second = make_queue(workers=1), make_queue(workers=1)
    assert first.name != second.name and first.name.startswith("taskqueue-")
    name_of = lambda q: q.submit(lambda: threading.current_thread().name).result(WAIT)  # noqa: E731
    assert name_of(first) == f"{first.name}-worker-0"
    assert name_of(second) == f"{second.name}-worker-0"


def test_an_initializer_runs_in_every_worker_thread_before_any_task(
        make_queue: Callable[..., TaskQueue]) -> None:
    seen = threading.local()
    ran: List[str] = []
    lock = threading.Lock()

    def init(tag: str) -> None:
        seen.tag = tag
        with lock:
            ran.append(threading.current_thread().name)

    queue = make_queue(workers=3, initializer=init, initargs=("initialized",))
    gate = Gate()
    held = [queue.submit(gate.wait) for _ in range(3)]
    gate.wait_for_arrivals(3)
    gate.open()
    assert [h.result(WAIT) for h in held] == ["through"] * 3
    assert all(queue.submit(lambda: seen.tag).result(WAIT) == "initialized" for _ in range(10))
    assert sorted(ran) == sorted(f"{queue.name}-worker-{i}" for i in range(3))


def test_a_failing_initializer_breaks_the_pool_as_thread_pool_executor_does(
        make_queue: Callable[..., TaskQueue], caplog: pytest.LogCaptureFixture) -> None:
    from concurrent.futures import BrokenExecutor
    from concurrent.futures.thread import BrokenThreadPool

    from taskqueue import QueueBroken

    def init_fail() -> None:
        raise ValueError("error in initializer")

    caplog.set_level(logging.CRITICAL, logger="taskqueue")
    queue = make_queue(workers=2, initializer=init_fail)
    try:
        handle = queue.submit(abs, -1)
    except BrokenExecutor:
        pass  # broken already
    else:
        with pytest.raises(BrokenExecutor):
            handle.result(WAIT)
        assert handle.state is TaskState.FAILED and handle.attempts == 0
    with pytest.raises(BrokenThreadPool) as caught:
        queue.submit(abs, -1)
    assert isinstance(caught.value, QueueBroken) and isinstance(caught.value, QueueClosed)
    assert "initializer" in str(caught.value)
    assert any("ValueError: error in initializer" in (r.exc_text or "") or
               (r.exc_info and "error in initializer" in str(r.exc_info[1]))
               for r in caplog.records if r.levelno == logging.CRITICAL)
    queue.shutdown()
    assert queue.stats().pending == 0


def test_set_running_or_notify_cancel_on_a_queued_handle_is_refused_and_the_task_still_runs(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    handle = queue.submit(abs, -5)
    with pytest.raises(RuntimeError):
        handle.set_running_or_notify_cancel()
    gate.open()
    assert handle.result(WAIT) == 5
    assert queue.join(WAIT)
